"""Experiment tracking (train.report_to): a real `ftscale run` logs to TensorBoard and Trackio,
offline, and both hold the loss curve, the cell's config and data hashes, and the eval metrics;
turning tracking off reuses every step; a tracker that is not installed is refused before work."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import BIN, MAIN_CONFIG, ROOT

SMALL = ["--num_train_examples", "4", "--train.batch_size", "2", "--train.epochs", "1", "--eval.limit", "1",
         "--eval.max_new_tokens", "8"]


def _run(tmp_path, *extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TRACKIO_DIR", "TENSORBOARD_LOGGING_DIR")}
    return subprocess.run([str(BIN / "ftscale"), "run", str(MAIN_CONFIG), *SMALL, "--output_dir", str(tmp_path),
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def test_tensorboard_and_trackio_hold_the_loss_curve_config_and_eval_metrics(embedded_model, tmp_path):
    proc = _run(tmp_path, "--train.report_to", "[tensorboard, trackio]")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    exp = tmp_path / "formatting-smollm2-cpu"
    cell = exp / "n0004-seed42"
    losses = [json.loads(line)["loss"] for line in open(cell / "loss.jsonl")]
    assert len(losses) == 2
    scores = json.loads((cell / "eval-default" / "scores.json").read_text())["metrics"]

    tb = EventAccumulator(str(cell / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    tb.Reload()
    assert [round(e.value, 4) for e in tb.Scalars("train/loss")] == [round(x, 4) for x in losses]
    for metric, value in scores.items():
        assert tb.Scalars(f"eval/hf/default/{metric}")[-1].value == pytest.approx(value)
    assert {"ftscale/config/text_summary", "ftscale/inputs/text_summary"} <= set(tb.Tags()["tensors"])

    db = sqlite3.connect(exp / "trackio" / "formatting-smollm2-cpu.db")  # the local store, inside the experiment
    logged = [json.loads(m) for (m,) in db.execute(
        "SELECT metrics FROM metrics WHERE run_name = 'formatting-smollm2-cpu/n0004-seed42' ORDER BY id")]
    assert [round(m["train/loss"], 4) for m in logged if "train/loss" in m] == [round(x, 4) for x in losses]
    evals = next(m for m in logged if "eval/hf/default/format_ok" in m)
    assert evals == {f"eval/hf/default/{k}": pytest.approx(v) for k, v in scores.items()}
    (config,) = db.execute("SELECT config FROM configs WHERE run_name = 'formatting-smollm2-cpu/n0004-seed42'").fetchone()
    ftscale = json.loads(config)["ftscale"]
    assert ftscale["config"]["train"]["report_to"] == ["tensorboard", "trackio"]
    assert ftscale["facts"]["num_train_examples"] == 4 and len(ftscale["facts"]["subset_sha256"]) == 64

    # tracking is no input of any step: without it, the training and the evaluation are reused
    record = (cell / "completion.json").read_text()
    again = _run(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training already done" in again.stdout and (cell / "completion.json").read_text() == record
    assert not (cell / "tracking.json").exists()


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_tracker_that_is_not_installed_is_refused_before_any_work(tracker, tmp_path):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    proc = _run(tmp_path, "--train.report_to", f"[{tracker}]")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"train.report_to: {tracker} is not installed: pip install {tracker}" in proc.stderr
    assert not list(tmp_path.rglob("config.yaml"))  # no cell was started
