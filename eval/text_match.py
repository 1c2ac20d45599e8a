"""How an output's text is compared with a reference value: the options every evaluator that
compares text shares (`TextMatch`), numbers read exactly, JSON values compared item by item.
"""

from __future__ import annotations

import json
import re
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import Field

from ftscale.strict import Strict


class TextMatch(Strict):
    """How two texts are compared; the same options wherever an evaluator compares text."""

    case_sensitive: bool = False
    strip_whitespace: bool = Field(True, description="strip the ends and collapse inner runs of whitespace to one space")
    ignore_punctuation: bool = Field(
        False, description="drop Unicode punctuation (signs and decimal points too: use numeric_tolerance for numbers)")
    numeric_tolerance: float | None = Field(
        None, ge=0, allow_inf_nan=False,
        description="when both sides read as numbers (1,234.5 allowed), equal if within this absolute difference; "
                    "0 = the same number however written")


# Thousands separators only in groups of three ("1,234"), so a decimal comma ("1,5") is not misread.
_NUMBER = re.compile(r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def as_number(text: str) -> Decimal | None:
    """The number a text spells, or None. Decimal, so a tolerance of 0.01 means exactly 0.01."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def as_text(value: Any) -> str:
    """A JSON scalar as text: strings as they are, others as JSON writes them (true, null); a float
    with no fraction reads as the integer, since JSON does not tell 33 from 33.0."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def normalise(text: str, opts: TextMatch) -> str:
    text = unicodedata.normalize("NFC", text)  # composed and decomposed accents are the same letter
    if opts.ignore_punctuation:
        text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
    if opts.strip_whitespace:
        text = " ".join(text.split())
    return text if opts.case_sensitive else text.casefold()


def texts_equal(predicted: str, expected: str, opts: TextMatch) -> bool:
    if opts.numeric_tolerance is not None:
        a, b = as_number(predicted), as_number(expected)
        if a is not None and b is not None:
            return abs(a - b) <= Decimal(repr(opts.numeric_tolerance))
    return normalise(predicted, opts) == normalise(expected, opts)


def values_equal(predicted: Any, expected: Any, opts: TextMatch) -> bool:
    """JSON values: objects key by key, lists item by item, scalars as text under `opts`."""
    if isinstance(expected, dict):
        return (isinstance(predicted, dict) and predicted.keys() == expected.keys()
                and all(values_equal(predicted[k], expected[k], opts) for k in expected))
    if isinstance(expected, list):
        return (isinstance(predicted, list) and len(predicted) == len(expected)
                and all(values_equal(p, e, opts) for p, e in zip(predicted, expected)))
    if isinstance(predicted, (dict, list)):
        return False
    return texts_equal(as_text(predicted), as_text(expected), opts)


def matches_reference(predicted: str | None, expected: Any, opts: TextMatch) -> float | None:
    """1.0/0.0 for a text against a reference value: a scalar, or a list of accepted alternatives.
    None when the reference gives nothing to compare with (missing, null, empty list, an object)."""
    alternatives = expected if isinstance(expected, list) else [expected]
    if not alternatives or any(a is None or isinstance(a, (dict, list)) for a in alternatives):
        return None
    if predicted is None:
        return 0.0
    return float(any(texts_equal(predicted, as_text(a), opts) for a in alternatives))
