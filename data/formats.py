"""The training-data formats people already have, converted once to the canonical chat JSONL.

    openai_chat        {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}   (canonical)
    alpaca             {"instruction": ..., "input": ..., "output": ..., "system": ...}   (input, system optional)
    sharegpt           {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}
    prompt_completion  {"prompt": ..., "completion": ...}   (strings, or TRL's conversational message lists)

One pure function per format turns one record into a chat record, a whole conversation kept whole;
training then puts the loss on its final assistant turn, as for any chat record. A file in another
format is converted to chat JSONL beside the other written task data, and everything downstream
(training, subsets, hashes) reads that file. Errors name the source's `file:line`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Literal

from ftscale.atomic import write_text
from ftscale.chatdata import ROLES, check_record, load_line, text_lines
from ftscale.errors import DataError

CANONICAL = "openai_chat"
Format = Literal["openai_chat", "alpaca", "sharegpt", "prompt_completion"]

# ShareGPT's speaker names (`from`) and the chat roles they are
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system"}
# turns of tool-calling conversations: refused by name, not as unknown (no tool turns are trained)
TOOL_ROLES = ("tool", "function", "function_call", "function_response", "observation", "tool_call", "tool_response")
_JSON_TYPES = {str: "a string", bool: "true/false", int: "a number", float: "a number", list: "a list",
               dict: "an object", type(None): "null"}


def _prefixed(at: str, reason: str) -> str:
    return f"{at}: {reason}" if at else reason


def _text(obj: dict, key: str, at: str = "") -> str:
    """A required, non-empty text field."""
    if key not in obj:
        raise ValueError(_prefixed(at, f"missing field {key!r}"))
    value = obj[key]
    if not isinstance(value, str):
        raise ValueError(_prefixed(at, f"field {key!r} must be a string (got {_JSON_TYPES.get(type(value), 'a value')})"))
    if not value.strip():
        raise ValueError(_prefixed(at, f"field {key!r} is empty"))
    return value


def _optional_text(obj: dict, key: str) -> str | None:
    """An optional text field: absent, null or blank is None."""
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _text(obj, key)  # a value that is not text: refused, naming its type


def _tool_turn(role, at: str) -> ValueError:
    return ValueError(f"{at}: {role!r} is a tool/function turn, which is not supported "
                      "(only system, user and assistant turns are trained)")


def from_openai_chat(rec: dict) -> dict:
    """The canonical format: the record as it is (checked like any chat record)."""
    return rec


def from_alpaca(rec: dict) -> dict:
    """instruction (+ "\\n\\n" + input, when there is one) -> user; output -> assistant; system, if any, first."""
    instruction, extra, system = _text(rec, "instruction"), _optional_text(rec, "input"), _optional_text(rec, "system")
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction},
                 {"role": "assistant", "content": _text(rec, "output")}]
    return {"messages": messages}


def _sharegpt_role(turn: dict, at: str) -> str:
    if "from" not in turn:
        raise ValueError(f"{at}: missing field 'from'")
    speaker = turn["from"]
    if speaker in TOOL_ROLES:
        raise _tool_turn(speaker, f"{at}.from")
    if speaker not in SHAREGPT_ROLES:
        raise ValueError(f"{at}.from: unknown role {speaker!r} (sharegpt roles: {', '.join(SHAREGPT_ROLES)})")
    return SHAREGPT_ROLES[speaker]


def from_sharegpt(rec: dict) -> dict:
    """Every turn of `conversations` in order (`from` -> role, `value` -> content); a top-level `system`, if
    any, first. The conversation ends with the assistant's answer, the turn the loss is on."""
    turns = rec.get("conversations")
    if "conversations" not in rec:
        raise ValueError("missing field 'conversations'")
    if not isinstance(turns, list) or not turns:
        raise ValueError("field 'conversations' must be a non-empty list of turns")
    system = _optional_text(rec, "system")
    messages = [{"role": "system", "content": system}] if system else []
    for i, turn in enumerate(turns):
        at = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise ValueError(f"{at}: a turn must be an object with 'from' and 'value'")
        messages.append({"role": _sharegpt_role(turn, at), "content": _text(turn, "value", at)})
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"conversations[{len(turns) - 1}]: the last turn must be the assistant's answer "
                         f"(from gpt), not from {turns[-1]['from']!r}")
    return {"messages": messages}


def _message_list(value: list, key: str) -> list[dict]:
    """A conversational prompt or completion (TRL): a non-empty list of {role, content} messages."""
    if not value:
        raise ValueError(f"field {key!r} is an empty list")
    out = []
    for i, m in enumerate(value):
        at = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise ValueError(f"{at}: a message must be an object with 'role' and 'content'")
        role = _text(m, "role", at)
        if role in TOOL_ROLES:
            raise _tool_turn(role, f"{at}.role")
        if role not in ROLES:
            raise ValueError(f"{at}.role: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        out.append({"role": role, "content": _text(m, "content", at)})
    return out


def _part(rec: dict, key: str) -> list[dict]:
    """`prompt` or `completion`: a string (the user's message, the assistant's answer) or a list of messages."""
    if isinstance(rec.get(key), list):
        return _message_list(rec[key], key)
    return [{"role": "user" if key == "prompt" else "assistant", "content": _text(rec, key)}]


def from_prompt_completion(rec: dict) -> dict:
    """prompt -> the conversation so far; completion -> the assistant's answer (one message: the loss is
    on the final assistant turn alone)."""
    prompt, completion = _part(rec, "prompt"), _part(rec, "completion")
    if len(completion) != 1 or completion[0]["role"] != "assistant":
        raise ValueError(f"field 'completion' must be one assistant message (got "
                         f"{', '.join(m['role'] for m in completion)}): the loss is on the final assistant turn")
    return {"messages": prompt + completion}


CONVERTERS: dict[str, Callable[[dict], dict]] = {
    "openai_chat": from_openai_chat, "alpaca": from_alpaca, "sharegpt": from_sharegpt,
    "prompt_completion": from_prompt_completion}


def convert_record(fmt: str, rec, where: str) -> dict:
    """One record of format `fmt` as a checked chat training record; an error reads `where: reason`."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object")
    try:
        out = CONVERTERS[fmt](rec)
    except ValueError as e:
        raise DataError(f"{where}: {fmt}: {e}") from None
    return check_record(out, where, "train")


def converted_path(source: Path, fmt: str, out_dir: Path) -> Path:
    """Where a training file the config names in another format is converted to: one file per source
    (named by its resolved path), so two sources never share a converted file."""
    tag = hashlib.sha256(str(Path(source).resolve()).encode()).hexdigest()[:12]
    return Path(out_dir) / fmt / f"{Path(source).stem}-{tag}.jsonl"


def write_once(path: Path, records: list[dict]) -> Path:
    """`records` as JSONL at `path`, written (atomically) only when that changes the file: loading the same
    source again rewrites nothing, a changed source rewrites it."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path = Path(path)
    if path.is_file() and path.read_bytes() == text.encode("utf-8"):
        return path
    return write_text(path, text)


def convert_file(source: Path, fmt: str, out: Path) -> Path:
    """The training file `source`, records of format `fmt`, converted to chat JSONL at `out`."""
    if not Path(source).is_file():
        raise DataError(f"{source}: file not found")
    records = [convert_record(fmt, load_line(line, f"{source}:{n}"), f"{source}:{n}") for n, line in text_lines(source)]
    if not records:
        raise DataError(f"{source}: no examples")
    return write_once(out, records)
