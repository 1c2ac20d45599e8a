"""Experiment tracking (`train.report_to`): the training logs its loss curve to the trackers through
TRL's own integrations, and the cell's config, data hashes and evaluation metrics join the same run.

    tensorboard   event files in <cell>/tensorboard/ (tensorboard --logdir <experiment dir>)
    trackio       the local store <experiment dir>/trackio/ (TRACKIO_DIR overrides it): trackio show
    wandb         W&B's own environment (WANDB_MODE=offline, WANDB_PROJECT, ...)
    mlflow        MLflow's own environment (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, ...)

The run is named after the cell (`<experiment>/<cell folder>`). `<cell>/tracking.json` says which
trackers the cell's run reports to and what to log there; no completion record names it, so
tracking never changes whether a step is reused. Kept free of torch: the cell runner imports it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path

import yaml

from ftscale import completion
from ftscale.atomic import write_json
from ftscale.config import ExperimentConfig
from ftscale.errors import ConfigError
from ftscale.rundir import read_json

RECORD = "tracking.json"
INSTALL = {"tensorboard": "pip install tensorboard", "trackio": "pip install trackio",
           "wandb": "pip install wandb", "mlflow": "pip install mlflow"}


def check_installed(trackers: list[str]) -> None:
    """A tracker that is named but not installed is refused before anything loads."""
    for name in trackers:
        if importlib.util.find_spec(name) is None:
            extra = " (tensorboard and trackio: pip install -e '.[track]')" if name in ("tensorboard", "trackio") else ""
            raise ConfigError(f"train.report_to: {name} is not installed: {INSTALL[name]}{extra}")


def run_name(cfg: ExperimentConfig, cell: Path) -> str:
    return f"{cfg.name}/{Path(cell).name}"


def input_facts(inputs: dict) -> dict:
    """What a training was made from, as the tracker shows it: the hashes of its inputs and data."""
    return {"training_inputs_sha256": completion.digest(inputs)} | {
        k: inputs[k] for k in ("model", "num_train_examples", "data_sha256", "subset_sha256") if k in inputs}


def prepare(cfg: ExperimentConfig, cell: Path, facts: dict) -> None:
    """Before a training (or the reuse of one): point the local trackers into the experiment's
    folders and write the cell's tracking record; without trackers, remove a stale one."""
    cell, trackers = Path(cell), cfg.train.trackers
    check_installed(trackers)
    if not trackers:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cell / RECORD)
        return
    if "tensorboard" in trackers:  # read by transformers' TensorBoardCallback when the trainer is built
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(cell / "tensorboard")
    if "trackio" in trackers:  # read once, when trackio is first imported: one store per process
        os.environ.setdefault("TRACKIO_DIR", str(cfg.experiment_dir / "trackio"))
    old = read_json(cell / RECORD) or {}
    name = run_name(cfg, cell)
    config = cfg.model_dump(mode="json") | {"num_train_examples": facts.get("num_train_examples", cfg.sizes[0])}
    config["train"] |= {"report_to": cfg.train.report_to, "watchdog": cfg.train.watchdog.model_dump(mode="json")}
    ids = {k: v for k, v in old.items() if k.endswith("_id")} if old.get("run_name") == name else {}
    cell.mkdir(parents=True, exist_ok=True)
    write_json(cell / RECORD, {"report_to": trackers, "project": cfg.name, "run_name": name, "config": config,
                               "facts": facts, "step": old.get("step", 0)} | ids)


def sft_options(cfg: ExperimentConfig, cell: Path) -> dict:
    """TRL SFTConfig's tracking arguments for this cell (none without trackers)."""
    if not cfg.train.trackers:
        return {}
    return {"report_to": cfg.train.trackers, "run_name": run_name(cfg, cell), "project": cfg.name}


def log_run(cell: Path, metrics: dict[str, float], step: int | None = None) -> None:
    """Log the cell's config and data hashes (once per tracker) and `metrics` to its run, reopened by
    name or id; nothing without a tracking record. `step`: the training's last step, kept for later."""
    cell = Path(cell)
    rec = read_json(cell / RECORD)
    if rec is None:
        return
    if step is not None:
        rec["step"] = step
    logged = set(rec.get("logged_facts", []))
    for tracker in rec["report_to"]:
        facts = None if tracker in logged else {"config": rec["config"], "facts": rec["facts"]}
        ident = LOGGERS[tracker](cell, rec, facts, metrics)
        if ident is not None:
            rec[f"{tracker}_id"] = ident
        logged.add(tracker)
    write_json(cell / RECORD, rec | {"logged_facts": sorted(logged)})


def eval_metrics(label: str, what: str, metrics: dict) -> dict[str, float]:
    """An evaluation's metrics under the names the trackers show: eval/<backend>/<variant or probes>/<metric>."""
    return {f"eval/{label}/{what}/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _tensorboard(cell: Path, rec: dict, facts: dict | None, metrics: dict) -> None:
    # torch is slow to import and the cell runner imports this module: only when tensorboard is asked for
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(cell / "tensorboard"))
    if facts is not None:
        writer.add_text("ftscale/config", "```yaml\n" + yaml.safe_dump(facts["config"], sort_keys=False) + "```", 0)
        writer.add_text("ftscale/inputs", "```json\n" + json.dumps(facts["facts"], indent=1) + "\n```", 0)
    for key, value in metrics.items():
        writer.add_scalar(key, value, rec["step"])
    writer.close()


def _trackio(cell: Path, rec: dict, facts: dict | None, metrics: dict) -> None:
    import trackio  # loads gradio's client: only when trackio is asked for

    # every reopening writes the run's config anew with its first log: the facts go with each one
    trackio.init(project=rec["project"], name=rec["run_name"], resume="allow",
                 config={"ftscale": {"config": rec["config"], "facts": rec["facts"]}})
    try:
        trackio.log(metrics, step=rec["step"])
    finally:
        trackio.finish()


def _wandb(cell: Path, rec: dict, facts: dict | None, metrics: dict) -> str:
    import wandb  # optional, and slow to import: only when wandb is asked for

    # the training's run may still be open in this process (transformers leaves it so); else resumed by id
    run = wandb.run or wandb.init(project=os.environ.get("WANDB_PROJECT", "huggingface"), name=rec["run_name"],
                                  id=rec.get("wandb_id"), resume="allow")
    if facts is not None:
        run.config.update({"ftscale": facts}, allow_val_change=True)
    if metrics:
        run.summary.update(metrics)
    ident = run.id
    run.finish()
    return ident


def _mlflow(cell: Path, rec: dict, facts: dict | None, metrics: dict) -> str:
    import mlflow  # optional, and slow to import: only when mlflow is asked for

    run_id = rec.get("mlflow_id")
    last = mlflow.last_active_run()  # the training's run, when it ran in this process
    if run_id is None and last is not None and last.info.run_name == rec["run_name"]:
        run_id = last.info.run_id
    with (mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=rec["run_name"])) as run:
        if facts is not None:
            mlflow.log_dict(facts, "ftscale.json")
        if metrics:
            mlflow.log_metrics(metrics, step=rec["step"])
        return run.info.run_id


LOGGERS = {"tensorboard": _tensorboard, "trackio": _trackio, "wandb": _wandb, "mlflow": _mlflow}
