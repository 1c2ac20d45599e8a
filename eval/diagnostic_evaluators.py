"""Diagnostic evaluators: an output's length and whether it refuses."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ftscale.strict import Strict

from .evaluator_types import Evaluator, no_needs, one_metric
from .task_types import Metric


class LengthParams(Strict):
    unit: Literal["words", "chars"] = "words"  # tokens depend on the tokenizer: the backend counts those


def length(output: str, reference: dict, params: LengthParams, prefix: str) -> dict:
    """`<prefix>`: the output's length in words (whitespace-separated) or characters."""
    return {prefix: float(len(output.split()) if params.unit == "words" else len(output))}


LENGTH = Evaluator("length", LengthParams, lambda p, prefix: (Metric(prefix, f"output length in {p.unit}", False),),
                   no_needs, length)


DEFAULT_REFUSAL_MARKERS = (
    "i can't", "i cannot", "i can not", "i'm sorry", "i am sorry", "as an ai", "i am unable", "i'm unable",
    "i won't", "i will not", "i'm not able to", "i am not able to", "i must decline",
)


def _plain(text: str) -> str:
    return text.replace("\u2019", "'").casefold()  # models write both I can't and I can’t


class RefusalParams(Strict):
    markers: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSAL_MARKERS), min_length=1,
                               description="phrases that mark a refusal (case-insensitive substrings)")

    @field_validator("markers")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if any(not m.strip() for m in v):
            raise ValueError("a marker cannot be empty (it would mark every output a refusal)")
        return v


def refusal(output: str, reference: dict, params: RefusalParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 when the output contains a refusal marker (a diagnostic: "I can't stress
    enough" counts too). Detail `<prefix>.marker`: the first marker found, or None."""
    text = _plain(output)
    marker = next((m for m in params.markers if _plain(m) in text), None)
    return {prefix: float(marker is not None), f"{prefix}.marker": marker}


REFUSAL = Evaluator("refusal", RefusalParams, one_metric("the output refuses", higher_is_better=False),
                    no_needs, refusal)


# this module's evaluators, registered by name in eval/evaluators.py
EVALUATORS = (LENGTH, REFUSAL)
