"""Evaluators that compare the output with a reference answer: exact_match, regex and choice."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from ftscale.strict import Strict

from .evaluator_types import Evaluator, KeyProblem, one_metric
from .task_types import Metric
from .text_match import TextMatch, matches_reference


# --- exact_match ---------------------------------------------------------------------------------

class ExactMatchParams(TextMatch):
    field: str = Field("answer", description="reference field holding the expected text")


def exact_match(output: str, reference: dict, params: ExactMatchParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 when the whole output equals the reference field under the text options
    (a list in the reference is a set of accepted answers); None when the reference lacks it."""
    return {prefix: matches_reference(output, reference.get(params.field), params)}


EXACT_MATCH = Evaluator("exact_match", ExactMatchParams, one_metric("the output equals the reference answer"),
                        lambda p: (p.field,), exact_match)


# --- regex ---------------------------------------------------------------------------------------

_FLAGS = {"IGNORECASE": re.IGNORECASE, "MULTILINE": re.MULTILINE, "DOTALL": re.DOTALL}


class RegexParams(TextMatch):
    """The text options (case_sensitive, ...) apply to comparing groups with the reference;
    matching itself follows `flags`."""

    pattern: str
    mode: Literal["fullmatch", "search"] = "fullmatch"
    flags: list[Literal["IGNORECASE", "MULTILINE", "DOTALL"]] = Field(default_factory=list)
    compare_groups: bool | None = Field(
        None, description="compare each named group with the reference field of its name; default: when there are any")
    _regex: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _compile(self):
        flags = 0
        for f in self.flags:
            flags |= _FLAGS[f]
        try:
            self._regex = re.compile(self.pattern, flags)
        except re.error as e:
            raise KeyProblem("pattern", f"invalid regular expression: {e}") from None
        if self.compare_groups and not self._regex.groupindex:
            raise KeyProblem("compare_groups", "the pattern has no named groups to compare")
        if self.compare_groups is None:
            self.compare_groups = bool(self._regex.groupindex)
        return self

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self._regex.groupindex) if self.compare_groups else ()


def regex(output: str, reference: dict, params: RegexParams, prefix: str) -> dict:
    """`<prefix>.match`: the pattern matches (the whole output, or anywhere with mode: search).
    `<prefix>`: it matches and, when comparing groups, each named group equals the reference
    field of its name; None when the reference lacks one of those fields.
    Detail `<prefix>.groups`: the named groups captured (null when no match)."""
    m = params._regex.fullmatch(output) if params.mode == "fullmatch" else params._regex.search(output)
    out: dict[str, Any] = {f"{prefix}.match": float(m is not None),
                           f"{prefix}.groups": m.groupdict() if m and params._regex.groupindex else None}
    results = [matches_reference(m.group(g) if m else None, reference.get(g), params) for g in params.groups]
    if any(r is None for r in results):
        out[prefix] = None
    else:
        out[prefix] = float(m is not None and all(results))
    return out


def _regex_metrics(params: RegexParams, prefix: str) -> tuple[Metric, ...]:
    what = "the pattern matches and its named groups equal the reference" if params.groups else "the pattern matches"
    return Metric(prefix, what), Metric(f"{prefix}.match", "the pattern matches at all")


REGEX = Evaluator("regex", RegexParams, _regex_metrics, lambda p: p.groups, regex)


# --- choice --------------------------------------------------------------------------------------

class ChoiceParams(Strict):
    labels: list[str] = Field(min_length=2)
    field: str = Field("label", description="reference field holding the gold label")
    case_sensitive: bool = False

    @model_validator(mode="after")
    def _distinct(self):
        keys = [self.key(label) for label in self.labels]
        if any(not k for k in keys):
            raise KeyProblem("labels", "a label cannot be empty")
        repeated = sorted({label for label, k in zip(self.labels, keys) if keys.count(k) > 1})
        if repeated:
            raise KeyProblem("labels", f"labels that read the same: {repeated}")
        return self

    def key(self, label: str) -> str:
        """How a label is recognised: spacing never matters, case only when case_sensitive."""
        label = " ".join(label.split())
        return label if self.case_sensitive else label.casefold()

    def canonical(self, value: Any) -> str | None:
        """The label a reference value names, as written in `labels`; None if it names none."""
        if not isinstance(value, str):
            return None
        return next((label for label in self.labels if self.key(label) == self.key(value)), None)


def _label_spans(label: str, text: str, case_sensitive: bool) -> list[tuple[int, int]]:
    # Lookarounds rather than \b, so labels that start or end with a symbol ("C++") work too.
    body = r"\s+".join(re.escape(word) for word in label.split())
    flags = 0 if case_sensitive else re.IGNORECASE
    return [m.span() for m in re.finditer(rf"(?<!\w){body}(?!\w)", text, flags)]


def labels_named(output: str, params: ChoiceParams) -> list[str]:
    """The labels the output names as whole words. An occurrence inside a longer label's occurrence
    does not count ("positive" in "not positive")."""
    spans = {label: _label_spans(label, output, params.case_sensitive) for label in params.labels}

    def inside_another(label, span):
        return any(other != label and o[0] <= span[0] and span[1] <= o[1] and o != span
                   for other, others in spans.items() for o in others)

    return [label for label, ss in spans.items() if any(not inside_another(label, s) for s in ss)]


def choice(output: str, reference: dict, params: ChoiceParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 when the output names exactly one label and it is the reference's (none or
    several named: 0.0); None when the reference's value is missing or not one of the labels.
    Details: `<prefix>.predicted` (the label, or None), `<prefix>.found` (every label named)."""
    found = labels_named(output, params)
    predicted = found[0] if len(found) == 1 else None
    gold = params.canonical(reference.get(params.field))
    return {prefix: None if gold is None else float(predicted == gold),
            f"{prefix}.predicted": predicted, f"{prefix}.found": found}


def confusion_matrix(records_scores: list[dict | None], params: ChoiceParams, prefix: str,
                     references: list[dict]) -> dict[str, dict[str, int]]:
    """gold label -> predicted label or "none" -> count, every cell present (zeros too), in label
    order. Examples whose gold label is missing or unknown are left out; a failed request (scores
    None) counts as "none", as failures count against the system elsewhere."""
    if len(records_scores) != len(references):
        raise ValueError(f"{len(records_scores)} score records but {len(references)} references")
    matrix = {gold: dict.fromkeys([*params.labels, "none"], 0) for gold in params.labels}
    for scores, reference in zip(records_scores, references):
        gold = params.canonical(reference.get(params.field))
        if gold is not None:
            predicted = (scores or {}).get(f"{prefix}.predicted") or "none"
            matrix[gold][predicted] = matrix[gold].get(predicted, 0) + 1
    return matrix


CHOICE = Evaluator("choice", ChoiceParams, one_metric("the output names the reference label, and only it"),
                   lambda p: (p.field,), choice)


# this module's evaluators, registered by name in eval/evaluators.py
EVALUATORS = (EXACT_MATCH, REGEX, CHOICE)
