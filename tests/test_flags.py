"""Every flag in both spellings (ftscale/flags.py), as transformers' and TRL's parsers take them."""

from __future__ import annotations

import argparse
import subprocess

import pytest

from conftest import BIN, MAIN_CONFIG
from ftscale.cli import build_parser
from ftscale.config import load_config, parse_overrides
from ftscale.errors import ConfigError
from ftscale.flags import Parser, spellings


def _parsers(p: argparse.ArgumentParser, path=("ftscale",)):
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_long_flag_of_every_command_takes_both_spellings():
    seen = 0
    for path, p in _parsers(build_parser()):
        assert isinstance(p, Parser), path
        for action in p._actions:
            for flag in action.option_strings:
                for alt in spellings(flag):
                    assert p._option_string_actions.get(alt) is action, (path, flag, alt)
                    seen += "-" in flag[2:] or "_" in flag[2:]
    assert seen > 50  # the walk reached the subcommands' flags, not only --help


@pytest.mark.parametrize("flag", ["--output-dir", "--output_dir", "--out"])
def test_output_folders_are_named_one_way_and_the_old_names_still_work(flag, tmp_path):
    p = build_parser()
    for argv in (["merge", "runs/x", flag, str(tmp_path)], ["migrate", "capture", "ft:x", flag, str(tmp_path)]):
        assert p.parse_args(argv).output_dir == tmp_path
    args = p.parse_args(["eval", "--config", "c.yaml", flag.replace("--out", "--output-dir") if flag == "--out" else flag,
                         str(tmp_path)])
    assert args.output_dir == str(tmp_path)


def test_help_lists_the_dashed_spelling_once():
    text = build_parser()._subparsers._group_actions[0].choices["merge"].format_help()
    assert "--output-dir" in text and "--output_dir" not in text and "--out " not in text


def test_abbreviations_are_refused_rather_than_guessed():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["merge", "runs/x", "--output", "y"])


def test_config_overrides_take_dashes_for_underscores():
    cfg = load_config(MAIN_CONFIG, parse_overrides(["--output-dir", "/tmp/x", "--train.learning-rate", "1e-4",
                                                    "--num-train-examples", "[8]"]))
    assert (str(cfg.output_dir), cfg.train.learning_rate, cfg.num_train_examples) == ("/tmp/x", 1e-4, [8])
    with pytest.raises(ConfigError, match=r"--train.learning_rat \(command line\): train.learning_rat: unknown key"):
        load_config(MAIN_CONFIG, parse_overrides(["--train.learning-rat", "1e-4"]))


def test_the_command_line_takes_output_dir_after_run():
    """The report of the issue: `ftscale run ... --output-dir X` was refused (`output-dir: unknown key`)."""
    proc = subprocess.run([str(BIN / "ftscale"), "run", str(MAIN_CONFIG), "--output-dir", "/nonexistent/x",
                           "--num-train-examples", "[0]", "--jobs", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--jobs 0" in proc.stderr and "unknown key" not in proc.stderr, proc.stderr
