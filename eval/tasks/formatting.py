"""The formatting task: answer in a strict JSON object, checked exactly.

`format_ok`: the whole output is one JSON object valid under configs/schemas/formatting.schema.json.
`answer_correct`: the answer matches the reference (numbers with tolerance; strings case- and
space-insensitive). It reads the first JSON object found in the output, so knowledge is scored
apart from format. `both`: the two together, what a program parsing the reply actually gets.
"""

from __future__ import annotations

import json
import math
import random
import re
from functools import lru_cache

from jsonschema import Draft202012Validator

from ftscale import paths

from . import Metric, Task

SCHEMA_PATH = paths.CONFIGS / "schemas" / "formatting.schema.json"
_decoder = json.JSONDecoder()


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def _strict_object(text: str):
    try:
        obj = json.loads(text.strip())
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _first_object(text: str):
    """The first JSON object anywhere in the text (models often wrap it in prose or fences)."""
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = _decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


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


def format_ok(example: dict, text: str) -> dict[str, float]:
    obj = _strict_object(text)
    return {"format_ok": float(obj is not None and _validator().is_valid(obj))}


def answer_correct(example: dict, text: str) -> dict[str, float]:
    obj = _strict_object(text) or _first_object(text)
    ok = obj is not None and "answer" in obj and answers_match(obj["answer"], example["reference"])
    return {"answer_correct": float(ok)}


def score(example: dict, text: str) -> dict[str, float]:
    out = format_ok(example, text) | answer_correct(example, text)
    out["both"] = float(out["format_ok"] and out["answer_correct"])
    return out


def build_messages(example: dict, variant: str, pool: list[dict], k: int, seed: int) -> list[dict]:
    """`default`: the example's own messages. `few_shot`: k training examples shown as earlier turns."""
    messages = example["messages"]
    if variant == "default":
        return messages
    if variant == "few_shot":
        shots = random.Random(seed).sample(pool, k)
        system = [m for m in messages if m["role"] == "system"]
        turns = [m for shot in shots for m in shot["messages"] if m["role"] != "system"]
        return system + turns + [m for m in messages if m["role"] != "system"]
    raise KeyError(f"formatting: unknown prompt variant {variant!r} (default, few_shot)")


TASK = Task(
    name="formatting",
    metrics=(
        Metric("format_ok", "the output is exactly one JSON object matching the schema"),
        Metric("answer_correct", "the answer matches the reference"),
        Metric("both", "format_ok and answer_correct"),
    ),
    prompt_variants=("default", "few_shot"),
    build_messages=build_messages,
    score=score,
    headline=("format_ok", "answer_correct"),
    reference_needs=(("answer_correct", "answer", True),),
)
