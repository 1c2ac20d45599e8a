"""A hyperparameter search's config (configs/tune/<name>.yaml): the experiment it tunes at one training
size, the validation split its objective is measured on (carved from the training pool, never the eval
set), the objective, the sampler and the search space. Unknown keys are refused as everywhere else.

    ftscale tune configs/tune/formatting-cpu.yaml
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from . import paths
from .strict import Strict, validated
from .yamlfile import line_of, load_yaml


class _Range(Strict):
    log: bool = Field(False, description="sample on a log scale (low > 0)")

    @model_validator(mode="after")
    def _ordered(self):
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        return self


class FloatRange(_Range):
    low: float
    high: float


class IntRange(_Range):
    low: int
    high: int


# a parameter is a list of choices or a {low, high, log} range
FloatParam = Annotated[list[float], Field(min_length=1)] | FloatRange
IntParam = Annotated[list[int], Field(min_length=1)] | IntRange


class LoraSpace(Strict):
    r: IntParam | None = None
    alpha: IntParam | None = None
    dropout: FloatParam | None = None


class SearchSpace(Strict):
    """The experiment's train keys searched over; a key left out keeps the experiment's value."""

    learning_rate: FloatParam | None = None
    epochs: FloatParam | None = None
    batch_size: IntParam | None = None
    lora: LoraSpace = LoraSpace()

    @model_validator(mode="after")
    def _something(self):
        if not self.params():
            raise ValueError("name at least one key to search over (learning_rate, epochs, batch_size, lora.r, "
                             "lora.alpha, lora.dropout)")
        return self

    def params(self) -> dict[str, list | FloatRange | IntRange]:
        """Each searched key as the experiment's dotted key (train.lora.r) -> its choices or range."""
        out = {f"train.{k}": getattr(self, k) for k in ("learning_rate", "epochs", "batch_size")}
        out |= {f"train.lora.{k}": getattr(self.lora, k) for k in ("r", "alpha", "dropout")}
        return {k: v for k, v in out.items() if v is not None}


class Validation(Strict):
    """What the objective is measured on: a share (or a number) of the training pool held out, seeded,
    with the training subset drawn from the rest; or a file of your own disjoint from the eval set."""

    fraction: float | None = Field(None, gt=0.0, lt=1.0, description="of the training pool")
    size: int | None = Field(None, ge=1, description="examples of the training pool")
    file: Path | None = Field(None, description="a validation set of your own (eval JSONL: messages without the "
                                                "answer, id, reference); never the experiment's eval set")
    seed: int = Field(0, description="the shuffle the held-out examples are drawn by")

    @model_validator(mode="after")
    def _one_source(self):
        if sum(x is not None for x in (self.fraction, self.size, self.file)) != 1:
            raise ValueError("give exactly one of fraction, size or file")
        return self


class Objective(Strict):
    metric: str | None = Field(None, description="a metric of the task (default: its first headline metric)")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="default: maximize where higher is better for the metric")


class TuneConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    base: str = Field(description="the experiment tuned: a name in configs/experiments/ or a path")
    overrides: dict[str, str | int | float | bool | list | None] = Field(
        default_factory=dict, description="dotted experiment keys set for every trial (eval.max_new_tokens: 64)")
    num_train_examples: int = Field(ge=1, description="the one training size tuned for")
    validation: Validation
    objective: Objective = Objective()
    n_trials: int = Field(ge=1, description="trials in all; raising it and running again continues the search")
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = Field(0, description="the sampler's seed")
    search_space: SearchSpace
    output_dir: Path = Field(Path("runs/tune"), description="the search writes to output_dir/name/")

    @property
    def tune_dir(self) -> Path:
        return self.output_dir / self.name


def load_tune(ref: str | Path) -> tuple[TuneConfig, Callable[..., str]]:
    """The tune config named by path or by name in configs/tune/, and `at(key...)`: its `file:line` for messages."""
    path = paths.find_config(ref, "tune")
    data, lines = load_yaml(path)
    tune = validated(path, data, lines, TuneConfig)

    def at(*key: str) -> str:
        line = line_of(lines, key)
        return f"{path}:{line}" if line else str(path)

    return tune, at
