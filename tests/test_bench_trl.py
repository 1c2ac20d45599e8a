"""ftscale against `trl sft` (train/bench_trl.py): both sides really train, on the same batches, and the
comparison refuses sides that trained different ones."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ftscale.train.bench_trl import ratios

from conftest import BIN, MAIN_CONFIG, ROOT


def test_both_sides_train_the_same_batches(tmp_path):
    # 8 examples, batch 8, 2 epochs: two steps a side, one step-to-step duration to pair
    cmd = [str(BIN / "python"), "-m", "ftscale.train.bench_trl", "--config", str(MAIN_CONFIG),
           "--num-train-examples", "8", "--repeats", "1", "--threads", "1", "--output-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "n8-none" / "bench-trl.json").read_text())
    ftscale, trl = summary["runs"]
    assert (ftscale["side"], trl["side"]) == ("ftscale", "trl")
    assert [Path(trl["command"].split()[0]).name, trl["command"].split()[1]] == ["trl", "sft"]
    # the same examples: TRL's own token counter agrees to a few tokens; the same loss mask and model: the
    # first batch's loss (before any update) is the same
    assert abs(ftscale["train_tokens"] - trl["train_tokens"]) <= 8 and ftscale["train_tokens"] > 500
    assert ftscale["step_loss"][0] == pytest.approx(trl["step_loss"][0], rel=1e-3)
    assert ftscale["steps"] == 2 and len(ftscale["step_num_tokens"]) == len(trl["step_num_tokens"]) == 2
    assert len(ftscale["step_s"]) == len(trl["step_s"]) == 1 and summary["paired_steps"] == 1
    assert summary["step_ratio_median"] == trl["step_s"][0] / ftscale["step_s"][0]
    assert summary["ratio_median_tokens_per_s"] == ftscale["tokens_per_s"] / trl["tokens_per_s"]
    assert (tmp_path / "n8-none" / "ftscale-0" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "n8-none" / "trl-0" / "adapter_model.safetensors").is_file()
    assert "ratio of the medians" in proc.stdout


def _run(side: str, tokens: list[str], steps: list[float], loss: float = 1.402) -> dict:
    return {"side": side, "repeat": 0, "tokens_per_s": 100.0, "step_num_tokens": tokens, "step_s": steps,
            "step_loss": [loss, 1.595]}


def test_sides_that_trained_different_batches_are_not_compared():
    same = ratios([_run("ftscale", ["839", "1611"], [4.0]), _run("trl", ["839", "1612"], [3.0])])
    assert same["step_ratio_median"] == 0.75
    with pytest.raises(ValueError, match="different batches"):
        ratios([_run("ftscale", ["839", "1611"], [4.0]), _run("trl", ["901", "1611"], [3.0])])
    with pytest.raises(ValueError, match="different batches"):
        ratios([_run("ftscale", ["839", "1611"], [4.0]), _run("trl", ["839"], [])])
    with pytest.raises(ValueError, match="different losses on the first batch"):  # e.g. loss on every token
        ratios([_run("ftscale", ["839", "1611"], [4.0]), _run("trl", ["839", "1611"], [3.0], loss=2.113)])
