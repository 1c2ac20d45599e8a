"""The task registry: a task builds prompts for its variants and scores one example at a time.

Evaluators are pure functions of (example, output text) -> metrics, so the same scores come
out whichever backend produced the text, and every score can be recomputed from
`generations.jsonl` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def get_task(name: str) -> Task:
    from . import formatting

    tasks = {formatting.TASK.name: formatting.TASK}
    if name not in tasks:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(sorted(tasks))}")
    return tasks[name]
