"""Whether a short answer matches the reference answer: the rule of the `reference_answer` evaluator
(the formatting task's `answer_correct`) and of the forgetting probes (data/probes.py). Numbers match within a relative or
absolute 1e-3; strings case- and space-insensitively, a final period ignored."""

from __future__ import annotations

import math
import re


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().rstrip(".").casefold()


def answers_match(predicted, reference: dict) -> bool:
    gold = reference["answer"]
    if reference.get("type") == "number" or isinstance(gold, (int, float)):
        try:
            value = float(str(predicted).replace(",", "").strip()) if not isinstance(predicted, bool) else None
        except ValueError:
            return False
        return value is not None and math.isclose(value, float(gold), rel_tol=1e-3, abs_tol=1e-3)
    return isinstance(predicted, (str, int, float)) and _norm(str(predicted)) == _norm(str(gold))
