"""A task written in YAML: its data, prompt variants, sampling and evaluators, no Python.

    configs/tasks/<name>.yaml   (or any path)

    name: orders
    data:
      train: data/orders/train.jsonl            # chat JSONL, or a dataset: {path, split, columns, ...}
      eval: data/orders/eval.jsonl
    prompt_variants:
      default: {}                               # the examples' own messages
      few_shot: {few_shot: 3}                   # 3 training examples as earlier turns
      short: {system: "Reply with JSON only."}  # another system prompt
    sampling: {temperature: 0.0, max_new_tokens: 128}
    evaluators:
      - {type: json_schema, name: valid, schema_path: configs/schemas/orders.schema.json}
      - {type: json_fields, name: field, fields: [customer, item, quantity]}

Every evaluator is a pure function of (output, reference) from eval/evaluators.py, except the
judges (`llm_judge`, `tone_judge`), whose model is asked in a batch after generation; their
replies are kept in the generations, so every score can still be recomputed from generations.jsonl.
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

from pydantic import Field

from ftscale import paths
from ftscale.config import Strict, load_validated
from ftscale.errors import ConfigError, DataError
from ftscale.yamlfile import line_of, load_yaml

from ..evaluators import get_evaluator, parse_params
from ..pairwise_runs import PairwiseSpec
from . import Task


class Variant(Strict):
    system: str | None = Field(None, description="replaces the examples' system prompt; absent keeps it")
    few_shot: int = Field(0, ge=0, description="training examples shown first as earlier turns")


class TaskSampling(Strict):
    temperature: float | None = Field(None, ge=0.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(None, ge=1)


class TaskData(Strict):
    train: Path | dict | None = Field(None, description="the training pool; a task without one is only asked (eval.probes)")
    eval: Path | dict


class TaskSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    data: TaskData
    prompt_variants: dict[str, Variant] = Field(default_factory=lambda: {"default": Variant()}, min_length=1)
    sampling: TaskSampling = TaskSampling()
    evaluators: list[dict] = Field(min_length=1)
    headline: list[str] = Field(default_factory=list, description="metrics the scaling plot shows (default: the first two)")
    pairwise: PairwiseSpec | None = Field(None, description="double-blind pairwise judgements of every fine-tune "
                                                            "against the base (eval/pairwise_runs.py)")


def find_task_file(ref: str) -> Path | None:
    """A path to a task YAML, or a name in configs/tasks/."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    named = paths.CONFIGS / "tasks" / f"{ref}.yaml"
    return named if named.is_file() else None


def load_spec(path: Path) -> TaskSpec:
    """Load and check a task YAML; every error names the file, the line and the key."""
    from pydantic import ValidationError

    from ftscale.data.sources import HubSource

    spec = load_validated(path, TaskSpec)
    _, lines = load_yaml(path)

    def at(*loc) -> str:
        line = line_of(lines, loc)
        return f"{path}:{line}" if line else str(path)

    names = set()
    for i, raw in enumerate(spec.evaluators):
        kind = raw.get("type")
        if not isinstance(kind, str):
            raise ConfigError(f"{at('evaluators', i)}: evaluators[{i}].type: required, the name of an evaluator")
        try:
            get_evaluator(kind)
        except KeyError as e:
            raise ConfigError(f"{at('evaluators', i, 'type')}: evaluators[{i}].type: {e.args[0]}") from None
        name = raw.get("name", kind)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{at('evaluators', i, 'name')}: evaluators[{i}].name: must be a non-empty text")
        if name in names:
            raise ConfigError(f"{at('evaluators', i)}: evaluators[{i}].name: {name!r} is used twice")
        names.add(name)
        try:
            parse_params(kind, {k: v for k, v in raw.items() if k not in ("type", "name")})
        except ValueError as e:  # ParamsError: its first problem's key points at the line
            problems = getattr(e, "problems", None)
            key = problems[0][0].split(".")[0] if problems else str(e).split(":", 1)[0].strip()
            raise ConfigError(f"{at('evaluators', i, key)}: evaluators[{i}] ({kind}): {e}") from None
    names = [m.name for evaluator, params, prefix in parsed_evaluators(spec) for m in evaluator.metrics(params, prefix)]
    if problem := _headline_problem(spec, names):
        raise ConfigError(f"{at('headline')}: {problem}")
    for kind in ("train", "eval"):
        src = getattr(spec.data, kind)
        if isinstance(src, dict):
            try:
                HubSource.model_validate(src)
            except ValidationError as e:
                first = e.errors()[0]
                key = ".".join(str(x) for x in first["loc"])
                raise ConfigError(f"{at('data', kind, *first['loc'])}: data.{kind}.{key}: {first['msg']}") from None
    return spec


def data_files(spec: TaskSpec, spec_path: Path, out_dir: Path) -> tuple[Path | None, Path]:
    """The task's training pool (None if it has none) and eval set as checked chat JSONL files
    (datasets written out)."""
    from ftscale.data.sources import HubSource, materialise

    files = []
    for kind in ("train", "eval"):
        src = getattr(spec.data, kind)
        if src is None:
            files.append(None)
            continue
        if not isinstance(src, dict) and not Path(src).is_file():
            raise DataError(f"{spec_path}: data.{kind}: {src}: file not found")
        src = HubSource.model_validate(src) if isinstance(src, dict) else Path(src)
        files.append(materialise(src, kind, Path(out_dir) / spec.name / f"{kind}.jsonl", f"{spec_path}: data.{kind}"))
    return files[0], files[1]


def _build_messages(spec: TaskSpec, example: dict, variant: str, pool: list[dict], k: int, seed: int) -> list[dict]:
    if variant not in spec.prompt_variants:
        raise KeyError(f"{spec.name}: unknown prompt variant {variant!r} ({', '.join(spec.prompt_variants)})")
    v = spec.prompt_variants[variant]
    messages = example["messages"]
    system = [m for m in messages if m["role"] == "system"]
    if v.system is not None:
        system = [{"role": "system", "content": v.system}]
    turns = []
    if v.few_shot:  # drawn from the training pool only: the eval set never shows its own answers
        shots = random.Random(seed).sample(pool, v.few_shot)
        turns = [m for shot in shots for m in shot["messages"] if m["role"] != "system"]
    return system + turns + [m for m in messages if m["role"] != "system"]


def parsed_evaluators(spec: TaskSpec) -> list[tuple]:
    """(evaluator, parsed parameters, metric prefix) for each evaluator of the task."""
    out = []
    for raw in spec.evaluators:
        kind = raw["type"]
        params = parse_params(kind, {k: v for k, v in raw.items() if k not in ("type", "name")})
        out.append((get_evaluator(kind), params, raw.get("name", kind)))
    return out


def _score(evaluators: list[tuple], example: dict, text: str) -> dict:
    scores = {}
    for evaluator, params, prefix in evaluators:
        if evaluator.judge is None:  # a judge's scores come from its batch pass
            scores |= evaluator.score(text, example.get("reference") or {}, params, prefix)
    return scores


def _aggregates(evaluators: list[tuple], records: list[dict]) -> dict:
    from ..evaluators import confusion_matrix

    matrices = {prefix: confusion_matrix([r["scores"] for r in records], params, prefix,
                                         [r["reference"] for r in records])
                for evaluator, params, prefix in evaluators if evaluator.name == "choice"}
    return {"confusion_matrix": matrices} if matrices else {}


def _headline_problem(spec: TaskSpec, names: list[str]) -> str | None:
    unknown = [h for h in spec.headline if h not in names]
    return f"headline names unknown metrics {unknown} (it has {', '.join(names)})" if unknown else None


def build_task(spec: TaskSpec) -> Task:
    evaluators = parsed_evaluators(spec)
    metrics = tuple(m for evaluator, params, prefix in evaluators for m in evaluator.metrics(params, prefix))
    names = [m.name for m in metrics]
    if problem := _headline_problem(spec, names):
        raise ConfigError(f"task {spec.name}: {problem}")
    judges = tuple(e for e in evaluators if e[0].judge is not None)
    return Task(name=spec.name, metrics=metrics, prompt_variants=tuple(spec.prompt_variants),
                build_messages=partial(_build_messages, spec), score=partial(_score, evaluators),
                headline=tuple(spec.headline) or tuple(names[:2]), judges=judges,
                sampling={k: v for k, v in spec.sampling.model_dump().items() if v is not None},
                aggregates=partial(_aggregates, evaluators), pairwise=spec.pairwise,
                reference_needs=tuple((prefix, f, False) for evaluator, params, prefix in evaluators
                                      for f in evaluator.needs(params)))


def task_from_file(path: Path) -> Task:
    return build_task(load_spec(path))

