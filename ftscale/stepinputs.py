"""What decides each step's results: the inputs whose hash a completion record names.

A training depends on the model, the training knobs, the data file and the subset drawn from it;
an evaluation on the task, its eval items, the prompt variant, the sampling and the system that
answered (backend, model, endpoint), and on the training it evaluates (the record's `upstream`).
Anything else (the cost section, an evaluation knob for a training) does not invalidate a step.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ftscale.train.chat_template_check import template_text

from . import models
from .chatdata import nested_subset, read_jsonl, sha256_file, sha256_records
from .config import ExperimentConfig
from .errors import FtscaleError


def model_identity(ref: str) -> dict:
    """A model reference and, for a local checkpoint, the hash of what names its weights."""
    out = {"ref": ref}
    try:
        path = Path(models.resolve(ref))
    except FtscaleError:  # an unprepared model: its reference alone names it
        return out
    for name in (models.MANIFEST, "config.json"):
        if (path / name).is_file():
            out[name] = sha256_file(path / name)
            break
    return out


def train_inputs(cfg: ExperimentConfig, n: int, pool: list[dict] | None = None) -> dict:
    """Exactly what a training of `n` examples is made from."""
    inputs = {"model": model_identity(cfg.model), "num_train_examples": n}
    if n == 0:  # the untrained base: nothing is learned from data
        return inputs
    pool = read_jsonl(cfg.data.train, "train") if pool is None else pool
    return inputs | {
        "train": _train_section(cfg), "data_seed": cfg.data.seed,
        "data_sha256": sha256_file(cfg.data.train), "subset_sha256": sha256_records(nested_subset(pool, n, cfg.data.seed)),
    } | _chat_template(cfg)


def _chat_template(cfg: ExperimentConfig) -> dict:
    """A template named for training changes what is trained: its text counts (a .jinja file may be edited)."""
    spec = cfg.train.chat_template
    return {} if spec is None else {"chat_template_sha256": hashlib.sha256(template_text(spec).encode()).hexdigest()}


# Knobs added after training records existed: they count only when set, so that records made
# before them (which trained exactly as their defaults do) stay valid.
LATER_LORA_KNOBS = ("use_dora", "use_rslora", "init_lora_weights", "modules_to_save")


def _train_section(cfg: ExperimentConfig) -> dict:
    train = cfg.train.model_dump(mode="json")
    defaults = type(cfg.train.lora)().model_dump(mode="json")
    for key in LATER_LORA_KNOBS:
        if train["lora"][key] == defaults[key]:
            del train["lora"][key]
    return train


def openai_train_inputs(cfg: ExperimentConfig, n: int, pool: list[dict] | None = None) -> dict:
    """An OpenAI fine-tuning job (or, n = 0, the prompted model): the model, its endpoint, the data."""
    inputs = {"openai_model": cfg.openai.model, "base_url": cfg.openai.base_url, "num_train_examples": n}
    if n == 0:
        return inputs
    pool = read_jsonl(cfg.data.train, "train") if pool is None else pool
    return inputs | {"epochs": cfg.train.epochs, "seed": cfg.train.seed, "data_seed": cfg.data.seed,
                     "subset_sha256": sha256_records(nested_subset(pool, n, cfg.data.seed))}


def task_identity(task) -> dict:
    """A task by its name, its YAML's hash where it has one, its metrics and its judges."""
    return {"name": task.name, "file_sha256": task.file_sha256,
            "metrics": [m.name for m in task.metrics],
            "judges": [[prefix, params.model_dump(mode="json")] for _, params, prefix in task.judges]}
