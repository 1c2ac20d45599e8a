"""JSON in model output: the one value a whole output is, or the first object found in prose."""

from __future__ import annotations

import json
import re
from typing import Any

_decoder = json.JSONDecoder()
NOT_JSON = object()


def whole_json(text: str) -> Any:
    """The one JSON value the whole text is (surrounding whitespace aside), else NOT_JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return NOT_JSON


def first_json_object(text: str) -> dict | None:
    """The first JSON object anywhere in the text (models wrap it in prose or code fences)."""
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = _decoder.raw_decode(text, m.start())
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            return obj
    return None
