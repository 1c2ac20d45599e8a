"""The divergence watchdog: a transformers TrainerCallback that watches each logged training loss
and stops the run when it diverges (the rule is train/divergence.py's LossWatch)."""

from __future__ import annotations

from transformers import TrainerCallback

from ftscale.config import WatchdogSpec

from .divergence import LossWatch


class DivergenceWatchdog(TrainerCallback):
    """Every process sees the same logged loss (averaged over them), so all of them stop together."""

    def __init__(self, spec: WatchdogSpec):
        self.watch = LossWatch(spec.spike_factor, spec.patience, spec.early_steps)
        self.tripped: dict | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.tripped is None and logs and "loss" in logs:
            self.tripped = self.watch.see(state.global_step, float(logs["loss"]))
        if self.tripped is not None:
            control.should_training_stop = True
        return control
