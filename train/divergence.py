"""A diverged training: the rule that calls a loss curve diverged, the record it leaves in the cell
(`diverged.json`), and the error that stops the run naming the knobs to turn.

A diverged training writes no completion record, so it is never reused and never evaluated; its
loss curve (loss.jsonl, loss.png) and this record stay for the reader. Kept free of torch and
transformers: the cell runner and the sweep read the record without loading them.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
from pathlib import Path

from ftscale.atomic import write_json
from ftscale.errors import StepsFailed
from ftscale.rundir import read_json

DIVERGED = "diverged.json"


class Diverged(StepsFailed):
    """A training stopped by the divergence watchdog: the cell is not done, and the command exits 1."""


class LossWatch:
    """NaN/Inf at once; or a loss above `spike_factor` x the early level (the median of the first
    `early_steps` logged losses) for `patience` logged steps in a row."""

    def __init__(self, spike_factor: float, patience: int, early_steps: int):
        self.spike_factor, self.patience, self.early_steps = spike_factor, patience, early_steps
        self.early: list[float] = []
        self.streak = 0

    @property
    def level(self) -> float | None:
        return statistics.median(self.early) if len(self.early) >= self.early_steps else None

    def see(self, step: int, loss: float) -> dict | None:
        """The divergence this logged loss reveals, else None."""
        if not math.isfinite(loss):
            return {"step": step, "loss": loss, "why": "not a number" if math.isnan(loss) else "infinite"}
        level = self.level
        if level is None:
            self.early.append(loss)
            return None
        self.streak = self.streak + 1 if level > 0 and loss > self.spike_factor * level else 0
        if self.streak < self.patience:
            return None
        return {"step": step, "loss": loss, "early_level": level,
                "why": f"above {self.spike_factor:g} x its early level {level:.3g} for {self.patience} logged step(s)"}


def knobs(learning_rate: float, warmup_ratio: float, precision: str) -> str:
    return (f"try a lower learning rate (--train.learning_rate, now {learning_rate:g}), a longer warm-up "
            f"(--train.warmup_ratio, now {warmup_ratio:g}) or full precision (--train.precision fp32, now {precision})")


def reason(rec: dict) -> str:
    """One line for a report's "Not shown" list, the sweep's status and the error."""
    return f"diverged at step {rec['step']}: loss {rec['loss']:g} ({rec['why']}); {rec['advice']}"


def write(run_dir: Path, tripped: dict, learning_rate: float, warmup_ratio: float, precision: str, facts: dict) -> dict:
    rec = facts | tripped | {"advice": knobs(learning_rate, warmup_ratio, precision)}
    write_json(Path(run_dir) / DIVERGED, rec)
    return rec


def read(run_dir: Path) -> dict | None:
    return read_json(Path(run_dir) / DIVERGED)


def clear(run_dir: Path) -> None:
    """A training starts (again): an earlier divergence no longer describes the cell."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(run_dir) / DIVERGED)
