"""Agreement with a captured fine-tune (ftscale migrate): when the user has no scoring rule, the
OpenAI fine-tune's own answers (captured into each eval example's reference as `captured`) are
the reference a local replacement is held to.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .evaluator_types import Evaluator, JudgeHooks, as_prompt_text, one_metric
from .json_output import first_json_object
from .judges import JUDGES_DIR, JudgeParams, combine, parse_pairwise
from .task_types import Metric
from .text_match import TextMatch, texts_equal, values_equal


class AgreementExactParams(TextMatch):
    field: str = Field("captured", description="reference field holding the fine-tune's answer")


def agreement_exact(output: str, reference: dict, params: AgreementExactParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 when the output equals the fine-tune's answer after normalisation (NFC,
    whitespace collapsed, case folded unless case_sensitive); None when no answer was captured."""
    expected = reference.get(params.field)
    return {prefix: None if not isinstance(expected, str) else float(texts_equal(output, expected, params))}


AGREEMENT_EXACT = Evaluator("agreement_exact", AgreementExactParams,
                            one_metric("the output equals the fine-tune's answer (normalised text)"),
                            lambda p: (p.field,), agreement_exact)


class AgreementJsonParams(TextMatch):
    field: str = Field("captured", description="reference field holding the fine-tune's answer")
    fields: list[str] | None = Field(None, description="the JSON fields compared (default: every field of the "
                                                        "fine-tune's object)")


def agreement_json(output: str, reference: dict, params: AgreementJsonParams, prefix: str) -> dict:
    """Per-field equality of the first JSON object of the output with the first JSON object of the
    fine-tune's answer. `<prefix>`: the share of compared fields equal; `<prefix>.all`: every one
    equal. None when the fine-tune's answer holds no JSON object (nothing to agree with); 0.0 when
    the output holds none. Detail `<prefix>.differ`: the fields that differ."""
    expected = reference.get(params.field)
    want = first_json_object(expected) if isinstance(expected, str) else None
    if want is None:
        return {prefix: None, f"{prefix}.all": None, f"{prefix}.differ": None}
    names = params.fields if params.fields is not None else list(want)
    names = [n for n in names if n in want]
    if not names:
        return {prefix: None, f"{prefix}.all": None, f"{prefix}.differ": None}
    got = first_json_object(output)
    differ = [n for n in names if got is None or n not in got or not values_equal(got[n], want[n], params)]
    return {prefix: 1.0 - len(differ) / len(names), f"{prefix}.all": float(not differ), f"{prefix}.differ": differ}


def _agreement_json_metrics(params: AgreementJsonParams, prefix: str) -> tuple[Metric, ...]:
    return (Metric(prefix, "share of the fine-tune's JSON fields the output gives equal"),
            Metric(f"{prefix}.all", "every JSON field equals the fine-tune's"))


AGREEMENT_JSON = Evaluator("agreement_json", AgreementJsonParams, _agreement_json_metrics, lambda p: (p.field,),
                           agreement_json)


class AgreementJudgeParams(JudgeParams):
    KIND, PROMPT = "pairwise", JUDGES_DIR / "agreement.yaml"
    order: Literal["local_first", "captured_first"] = Field(
        description="which answer is shown as A; list the evaluator once per order to ask both")
    field: str = Field("captured", description="reference field holding the fine-tune's answer")
    criteria: str = Field("correct, complete, and in the form the request asks for",
                          description="what a good answer is, shown to the judge")


def agreement_judge_messages(params: AgreementJudgeParams, input_text: Any, output: str, reference: Any) -> list[dict]:
    captured = (reference or {}).get(params.field)
    if not isinstance(captured, str):
        raise ValueError(f"agreement_judge: the reference has no {params.field!r} answer to compare with")
    a, b = (output, captured) if params.order == "local_first" else (captured, output)
    return params._prompt.render(persona_rubric=params.criteria, query=as_prompt_text(input_text), reply_a=a, reply_b=b)


def agreement_judge_scores(judgement_text: str | None, params: AgreementJudgeParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 the local answer won, 0.5 a tie, 0.0 the fine-tune's won (its mean is a win
    score; as good = at least 0.5); `<prefix>.unparsable`: the judge's reply had no `Winner:` line.
    A failed judge request scores None throughout."""
    if judgement_text is None:
        return {prefix: None, f"{prefix}.unparsable": None}
    verdict = parse_pairwise(judgement_text)
    if verdict is None:
        return {prefix: None, f"{prefix}.unparsable": 1.0}
    local = "A" if params.order == "local_first" else "B"
    return {prefix: 0.5 if verdict == "tie" else float(verdict == local), f"{prefix}.unparsable": 0.0}


def agreement_judge(output: str, reference: dict, params: AgreementJudgeParams, prefix: str) -> dict:
    """Placeholders until the judge pass (as llm_judge)."""
    return agreement_judge_scores(None, params, prefix)


def _agreement_judge_metrics(params: AgreementJudgeParams, prefix: str) -> tuple[Metric, ...]:
    return (Metric(prefix, f"the judge prefers the local answer (1), ties (0.5) or prefers "
                           f"the fine-tune's (0), {params.order.replace('_', ' ')}"),
            Metric(f"{prefix}.unparsable", "the judge's reply had no verdict", higher_is_better=False))


AGREEMENT_JUDGE = Evaluator("agreement_judge", AgreementJudgeParams, _agreement_judge_metrics, lambda p: (p.field,),
                            agreement_judge, JudgeHooks(agreement_judge_messages, agreement_judge_scores))


def both_orders(local_first: float | None, captured_first: float | None) -> float | None:
    """One item's agreement_judge outcome from its two orders (ftscale.eval.judges.combine): 1.0 the
    local answer is at least as good as the fine-tune's (it won, or the orders split or tied), 0.0
    the fine-tune's is better; None when either order has no verdict."""

    def winner(v):
        return None if v is None else {1.0: "x", 0.5: "tie", 0.0: "y"}[v]

    outcome = combine(winner(local_first), winner(captured_first))
    return None if outcome == "unparsable" else float(outcome != "y")


# this module's evaluators, registered by name in eval/evaluators.py
EVALUATORS = (AGREEMENT_EXACT, AGREEMENT_JSON, AGREEMENT_JUDGE)
