"""Where the OpenAI API key comes from: the environment, or a file the user names. Nowhere else,
and it is never written: run directories, logs and reports hold no key."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import FtscaleError

MISSING = "set OPENAI_API_KEY, or OPENAI_API_KEY_FILE to a file holding the key"


def openai_api_key() -> str | None:
    """OPENAI_API_KEY, else the first line of the file OPENAI_API_KEY_FILE names; None if neither is set."""
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        return key
    name = os.environ.get("OPENAI_API_KEY_FILE")
    if not name:
        return None
    try:
        key = Path(name).expanduser().read_text(encoding="utf-8").strip().splitlines()[0].strip()
    except (OSError, IndexError):
        raise FtscaleError(f"OPENAI_API_KEY_FILE={name}: cannot read a key from that file") from None
    if not key:
        raise FtscaleError(f"OPENAI_API_KEY_FILE={name}: the file's first line is empty")
    return key
