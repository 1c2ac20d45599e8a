"""The divergence watchdog: a real training at an absurd learning rate is stopped early, its cell is
marked diverged (never done), its loss curve is kept, and the message names the knobs to turn."""

from __future__ import annotations

import json
import math
import subprocess

from ftscale import completion
from ftscale.cellrunner import audit_cell
from ftscale.results_store import cell_status, mark_failed, mark_running
from ftscale.train.divergence import Diverged, LossWatch

from conftest import BIN, MAIN_CONFIG, ROOT


def test_an_absurd_learning_rate_stops_the_run_and_marks_the_cell_diverged(embedded_model, tmp_path):
    # 16 examples in batches of 2: 8 steps planned; at lr 1e3 the second logged loss is many times the first
    proc = subprocess.run([str(BIN / "ftscale"), "run", str(MAIN_CONFIG), "--num_train_examples", "16",
                           "--train.batch_size", "2", "--train.epochs", "1", "--train.learning_rate", "1e3",
                           "--train.watchdog.early_steps", "1", "--train.watchdog.patience", "1",
                           "--output_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    cell = tmp_path / "formatting-smollm2-cpu" / "n0016-seed42"
    assert f"{cell}: training diverged at step" in proc.stderr
    assert "try a lower learning rate (--train.learning_rate, now 1000)" in proc.stderr
    assert "--train.warmup_ratio" in proc.stderr and "--train.precision fp32" in proc.stderr

    record = json.loads((cell / "diverged.json").read_text())
    curve = [json.loads(line) for line in open(cell / "loss.jsonl")]
    assert record["step"] < 8 and curve[-1]["step"] == record["step"]  # stopped early, the curve kept up to there
    assert not math.isfinite(record["loss"]) or record["loss"] > 4 * curve[0]["loss"]
    assert (cell / "loss.png").is_file()
    assert completion.read(cell) is None and not (cell / "adapter").exists()  # never done: no record, no adapter
    assert not (cell / "checkpoints").exists()  # nothing a rerun could resume from
    assert not list(cell.glob("eval-*"))  # a diverged training is not evaluated

    # the report's "Not shown" list names the cell and why
    shown, hidden = audit_cell(cell)
    assert shown == [] and hidden[0][0] == cell and hidden[0][1].startswith(f"diverged at step {record['step']}: loss")

    # the sweep records it as diverged, with the reason
    mark_running(cell, "k")
    mark_failed(cell, str(Diverged(f"{cell}: training {hidden[0][1]}")), status="diverged")
    status = cell_status(cell, "k")
    assert status["status"] == "diverged" and "diverged at step" in status["error"]


def test_a_nan_or_inf_loss_trips_the_watch_at_once_and_a_spike_only_after_its_patience():
    assert LossWatch(4, 3, 5).see(1, float("nan"))["why"] == "not a number"
    assert LossWatch(4, 3, 5).see(1, float("inf"))["why"] == "infinite"
    watch = LossWatch(4, 2, 2)
    assert [watch.see(s, x) for s, x in enumerate([2.0, 2.0, 9.0, 1.0, 9.0], 1)] == [None] * 5  # streaks of one
    tripped = watch.see(6, 9.0)
    assert tripped["step"] == 6 and tripped["early_level"] == 2.0
