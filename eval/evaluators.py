"""The evaluators a task file can name, by name, and their parameters validated.

A task file names evaluators and their parameters; each evaluator scores one example from its
output text and reference dict alone, so scores can be recomputed from `generations.jsonl` and
come out the same whichever backend produced the text.

An evaluator is four callables and a parameter model (`Evaluator`, eval/evaluator_types.py):
  * `params`: a `Strict` pydantic model of its YAML parameters (unknown keys refused, types
    checked, and anything that can be checked before a run - regexes, schemas - checked then);
  * `metrics(params, prefix)`: the metrics it reports, each named `<prefix>` or `<prefix>.<x>`;
  * `needs(params)`: the reference fields one example must have to be scored (with `needs_all`,
    every eval example must have them, or the run is refused before any generation);
  * `score(output, reference, params, prefix)`: `{metric name: 1.0 | 0.0 | float | None}`,
    where None means "not scorable for this example" (the reference lacks what is needed) -
    never a guess. Extra keys are details (the predicted label, an error message), prefixed too.

The evaluators live in modules by subject, each ending in a table `EVALUATORS`; adding one is one
function plus one entry in its module's table:

    def word_count(output: str, reference: dict, params: NoParams, prefix: str) -> dict:
        '''`<prefix>`: words in the output.'''
        return {prefix: float(len(output.split()))}

    WORD_COUNT = Evaluator("word_count", NoParams, one_metric("words in the output", False), no_needs, word_count)

(and a `Strict` subclass for its parameters, if it has any). A new module's table is added to
`EVALUATORS` below.
"""

from __future__ import annotations

from pydantic import ValidationError

from ftscale.strict import Strict

from . import (agreement_evaluators, diagnostic_evaluators, json_evaluators, llm_judge, match_evaluators,
               tone_evaluators)
from .evaluator_types import Evaluator, KeyProblem


def _by_name(*tables: tuple[Evaluator, ...]) -> dict[str, Evaluator]:
    # Refused rather than replaced: two evaluators under one name would score silently differently.
    out: dict[str, Evaluator] = {}
    for e in (e for table in tables for e in table):
        if e.name in out:
            raise ValueError(f"evaluator {e.name!r} is registered twice")
        out[e.name] = e
    return out


EVALUATORS: dict[str, Evaluator] = _by_name(
    match_evaluators.EVALUATORS, json_evaluators.EVALUATORS, llm_judge.EVALUATORS, diagnostic_evaluators.EVALUATORS,
    tone_evaluators.EVALUATORS, agreement_evaluators.EVALUATORS)


def get_evaluator(name: str) -> Evaluator:
    if name not in EVALUATORS:
        raise KeyError(f"unknown evaluator {name!r}; known: {', '.join(sorted(EVALUATORS))}")
    return EVALUATORS[name]


class ParamsError(ValueError):
    """Invalid evaluator parameters; `problems` holds (key, reason) pairs so a caller can point at
    the YAML line of each key."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{key}: {reason}" for key, reason in problems))


def _known_keys(model: type[Strict]) -> str:
    return ", ".join(f.alias or name for name, f in model.model_fields.items())


def parse_params(name: str, raw: dict | None) -> Strict:
    """The evaluator's parameters, validated; ParamsError (a ValueError) with `<key>: <reason>`."""
    model = get_evaluator(name).params
    if raw is None:  # `- exact_match:` with nothing under it in YAML
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError([("(parameters)", f"expected a mapping of parameters, got {type(raw).__name__}")])
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(part) for part in e["loc"])
            cause = (e.get("ctx") or {}).get("error")
            if isinstance(cause, KeyProblem):
                key, reason = cause.key, str(cause)
            elif isinstance(cause, Exception):
                reason = str(cause)  # our own message, without pydantic's "Value error, " in front
            elif e["type"] == "extra_forbidden":
                reason = "unknown parameter" + (f"; known: {_known_keys(model)}" if len(e["loc"]) == 1 else "")
            else:
                reason = e["msg"]
            problems.append((key or "(parameters)", reason))
        raise ParamsError(problems) from None
