"""What a task is: its metrics, how it builds prompts and how it scores one example.

Evaluators are pure functions of (example, output text) -> metrics, so the same scores come
out whichever backend produced the text, and every score can be recomputed from
`generations.jsonl` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ftscale.data.sources import TaskData


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
    # what its task file resolved to, kept so that nothing reads the file again: the file's sha256 (part
    # of every evaluation's identity), its evaluators as written (evaluator, params, name) and its data
    file_sha256: str | None = None
    evaluators: tuple = ()
    data: TaskData | None = None
