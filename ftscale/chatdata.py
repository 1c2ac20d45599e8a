"""The canonical dataset format: OpenAI chat fine-tuning JSONL.

Training files hold `{"messages": [...]}` per line; eval files hold the same without the final
assistant turn, plus a stable `id` and a `reference` for the task's evaluators. Every file is
validated line by line before anything uses it, and errors read `file:line: reason`.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from .errors import DataError

ROLES = ("system", "user", "assistant")


def _check_messages(messages, where: str, need_assistant_last: bool) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(f"{where}: messages[{i}] is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: messages[{i}] has unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise DataError(f"{where}: messages[{i}] ({role}) content must be a string")
        if not content.strip():
            raise DataError(f"{where}: messages[{i}] ({role}) has empty content")
    if need_assistant_last and messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's answer (found {messages[-1]['role']!r})")
    if not need_assistant_last and messages[-1]["role"] == "assistant":
        raise DataError(f"{where}: an eval example must end before the assistant's answer")


def decode_line(raw: bytes, where: str) -> str:
    """A line read in binary as text; not UTF-8 raises DataError naming the byte and its column
    (instead of a UnicodeDecodeError from the middle of a read)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                        "save the file as UTF-8") from None


def text_lines(path: str | Path):
    """(line number, text) for every line of a UTF-8 file."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            yield lineno, decode_line(raw, f"{path}:{lineno}")


def parse_line(line: str, where: str, kind: str) -> dict:
    """Parse and validate one line of a `train` or `eval` file; raise DataError naming `where`."""
    return check_record(load_line(line, where), where, kind)


def load_line(line: str, where: str):
    """The JSON value of one line of a JSONL file; an empty line or bad JSON raises DataError naming `where`."""
    if not line.strip():
        raise DataError(f"{where}: empty line")
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None


def check_record(rec, where: str, kind: str) -> dict:
    """`rec` as one example of a `train` or `eval` file (a converted one included); raise DataError naming `where`."""
    if not isinstance(rec, dict) or "messages" not in rec:
        raise DataError(f"{where}: expected an object with a 'messages' list")
    _check_messages(rec["messages"], where, need_assistant_last=(kind == "train"))
    if kind == "eval" and ("id" not in rec or "reference" not in rec):
        raise DataError(f"{where}: an eval example needs an 'id' and a 'reference'")
    if kind == "eval" and (not isinstance(rec["id"], (str, int)) or isinstance(rec["id"], bool)):
        raise DataError(f"{where}: 'id' must be a string or an integer (got {rec['id']!r})")
    return rec


def read_jsonl(path: str | Path, kind: str) -> list[dict]:
    """Read and validate a `train` or `eval` JSONL file; raise DataError at the first bad line."""
    path = Path(path)
    if kind not in ("train", "eval"):
        raise ValueError(kind)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    records, ids = [], set()
    for lineno, line in text_lines(path):
        rec = parse_line(line, f"{path}:{lineno}", kind)
        if kind == "eval":
            if rec["id"] in ids:
                raise DataError(f"{path}:{lineno}: duplicate id {rec['id']!r}")
            ids.add(rec["id"])
        records.append(rec)
    if not records:
        raise DataError(f"{path}: no examples")
    return records


def json_lines(path: str | Path):
    """(line number, object) for every non-empty line of a JSONL file; a line that is not a JSON
    object raises DataError as `file:line: reason`."""
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        yield lineno, rec


def nested_subset(records: list[dict], n: int, seed: int) -> list[dict]:
    """The first `n` of a seeded shuffle: the 50 of a 50-example run are the first 50 of the 100."""
    if n > len(records):
        raise DataError(f"asked for {n} training examples but the pool holds only {len(records)}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [records[i] for i in order[:n]]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_records(records: list[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def to_prompt_completion(record: dict) -> dict:
    """Split a chat example into TRL's conversational prompt/completion form.

    TRL then computes the loss on the completion only (the final assistant turn, end-of-turn
    token included) with any chat template, whether or not it has `{% generation %}` markers.
    """
    return {"prompt": record["messages"][:-1], "completion": record["messages"][-1:]}
