"""The tone study's evaluators: the HEURISTIC lexical_tone and addresses_problem baselines, the
tone_judge (the absolute judge of eval/judges.py) and probe_answer (the forgetting probes).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from ftscale.data.personas import load_persona
from ftscale.data.probes import probe_correct
from ftscale.errors import FtscaleError
from ftscale.strict import Strict

from .addresses_problem import addresses_problem
from .evaluator_types import Evaluator, JudgeHooks, KeyProblem, NoParams, as_prompt_text, no_needs, one_metric
from .judges import JUDGES_DIR, JudgeParams, parse_absolute
from .lexical_tone import lexical_tone
from .task_types import Metric


# --- lexical_tone: the tone task's judge-free baseline (HEURISTIC) -------------------------------

class LexicalToneParams(Strict):
    persona: str = Field("rude", description="a persona in configs/personas/ (or a path): whose marker words count")


def lexical_tone_evaluator(output: str, reference: dict, params: LexicalToneParams, prefix: str) -> dict:
    """HEURISTIC, not a judge: `<prefix>` = persona-tone markers / (tone + opposite markers), 0.5 when
    neither occurs (eval/lexical_tone.py). Details: `<prefix>.tone_markers`, `<prefix>.opposite_markers`."""
    found = lexical_tone(output, params.persona)
    return {prefix: found["lexical_tone"], f"{prefix}.tone_markers": found["tone_markers"],
            f"{prefix}.opposite_markers": found["opposite_markers"]}


LEXICAL_TONE = Evaluator("lexical_tone", LexicalToneParams,
                         one_metric("HEURISTIC lexical tone: share of the persona's marker words among tone markers"),
                         no_needs, lexical_tone_evaluator)


# --- addresses_problem: the tone task's judge-free helpfulness check (HEURISTIC) ----------------

class AddressesProblemParams(Strict):
    pass  # nothing to set: it reads the reference's query and product


def addresses_problem_evaluator(output: str, reference: dict, params: AddressesProblemParams, prefix: str) -> dict:
    """HEURISTIC, not a judge: `<prefix>` = 1.0 when the reply names the order (number or product) and a
    next step (eval/addresses_problem.py). Details: `<prefix>.names_order`, `<prefix>.next_step`."""
    found = addresses_problem(output, reference)
    return {prefix: float(found["addresses"]), f"{prefix}.names_order": float(found["names_order"]),
            f"{prefix}.next_step": float(found["next_step"])}


ADDRESSES_PROBLEM = Evaluator("addresses_problem", AddressesProblemParams,
                              one_metric("HEURISTIC: the reply names the order or product and states a next step"),
                              lambda p: ("query", "product"), addresses_problem_evaluator)


# --- tone_judge: the absolute judge of the tone task (eval/judges.py) as an evaluator ------------

class ToneJudgeParams(JudgeParams):
    KIND, PROMPT = "absolute", JUDGES_DIR / "absolute.yaml"
    persona: str = Field("rude", description="a persona in configs/personas/ (or a path): its judge_rubric is the target tone")
    _rubric: str = PrivateAttr("")

    @model_validator(mode="after")
    def _load_rubric(self):
        try:
            self._rubric = load_persona(self.persona).judge_rubric
        except (FtscaleError, FileNotFoundError) as e:
            raise KeyProblem("persona", str(e)) from None
        return self


def tone_judge_messages(params: ToneJudgeParams, input_text: Any, output: str, reference: Any) -> list[dict]:
    return params._prompt.render(persona_rubric=params._rubric, query=as_prompt_text(input_text), reply=output)


def tone_judge_scores(judgement_text: str | None, params: ToneJudgeParams, prefix: str) -> dict:
    """`<prefix>.tone`: the judge's tone score 1-10; `<prefix>.addresses_problem`: 1.0 when it says
    the reply deals with the customer's problem (helpfulness); `<prefix>.unparsable`: 1.0 when
    its reply did not follow the format (judges.parse_absolute; never guessed). A failed judge
    request scores None throughout."""
    if judgement_text is None:
        return {f"{prefix}.tone": None, f"{prefix}.addresses_problem": None, f"{prefix}.unparsable": None}
    v = parse_absolute(judgement_text)
    return {f"{prefix}.tone": None if v["tone"] is None else float(v["tone"]),
            f"{prefix}.addresses_problem": None if v["addresses_problem"] is None else float(v["addresses_problem"]),
            f"{prefix}.unparsable": 0.0 if v["parsed"] else 1.0}


def tone_judge(output: str, reference: dict, params: ToneJudgeParams, prefix: str) -> dict:
    """Placeholders until the judge pass (as llm_judge)."""
    return tone_judge_scores(None, params, prefix)


def _tone_judge_metrics(params: ToneJudgeParams, prefix: str) -> tuple[Metric, ...]:
    return (Metric(f"{prefix}.tone", f"the judge's tone score (1-10) for persona {params.persona}"),
            Metric(f"{prefix}.addresses_problem", "the judge says the reply deals with the customer's problem (helpfulness)"),
            Metric(f"{prefix}.unparsable", "the judge's reply did not follow the format", higher_is_better=False))


TONE_JUDGE = Evaluator("tone_judge", ToneJudgeParams, _tone_judge_metrics, no_needs, tone_judge,
                       JudgeHooks(tone_judge_messages, tone_judge_scores))


# --- probe_answer: the forgetting probes' checkable short answers (data/probes.py) ---------------

def probe_answer(output: str, reference: dict, params: NoParams, prefix: str) -> dict:
    """`<prefix>`: 1.0 when the reply gives the reference answer (ftscale.data.probes.probe_correct:
    the last number for numeric answers, the answer on word boundaries for strings)."""
    return {prefix: probe_correct(output, reference)}


PROBE_ANSWER = Evaluator("probe_answer", NoParams, one_metric("the reply gives the probe's answer"),
                         lambda p: ("answer",), probe_answer)


# this module's evaluators, registered by name in eval/evaluators.py
EVALUATORS = (LEXICAL_TONE, ADDRESSES_PROBLEM, TONE_JUDGE, PROBE_ANSWER)
