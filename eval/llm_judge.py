"""The llm_judge evaluator: a user-written rubric scored by a judge model.

Its pure parts are here; the judge model is asked in a batch pass after generation
(eval/evaluate.py: judge_pass), whose replies `judge_scores` parses.
"""

from __future__ import annotations

import re
import string
from typing import Any

from pydantic import Field, PrivateAttr, field_validator, model_validator

from ftscale.strict import Strict

from .evaluator_types import Evaluator, JudgeHooks, KeyProblem, as_prompt_text, no_needs
from .task_types import Metric


_PLACEHOLDERS = ("input", "output", "reference")
# a vLLM server is an OpenAI-compatible endpoint: openai:<served name> with OPENAI_BASE_URL
_BACKENDS = ("hf", "openai")


class LlmJudgeParams(Strict):
    rubric: str = Field(description="the judge's prompt; placeholders {input}, {output}, {reference}; "
                                    "literal braces doubled: {{ }}")
    scale_min: int = 1
    scale_max: int = 10
    pattern: str = Field(r"(?im)^\s*score\s*:\s*(\d+)\s*$", description="regex whose one group captures the score")
    judge: str = Field(description="hf:<model ref> (in-process) or openai:<model> (OpenAI, or a vLLM server via OPENAI_BASE_URL)")
    max_new_tokens: int = Field(64, ge=1, description="the judge's reply length")
    _regex: Any = PrivateAttr(None)

    @field_validator("rubric")
    @classmethod
    def _known_placeholders(cls, v: str) -> str:
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(v) if name is not None]
        except ValueError as e:  # a lone brace
            raise ValueError(f"{e} (write literal braces as {{{{ and }}}})") from None
        for name, spec, conv in fields:
            # Only bare names: str.format would also run {reference.x}, {output!r} and {input:>9}
            if name not in _PLACEHOLDERS or spec or conv:
                written = name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
                raise ValueError(f"unknown placeholder {{{written}}}; "
                                 f"known: {{input}}, {{output}}, {{reference}} (literal braces: {{{{ }}}})")
        if "output" not in {name for name, _, _ in fields}:
            raise ValueError("the rubric must show the judge the {output}")
        return v

    @property
    def placeholders(self) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(self.rubric) if name is not None}

    @field_validator("judge")
    @classmethod
    def _backend_model(cls, v: str) -> str:
        backend, _, model = v.partition(":")
        if backend not in _BACKENDS or not model.strip():
            raise ValueError(f"expected <backend>:<model> with backend one of {', '.join(_BACKENDS)}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.scale_min >= self.scale_max:
            raise KeyProblem("scale_max", f"must be above scale_min ({self.scale_min})")
        try:
            self._regex = re.compile(self.pattern)
        except re.error as e:
            raise KeyProblem("pattern", f"invalid regular expression: {e}") from None
        if self._regex.groups != 1:
            raise KeyProblem("pattern", f"needs exactly one capturing group (the score), has {self._regex.groups}")
        return self


def render_judge_prompt(params: LlmJudgeParams, input_text: str | list[dict], output: str,
                        reference: dict | str | None) -> list[dict]:
    """The chat messages for the judge: the rubric with its placeholders filled (chat messages
    given as input become a `role: content` transcript, a reference dict becomes JSON)."""
    if reference is None and "reference" in params.placeholders:
        raise ValueError("llm_judge: the rubric shows {reference} but this example has no reference")
    content = params.rubric.format(input=as_prompt_text(input_text), output=output,
                                   reference="" if reference is None else as_prompt_text(reference))
    return [{"role": "user", "content": content}]


def parse_judgement(text: str | None, params: LlmJudgeParams) -> float | None:
    """The judge's score: exactly one match of the pattern, an integer within the scale. Anything
    else (no score, two scores, out of range, not an integer) is None: unparsable, never guessed."""
    if text is None:
        return None
    matches = list(params._regex.finditer(text))
    if len(matches) != 1:
        return None
    raw = matches[0].group(1)
    if raw is None or not re.fullmatch(r"[+-]?\d+", raw.strip()):
        return None
    value = int(raw)
    return float(value) if params.scale_min <= value <= params.scale_max else None


def judge_scores(judgement_text: str | None, params: LlmJudgeParams, prefix: str) -> dict:
    """One example's scores from the judge's reply: `<prefix>` the score scaled to [0, 1],
    `<prefix>.raw` the score as the judge gave it, `<prefix>.unparsable` 1.0 when the reply holds
    no valid score. A missing reply (the judge request failed) scores None throughout."""
    if judgement_text is None:
        return {prefix: None, f"{prefix}.raw": None, f"{prefix}.unparsable": None}
    value = parse_judgement(judgement_text, params)
    if value is None:
        return {prefix: None, f"{prefix}.raw": None, f"{prefix}.unparsable": 1.0}
    return {prefix: (value - params.scale_min) / (params.scale_max - params.scale_min),
            f"{prefix}.raw": int(value), f"{prefix}.unparsable": 0.0}


def llm_judge(output: str, reference: dict, params: LlmJudgeParams, prefix: str) -> dict:
    """Placeholder scores: the judge's verdict is not a function of (output, reference), so the
    scores come from a later batch pass (render_judge_prompt -> judge model -> judge_scores),
    which replaces these Nones. `<prefix>`: the judge's score scaled to [0, 1];
    `<prefix>.unparsable`: 1.0 when the judge's reply held no valid score."""
    return {prefix: None, f"{prefix}.unparsable": None}


def _llm_judge_metrics(params: LlmJudgeParams, prefix: str) -> tuple[Metric, ...]:
    return (Metric(prefix, f"the judge's score ({params.scale_min}-{params.scale_max}) scaled to [0, 1]"),
            Metric(f"{prefix}.unparsable", "the judge's reply held no valid score", higher_is_better=False))


LLM_JUDGE = Evaluator("llm_judge", LlmJudgeParams, _llm_judge_metrics, no_needs, llm_judge,
                      JudgeHooks(render_judge_prompt, judge_scores))


# this module's evaluators, registered by name in eval/evaluators.py
EVALUATORS = (LLM_JUDGE,)
