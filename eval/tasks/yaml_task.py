"""A task written in YAML: its data, prompt variants, sampling and evaluators, no Python.

    configs/tasks/<name>.yaml   (or any path)

    name: orders
    data:
      train: data/orders/train.jsonl            # chat JSONL, or a dataset: {path, split, columns, ...}
      eval: data/orders/eval.jsonl
      format: openai_chat                       # the training pool's: or alpaca, sharegpt, prompt_completion
    prompt_variants:
      default: {}                               # the examples' own messages
      few_shot: {few_shot: 3}                   # 3 training examples as earlier turns
      short: {system: "Reply with JSON only."}  # another system prompt
    sampling: {temperature: 0.0, max_new_tokens: 128}
    evaluators:
      - {type: json_schema, name: valid, schema_path: configs/schemas/orders.schema.json}
      - {type: json_fields, name: field, fields: [customer, item, quantity]}
    all_of: {valid_customer: [valid, field.customer]}   # 1 where every metric listed is 1

Every evaluator is a pure function of (output, reference) from eval/evaluators.py, except the
judges (`llm_judge`, `tone_judge`), whose model is asked in a batch after generation; their
replies are kept in the generations, so every score can still be recomputed from generations.jsonl.
A task file is read once, into one `Task` that carries what the file says (its evaluators, its data
sources, its hash), so nothing needs to read it again.
"""

from __future__ import annotations

import random
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Annotated, Callable, Literal

from pydantic import Field, ValidationError

from ftscale import paths
from ftscale.chatdata import sha256_file
from ftscale.data.formats import CANONICAL, Format
from ftscale.data.sources import HubSource, TaskData
from ftscale.errors import ConfigError
from ftscale.strict import Strict, validated
from ftscale.yamlfile import line_of, load_yaml

from ..evaluators import get_evaluator, parse_params
from ..match_evaluators import confusion_matrix
from ..pairwise_runs import PairwiseSpec
from ..task_types import Metric, Task

# a variant's `few_shot` that takes the experiment's eval.few_shot_k
FEW_SHOT_K = "eval.few_shot_k"


class Variant(Strict):
    system: str | None = Field(None, description="replaces the examples' system prompt; absent keeps it")
    few_shot: Annotated[int, Field(ge=0)] | Literal["eval.few_shot_k"] = Field(
        0, description=f"training examples shown first as earlier turns; {FEW_SHOT_K}: the experiment's count")


class TaskSampling(Strict):
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(None, ge=1)


class TaskDataSpec(Strict):
    train: Path | dict | None = Field(None, description="the training pool; a task without one is only asked (eval.probes)")
    eval: Path | dict
    format: Format = Field(CANONICAL, description="the training pool's format (a file, or a dataset's rows without "
                                                  "`columns`): openai_chat, alpaca, sharegpt or prompt_completion; "
                                                  "the eval set is always chat JSONL")


class RatingWording(Strict):
    """How the page of a human rating study (`ftscale rate`) speaks of the task's items to raters."""

    query: str = Field("query", min_length=1, max_length=60,
                       description="what the prompt of a pair is called, e.g. customer message")
    question: str = Field("Which reply is better?", min_length=1, max_length=200,
                          description="the question the raters answer for each pair")


class TaskSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    data: TaskDataSpec
    prompt_variants: dict[str, Variant] = Field(default_factory=lambda: {"default": Variant()}, min_length=1)
    sampling: TaskSampling = TaskSampling()
    evaluators: list[dict] = Field(min_length=1)
    all_of: dict[str, list[str]] = Field(
        default_factory=dict, description="metric -> the evaluators' metrics it combines: 1 where every one is 1, "
                                          "not scorable where one is not")
    headline: list[str] = Field(default_factory=list, description="metrics the scaling plot shows (default: the first two)")
    pairwise: PairwiseSpec | None = Field(None, description="double-blind pairwise judgements of every fine-tune "
                                                            "against the base (eval/pairwise_runs.py)")
    rating: RatingWording = Field(RatingWording(), description="the wording of a human rating study's page")


# the keys of an evaluator's entry that are not its parameters
ENTRY_KEYS = ("type", "name", "description")


def find_task_file(ref: str) -> Path | None:
    """A path to a task YAML, or a name in configs/tasks/."""
    path = paths.find_config(ref, "tasks")
    return path if path.suffix in (".yaml", ".yml") and path.is_file() else None


def _parse_evaluators(spec: TaskSpec, at: Callable) -> list[tuple]:
    """(evaluator, parsed parameters, name) of each entry; an error names the file, the line and the key."""
    out, names = [], set()
    for i, raw in enumerate(spec.evaluators):
        kind = raw.get("type")
        if not isinstance(kind, str):
            raise ConfigError(f"{at('evaluators', i)}: evaluators[{i}].type: required, the name of an evaluator")
        try:
            evaluator = get_evaluator(kind)
        except KeyError as e:
            raise ConfigError(f"{at('evaluators', i, 'type')}: evaluators[{i}].type: {e.args[0]}") from None
        name = raw.get("name", kind)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{at('evaluators', i, 'name')}: evaluators[{i}].name: must be a non-empty text")
        if name in names:
            raise ConfigError(f"{at('evaluators', i)}: evaluators[{i}].name: {name!r} is used twice")
        names.add(name)
        if not isinstance(raw.get("description", ""), str):
            raise ConfigError(f"{at('evaluators', i, 'description')}: evaluators[{i}].description: must be a text")
        try:
            params = parse_params(kind, {k: v for k, v in raw.items() if k not in ENTRY_KEYS})
        except ValueError as e:  # ParamsError: its first problem's key points at the line
            problems = getattr(e, "problems", None)
            key = problems[0][0].split(".")[0] if problems else str(e).split(":", 1)[0].strip()
            raise ConfigError(f"{at('evaluators', i, key)}: evaluators[{i}] ({kind}): {e}") from None
        out.append((evaluator, params, name))
    return out


def _metrics(spec: TaskSpec, evaluators: list[tuple]) -> tuple[Metric, ...]:
    """Each evaluator's metrics (its main one described as the entry's `description` says, if it does),
    then the all_of metrics."""
    out = []
    for raw, (evaluator, params, name) in zip(spec.evaluators, evaluators):
        described = raw.get("description")
        out += [replace(m, description=described) if described and m.name == name else m
                for m in evaluator.metrics(params, name)]
    return (*out, *(Metric(name, " and ".join(of)) for name, of in spec.all_of.items()))


def _check_metric_names(spec: TaskSpec, evaluators: list[tuple], at: Callable) -> None:
    """all_of combines the evaluators' metrics scored with the output (a judge's come later); headline
    names metrics the task has."""
    own = [m.name for e, params, name in evaluators for m in e.metrics(params, name)]
    scored = [m.name for e, params, name in evaluators if e.judge is None for m in e.metrics(params, name)]
    for name, of in spec.all_of.items():
        where = f"{at('all_of', name)}: all_of.{name}"
        if name in own:
            raise ConfigError(f"{where}: {name!r} is a metric of the evaluators already")
        if len(of) < 2:
            raise ConfigError(f"{where}: name at least two metrics to combine")
        if unknown := [m for m in of if m not in scored]:
            raise ConfigError(f"{where}: {unknown} are not metrics of the evaluators (a judge's metrics cannot be "
                              f"combined: they are scored after generation); they are {', '.join(scored)}")
    names = [m.name for m in _metrics(spec, evaluators)]
    if unknown := [h for h in spec.headline if h not in names]:
        raise ConfigError(f"{at('headline')}: headline names unknown metrics {unknown} (it has {', '.join(names)})")


def _check_datasets(spec: TaskSpec, at: Callable) -> None:
    """Each dataset's entry; an eval dataset is mapped by `columns`, a training one by `columns` (chat) or
    read as records of data.format."""
    for kind in ("train", "eval"):
        src = getattr(spec.data, kind)
        if isinstance(src, dict):
            try:
                hub = HubSource.model_validate(src)
            except ValidationError as e:
                first = e.errors()[0]
                key = ".".join(str(x) for x in first["loc"])
                raise ConfigError(f"{at('data', kind, *first['loc'])}: data.{kind}.{key}: {first['msg']}") from None
            if hub.columns is None and kind == "eval":
                raise ConfigError(f"{at('data', kind)}: data.eval.columns: required: an eval dataset is mapped "
                                  "by its columns (user, id, reference)")
            if hub.columns is not None and kind == "train" and spec.data.format != CANONICAL:
                raise ConfigError(f"{at('data', 'format')}: data.format: a {spec.data.format} dataset is read "
                                  "row by row as it is: drop data.train.columns (columns map a dataset onto chat)")


def _load(path: Path) -> tuple[TaskSpec, list[tuple]]:
    """The task file read once and checked, with its evaluators parsed; every error names the file,
    the line and the key."""
    data, lines = load_yaml(path)
    spec = validated(path, data, lines, TaskSpec)

    def at(*loc) -> str:
        line = line_of(lines, loc)
        return f"{path}:{line}" if line else str(path)

    evaluators = _parse_evaluators(spec, at)
    _check_metric_names(spec, evaluators, at)
    _check_datasets(spec, at)
    return spec, evaluators


def load_spec(path: Path) -> TaskSpec:
    """Load and check a task YAML; every error names the file, the line and the key."""
    return _load(path)[0]


def _build_messages(spec: TaskSpec, example: dict, variant: str, pool: list[dict], k: int, seed: int) -> list[dict]:
    if variant not in spec.prompt_variants:
        raise KeyError(f"{spec.name}: unknown prompt variant {variant!r} ({', '.join(spec.prompt_variants)})")
    v = spec.prompt_variants[variant]
    messages = example["messages"]
    system = [m for m in messages if m["role"] == "system"]
    if v.system is not None:
        system = [{"role": "system", "content": v.system}]
    turns = []
    if shown := (k if v.few_shot == FEW_SHOT_K else v.few_shot):
        # drawn from the training pool only: the eval set never shows its own answers
        shots = random.Random(seed).sample(pool, shown)
        turns = [m for shot in shots for m in shot["messages"] if m["role"] != "system"]
    return system + turns + [m for m in messages if m["role"] != "system"]


def _score(evaluators: list[tuple], all_of: dict[str, list[str]], example: dict, text: str) -> dict:
    scores = {}
    for evaluator, params, prefix in evaluators:
        if evaluator.judge is None:  # a judge's scores come from its batch pass
            scores |= evaluator.score(text, example.get("reference") or {}, params, prefix)
    for name, of in all_of.items():
        values = [scores[m] for m in of]
        scores[name] = None if any(v is None for v in values) else float(all(v == 1.0 for v in values))
    return scores


def _aggregates(evaluators: list[tuple], records: list[dict]) -> dict:
    matrices = {prefix: confusion_matrix([r["scores"] for r in records], params, prefix,
                                         [r["reference"] for r in records])
                for evaluator, params, prefix in evaluators if evaluator.name == "choice"}
    return {"confusion_matrix": matrices} if matrices else {}


def task_from_file(path: Path) -> Task:
    """The task a YAML file defines, read once."""
    spec, evaluators = _load(path)
    metrics = _metrics(spec, evaluators)
    names = [m.name for m in metrics]
    return Task(name=spec.name, metrics=metrics, prompt_variants=tuple(spec.prompt_variants),
                build_messages=partial(_build_messages, spec), score=partial(_score, evaluators, spec.all_of),
                headline=tuple(spec.headline) or tuple(names[:2]),
                judges=tuple(e for e in evaluators if e[0].judge is not None),
                sampling={k: v for k, v in spec.sampling.model_dump().items() if v is not None},
                aggregates=partial(_aggregates, evaluators), pairwise=spec.pairwise,
                reference_needs=tuple((prefix, f, evaluator.needs_all) for evaluator, params, prefix in evaluators
                                      for f in evaluator.needs(params)),
                file_sha256=sha256_file(path), evaluators=tuple(evaluators),
                data=TaskData.of(spec.name, str(path), spec.data.train, spec.data.eval, spec.data.format))
