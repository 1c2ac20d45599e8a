"""Configs are refused before any work starts, naming the file, the line and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ftscale.config import load_config, parse_overrides
from ftscale.errors import ConfigError

from conftest import BIN, MAIN_CONFIG, ROOT


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def _main_with(tmp_path, old: str, new: str) -> Path:
    text = MAIN_CONFIG.read_text()
    assert old in text
    return _write(tmp_path, text.replace(old, new))


def test_the_main_config_loads():
    cfg = load_config(MAIN_CONFIG)
    assert cfg.sizes == [0, 25, 50, 100] and cfg.train.lora.r == 16


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = _main_with(tmp_path, "    dropout: 0.05\n", "    dropout: 0.05\n    rnak: 8\n")
    line = path.read_text().splitlines().index("    rnak: 8") + 1
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}:{line}: train.lora.rnak: unknown key" in str(e.value)


def test_wrong_type_names_the_key(tmp_path):
    path = _main_with(tmp_path, "  batch_size: 8\n", "  batch_size: eight\n")
    with pytest.raises(ConfigError, match=r"exp.yaml:\d+: train.batch_size: .*integer.*'eight'"):
        load_config(path)


def test_missing_data_file_is_named(tmp_path):
    path = _main_with(tmp_path, "data/formatting/train.jsonl", "data/formatting/nope.jsonl")
    with pytest.raises(ConfigError, match="data.train: file not found: data/formatting/nope.jsonl"):
        load_config(path)


def test_overrides_are_validated_and_applied():
    cfg = load_config(MAIN_CONFIG, parse_overrides(["--train.learning_rate", "1e-4", "--num_train_examples=50"]))
    assert cfg.train.learning_rate == 1e-4 and cfg.sizes == [50]
    with pytest.raises(ConfigError, match=r"--train.lora.rank \(command line\): train.lora.rank: unknown key"):
        load_config(MAIN_CONFIG, parse_overrides(["--train.lora.rank", "4"]))


def test_qlora_is_refused_at_once_without_bitsandbytes(tmp_path):
    """bitsandbytes runs QLoRA's nf4 base on CUDA and on the CPU (its training: tests/test_qlora.py);
    where it cannot be imported, train/sft.py refuses before anything is written."""
    code = ("import sys, runpy; sys.modules['bitsandbytes'] = None; "
            f"sys.argv = ['train/sft.py', '--config', {str(MAIN_CONFIG)!r}, '--num_train_examples', '8', "
            f"'--train.quantization', '4bit', '--train.epochs', '1', '--output_dir', {str(tmp_path / 'run')!r}]; "
            "runpy.run_path('train/sft.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "4bit (QLoRA) needs bitsandbytes: pip install -e '.[qlora]'" in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_cli_refuses_a_bad_config_before_any_work(tmp_path):
    path = _main_with(tmp_path, "output_dir: runs", f"output_dir: {tmp_path / 'out'}\nepochs: 3")
    proc = subprocess.run([str(BIN / "ftscale"), "run", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "epochs: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_the_scheduler_names_are_transformers_own():
    """The config checks `train.lr_scheduler` against a list spelled out (importing transformers
    for it would cost every command 4 s); the list must be exactly the installed transformers'."""
    from transformers.trainer_utils import SchedulerType

    from ftscale.config import LR_SCHEDULERS

    assert sorted(LR_SCHEDULERS) == sorted(s.value for s in SchedulerType)


def test_reading_a_config_imports_no_torch():
    """`ftscale report` and evaluations against an endpoint only read configs: they start in a second."""
    code = ("import sys; from ftscale.config import load_config; load_config(sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(MAIN_CONFIG)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]
