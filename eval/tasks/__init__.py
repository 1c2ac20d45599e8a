"""The task registry: a task builds prompts for its variants and scores one example at a time.

Evaluators are pure functions of (example, output text) -> metrics, so the same scores come
out whichever backend produced the text, and every score can be recomputed from
`generations.jsonl` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    higher_is_better: bool = True


@dataclass(frozen=True)
class Task:
    name: str
    metrics: tuple[Metric, ...]
    prompt_variants: tuple[str, ...]
    # (eval example, variant, training pool, few-shot k, seed) -> chat messages to send
    build_messages: Callable[[dict, str, list[dict], int, int], list[dict]]
    # (eval example, output text) -> {metric name: value}
    score: Callable[[dict, str], dict[str, float]]
    headline: tuple[str, ...] = ()  # metrics that the summary plot shows
    # judge evaluators (llm_judge, tone_judge), scored in a batch after generation: (evaluator, params, prefix)
    judges: tuple = ()
    # the task's own sampling defaults (temperature, top_p, max_new_tokens); the experiment's eval section wins
    sampling: dict = field(default_factory=dict)
    # records -> aggregates beyond means that scores.json keeps (a choice evaluator's confusion matrix)
    aggregates: Callable[[list[dict]], dict] | None = None
    # double-blind pairwise judgements between the experiment's evaluations (eval/pairwise_runs.PairwiseSpec)
    pairwise: object | None = None
    # reference fields the evaluators read: (evaluator, field, every example must have it); a field
    # not every example needs leaves the others not scorable, but some example must have it
    reference_needs: tuple[tuple[str, str, bool], ...] = ()


def with_judge(task: Task, judge: str) -> Task:
    """The task with the model of every judge (judge evaluators, pairwise judgements) replaced by `judge`."""
    judges = tuple((e, params.model_copy(update={"judge": judge}), prefix) for e, params, prefix in task.judges)
    pairwise = task.pairwise.model_copy(update={"judge": judge}) if task.pairwise is not None else None
    return replace(task, judges=judges, pairwise=pairwise)


def builtin_tasks() -> dict[str, Task]:
    from . import formatting

    return {formatting.TASK.name: formatting.TASK}


def get_task(name: str) -> Task:
    """A built-in task, a task YAML in configs/tasks/ by name, or a path to a task YAML."""
    from .yaml_task import find_task_file, task_from_file

    tasks = builtin_tasks()
    if name in tasks:
        return tasks[name]
    path = find_task_file(name)
    if path is None:
        from ftscale import paths

        known = sorted(tasks) + sorted(p.stem for p in (paths.CONFIGS / "tasks").glob("*.yaml"))
        raise KeyError(f"unknown task {name!r}; available: {', '.join(known)}, or a path to a task YAML")
    return task_from_file(path)
