"""A sweep: a grid of cells over systems (local LoRA/QLoRA models, OpenAI models), training sizes,
seeds, epochs, sampling temperatures and prompt variants, expanded from one YAML file.

    configs/sweeps/<name>.yaml

Every cell is an experiment config (the sweep's `base` with the cell's values set), so a cell
trains and evaluates exactly as `ftscale run` would; its key is the hash of that resolved config.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from . import paths
from .config import ExperimentConfig, Strict, load_config, load_validated
from .errors import ConfigError


class System(Strict):
    """A curve of the report: a model trained (or not) one way."""

    name: str = Field(description="its label in the report; its folder in the sweep's is named after it")
    backend: Literal["local", "openai"] = "local"
    model: str = Field(description="local: a model reference; openai: the model to fine-tune or prompt")
    quantization: Literal["none", "4bit"] = Field("none", description="local only: 4bit = QLoRA")
    accelerate_config: Path | None = Field(None, description="local only: train each cell under "
                                                             "`accelerate launch --config_file` (configs/accelerate/)")

    _name_is_a_folder = field_validator("name")(lambda cls, name: _slug(name) and name)


class Reference(Strict):
    """A prompted model the fine-tunes must beat (the study's "just prompt a bigger model"), or
    (backend: captured) an OpenAI fine-tune's answers recorded by `ftscale migrate capture`."""

    name: str
    backend: Literal["local", "openai", "captured"] = "openai"
    model: str
    prompt_variant: str = "few_shot"
    captured: Path | None = Field(None, description="backend captured: the capture's captured.jsonl")

    _name_is_a_folder = field_validator("name")(lambda cls, name: _slug(name) and name)

    @model_validator(mode="after")
    def _captured_file(self):
        if (self.backend == "captured") != (self.captured is not None):
            raise ValueError("captured: give the captured.jsonl file exactly when backend is captured")
        return self


class Slurm(Strict):
    """What each job of `ftscale sweep --executor slurm` asks the scheduler for (one job per cell);
    the command's flags override it."""

    partition: str | None = Field(None, description="the partition (default: the cluster's)")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per job: 0 (none: a CPU node grants no GPU), 1 for a "
                                                    "GPU sweep")
    cpus_per_task: int | None = Field(None, ge=1, description="CPU cores per job (default: the cluster's)")
    mem_gb: float | None = Field(None, gt=0, description="memory per job (default: the cluster's)")
    timeout_min: int = Field(240, ge=1, description="a job's time limit; a cell cut off resumes in the next job")


class SweepConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    base: Path = Field(description="the experiment config every cell starts from")
    overlays: list[Path] = Field(default_factory=list, description="YAML files of experiment keys merged over the "
                                 "base in turn, before `overrides` (a tune's best.yaml)")
    overrides: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="dotted experiment keys set for every cell (eval.limit: 100)")
    systems: list[System] = Field(min_length=1)
    references: list[Reference] = Field(default_factory=list)
    num_train_examples: list[int] = Field(default_factory=lambda: [0, 25, 50, 100, 250, 500, 1000], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [42, 43, 44], min_length=1)
    epochs: list[float] = Field(default_factory=lambda: [2.0], min_length=1)
    temperatures: list[float] | None = Field(
        None, min_length=1, description="default: the base experiment's eval.temperatures (or its eval.temperature)")
    prompt_variants: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    baseline_variants: list[str] = Field(default_factory=list, description="evaluated on the untrained base only")
    eval_backend: Literal["hf", "vllm"] | list[Literal["hf", "vllm"]] = Field(
        "hf", description="vllm: one server per base model with all its adapters; [hf, vllm]: every local cell "
                          "evaluated both ways, each backend a curve of its own (train/serve parity)")
    metrics: list[str] = Field(default_factory=list, description="metrics the report leads with (default: the task's)")
    output_dir: Path = Path("runs/sweeps")
    slurm: Slurm = Field(default_factory=Slurm, description="each job's resources with --executor slurm")

    @model_validator(mode="after")
    def _check(self):
        if any(n < 0 for n in self.num_train_examples):
            raise ValueError("num_train_examples: sizes must be >= 0")
        if len({s.name for s in self.systems}) != len(self.systems):
            raise ValueError("systems: two systems have the same name")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: listed twice")
        if not self.backends or len(set(self.backends)) != len(self.backends):
            raise ValueError("eval_backend: give hf, vllm, or a list of them without repeats")
        return self

    @property
    def backends(self) -> tuple[str, ...]:
        """The backends every local cell is evaluated with, in order."""
        return (self.eval_backend,) if isinstance(self.eval_backend, str) else tuple(self.eval_backend)

    @property
    def sweep_dir(self) -> Path:
        return self.output_dir / self.name


@dataclass(frozen=True)
class Cell:
    """One unit of work: train (unless n = 0) and evaluate one system at one size, seed and epochs."""

    key: str
    kind: Literal["train", "base", "reference"]
    system: str
    backend: str
    n: int
    seed: int
    epochs: float
    cfg: ExperimentConfig
    variants: tuple[str, ...]
    temperatures: tuple[float, ...]
    run_dir: Path
    eval_backends: tuple[str, ...] = ("hf",)  # a local cell's; each one a curve of its own when there are several


def _slug(text: str) -> str:
    """A folder name made of `text`, inside the sweep's folder: never empty, `.` or `..` (ValueError)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()
    if not slug.strip("."):
        raise ValueError(f"{text!r} names no folder inside the sweep's folder (it would be {slug or 'empty'!r}): "
                         "use letters or digits in the name")
    return slug


def load_sweep(path: str | Path) -> tuple[SweepConfig, ExperimentConfig]:
    """The sweep and its base experiment, both validated; unknown models, tasks, variants or metrics
    fail here, before any cell runs."""
    sweep = load_validated(paths.find_config(path, "sweeps"), SweepConfig)
    base = load_config(sweep.base, {k: ("null" if v is None else str(v)) for k, v in sweep.overrides.items()},
                       sweep.overlays)
    from .experiment import task_for
    from .models import registry

    task = task_for(base, sorted(set(sweep.prompt_variants + sweep.baseline_variants
                                     + [r.prompt_variant for r in sweep.references])))
    names = {m.name for m in task.metrics}
    unknown = [m for m in sweep.metrics if m not in names]
    if unknown:
        raise ConfigError(f"{path}: metrics: {unknown} are not metrics of task {task.name!r} ({', '.join(sorted(names))})")
    for s in sweep.systems:
        if s.backend == "local" and s.model not in registry() and not Path(s.model).is_dir() and s.model.count("/") != 1:
            raise ConfigError(f"{path}: systems: {s.name}: model {s.model!r} is not a name in configs/models/, "
                              "a local directory or a hub id")
        if s.backend == "openai" and s.quantization != "none":
            raise ConfigError(f"{path}: systems: {s.name}: quantization is for local models")
    _servable_by_vllm(path, sweep, base)
    return sweep, base


def _servable_by_vllm(path, sweep: SweepConfig, base: ExperimentConfig) -> None:
    """A sweep that evaluates its adapters through vLLM: an adapter vLLM would refuse is refused now,
    before any cell trains."""
    from .vllm_compat import vllm_refusal

    backends = sweep.eval_backend if isinstance(sweep.eval_backend, list) else [sweep.eval_backend]
    trains = any(s.backend == "local" for s in sweep.systems) and any(n > 0 for n in sweep.num_train_examples)
    why = vllm_refusal(base.train.lora) if "vllm" in backends and trains else None
    if why:
        raise ConfigError(f"{path}: eval_backend vllm serves each adapter as a LoRA module: train.{why}")


def _cell_cfg(base: ExperimentConfig, model: str, n: int, seed: int, epochs: float, quantization: str,
              openai_model: str | None) -> ExperimentConfig:
    train = base.train.model_copy(update={"seed": seed, "epochs": epochs, "quantization": quantization})
    update = {"model": model, "train": train, "num_train_examples": n}
    if openai_model:
        update["openai"] = base.openai.model_copy(update={"model": openai_model})
    return base.model_copy(update=update)


def _key(cfg: ExperimentConfig, kind: str, system: str, variants, temperatures, backends=("hf",)) -> str:
    # several backends are part of what a cell owes (one added makes new cells); one backend is left out, so
    # that the cells of a sweep made before the list keep their keys
    text = f"{kind}\n{system}\n{list(variants)}\n{list(temperatures)}\n{cfg.cell_yaml(cfg.sizes[0])}" + (
        f"\n{list(backends)}" if len(backends) > 1 else "")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expand(sweep: SweepConfig, base: ExperimentConfig) -> list[Cell]:
    """Every cell of the grid, in the order the built-in loop runs them (system by system, small first)."""
    cells, temps = [], tuple(sweep.temperatures or base.eval.all_temperatures)
    for s in sweep.systems:
        openai_model = s.model if s.backend == "openai" else None
        local_model = s.model if s.backend == "local" else base.model
        for epochs in sweep.epochs:
            for n in sorted(set(sweep.num_train_examples)):
                # the untrained base does not depend on the training seed or epochs: evaluated once
                if n == 0 and epochs != sweep.epochs[0]:
                    continue
                for seed in (sweep.seeds[:1] if n == 0 else sweep.seeds):
                    cfg = _cell_cfg(base, local_model, n, seed, epochs, s.quantization, openai_model)
                    variants = tuple(sweep.prompt_variants + (sweep.baseline_variants if n == 0 else []))
                    kind = "base" if n == 0 else "train"
                    backends = sweep.backends if s.backend == "local" else ("hf",)
                    key = _key(cfg, kind, s.name, variants, temps, backends)
                    run_dir = sweep.sweep_dir / _slug(s.name) / f"e{epochs:g}" / f"n{n:04d}-seed{seed}-{key[:6]}"
                    cells.append(Cell(key, kind, s.name, s.backend, n, seed, epochs, cfg, variants, temps, run_dir,
                                      backends))
    for r in sweep.references:
        cfg = _cell_cfg(base, r.model if r.backend == "local" else base.model, 0, sweep.seeds[0], sweep.epochs[0], "none",
                        r.model if r.backend == "openai" else None)
        key = _key(cfg, "reference", r.name, (r.prompt_variant,), temps)
        cells.append(Cell(key, "reference", r.name, r.backend, 0, sweep.seeds[0], sweep.epochs[0], cfg,
                          (r.prompt_variant,), temps, sweep.sweep_dir / "references" / f"{_slug(r.name)}-{key[:6]}"))
    return cells
