"""What an evaluator is, and the helpers for writing one.

An evaluator is four callables and a parameter model (see `Evaluator`); eval/evaluators.py
registers them by name, and the modules beside it define them by subject.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from ftscale.strict import Strict

from .task_types import Metric


@dataclass(frozen=True)
class JudgeHooks:
    """What a judge evaluator adds: its verdict is not a function of (output, reference), so its
    model is asked in a batch after generation (eval/evaluate.py: judge_pass), and the reply is
    kept in the generations so the scores can be parsed again without asking twice."""

    # (params, input: the user's message, output, reference) -> the judge's chat messages
    messages: Callable[[Strict, Any, str, Any], list[dict]]
    # (the judge's reply or None when its request failed, params, prefix) -> scores
    scores: Callable[[str | None, Strict, str], dict]


@dataclass(frozen=True)
class Evaluator:
    name: str  # registry name, e.g. "exact_match"
    params: type[Strict]  # its YAML parameters
    metrics: Callable[[Strict, str], tuple[Metric, ...]]  # (params, prefix) -> metrics reported
    needs: Callable[[Strict], tuple[str, ...]]  # reference fields one example needs
    score: Callable[[str, dict, Strict, str], dict]  # (output, reference, params, prefix) -> scores
    judge: JudgeHooks | None = None  # a judge evaluator: params has `judge` and `max_new_tokens`
    # True: every eval example must hold the fields `needs` names, one lacking them is refused before any
    # generation; False: some example must, the others are not scorable for this evaluator
    needs_all: bool = False


class KeyProblem(ValueError):
    """Raised by cross-field checks, whose pydantic errors carry no key, to say which key is wrong."""

    def __init__(self, key: str, reason: str):
        self.key = key
        super().__init__(reason)


class NoParams(Strict):
    """For evaluators without parameters: any key given is refused."""


def one_metric(description: str, higher_is_better: bool = True) -> Callable[[Strict, str], tuple[Metric, ...]]:
    """`metrics` for an evaluator that reports one metric, named by the prefix alone."""
    return lambda params, prefix: (Metric(prefix, description, higher_is_better),)


def no_needs(params: Strict) -> tuple[str, ...]:
    return ()


def as_prompt_text(value: Any) -> str:
    """An input or reference as a judge's prompt shows it: text as is, chat messages as a
    `role: content` transcript, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in value)  # a chat transcript
    return json.dumps(value, ensure_ascii=False)
