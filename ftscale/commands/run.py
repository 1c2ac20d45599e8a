"""`ftscale run`: train every size of an experiment, evaluate, write the summary."""

from __future__ import annotations

from pathlib import Path

from .config_args import load, with_config


def add_parser(sub) -> None:
    r = with_config(sub, "run", run, "train every size of an experiment, evaluate, write the summary", positional=True)
    r.add_argument("--overlay", type=Path, action="append", default=[], metavar="FILE",
                   help="a YAML of config keys merged over the experiment before any --section.key override "
                        "(a tune's best.yaml); repeatable, the last wins")


def run(args) -> None:
    # imported here: the experiment imports scipy (through the config), half a second at every start-up
    from ftscale.run_experiment import run_experiment

    run_experiment(load(args, args.overlay))
