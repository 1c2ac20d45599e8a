"""The eval set from the traffic a product really sends: `ftscale migrate capture --from stored|FILE`.

- `--from stored`: OpenAI's stored chat completions (requests made with `store=true`) of the fine-tune,
  filtered by model and `--metadata KEY=VALUE`: every page of `GET /v1/chat/completions`, and for each
  completion every page of its request messages (`GET /v1/chat/completions/{id}/messages`). OpenAI keeps
  stored completions for a limited time (30 days unless your retention settings say otherwise): capture
  them while they are there. Each completion fetched is appended to `capture/stored.cache.jsonl` (flushed
  and fsync'd) as soon as its messages are in, so a killed run resumes where it stopped.
- `--from FILE`: a chat JSONL in the canonical format whose last assistant message is the fine-tune's answer
  (your own request log); a line may carry `id`, `finish_reason` and `temperature`.

The same rules as a re-asked capture: an answer that failed, or that has no text (a tool call), is never
an answer; a prompt sent several times is one eval item (repeated items are not independent; the first
answer is kept and the repeats counted); an answer cut off at `finish_reason=length` is kept and flagged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import openai
from tqdm.auto import tqdm

from .chatdata import json_lines, parse_line
from .data.distill import append_records, load_cache
from .errors import DataError, FtscaleError
from .openai_org import refused

STORED_CACHE = "capture/stored.cache.jsonl"


def _text(content) -> str | None:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(x for x in parts if x) or None
    return None


def _message(m) -> dict:
    return {"role": m.role, "content": _text(m.content) or ""}


def stored(c: openai.OpenAI, model_id: str, metadata: dict[str, str], out: Path, progress: bool = True,
           log=print) -> list[dict]:
    """The fine-tune's stored completions as traffic records (see `records`), fetched or resumed."""
    cache_path = out / STORED_CACHE
    cache = load_cache(cache_path)
    found = []
    bar = tqdm(desc=f"stored completions of {model_id}", unit="completion", disable=not progress)
    try:
        for comp in c.chat.completions.list(model=model_id, metadata=metadata or openai.omit, limit=100):
            found.append(comp.id)
            bar.update(1)
            if comp.id in cache:
                continue
            choice = comp.choices[0] if comp.choices else None
            messages = [_message(m) for m in c.chat.completions.messages.list(comp.id, limit=100)]
            usage = comp.usage
            rec = {"key": comp.id, "id": comp.id, "prompt": messages,
                   "reply": _text(choice.message.content) if choice else None,
                   "finish_reason": choice.finish_reason if choice else None,
                   "input_tokens": usage.prompt_tokens if usage else None,
                   "output_tokens": usage.completion_tokens if usage else None,
                   "created": dt.datetime.fromtimestamp(comp.created, dt.timezone.utc).isoformat(timespec="seconds"),
                   "metadata": dict(comp.metadata or {})}
            append_records(cache_path, [rec])
            cache[comp.id] = rec
    except openai.APIStatusError as e:
        raise FtscaleError(f"{refused(e, f'the stored completions of {model_id}', c)}; the {len(cache)} fetched "
                           f"so far are kept in {cache_path}: run the same command again to continue") from None
    finally:
        bar.close()
    if not found:
        raise FtscaleError(f"no stored chat completions of {model_id}" + (f" with metadata {metadata}" if metadata else "")
                           + ": only requests made with store=true are stored, and only for a limited time; give "
                             "your own request log with --from FILE, or re-ask prompts (the default)")
    log(f"{len(found)} stored completions of {model_id} listed ({len(found) - sum(k in cache for k in found)} "
        "not fetched)")
    return [cache[k] for k in found if k in cache]


def from_file(path: Path) -> list[dict]:
    """Traffic records from a chat JSONL whose last assistant message is the fine-tune's answer."""
    out = []
    for lineno, rec in json_lines(path):
        where = f"{path}:{lineno}"
        rec = parse_line(json.dumps(rec), where, "train")  # the answer is the final assistant turn
        *prompt, answer = rec["messages"]
        temperature = rec.get("temperature")
        if temperature is not None and not isinstance(temperature, (int, float)):
            raise DataError(f"{where}: 'temperature' must be a number (got {temperature!r})")
        out.append({"id": str(rec.get("id") or f"traffic-{lineno:05d}"), "prompt": prompt, "reply": answer["content"],
                    "finish_reason": rec.get("finish_reason"), "temperature": temperature,
                    "input_tokens": None, "output_tokens": None, "created": None})
    if not out:
        raise DataError(f"{path}: no requests")
    return out


def prompt_key(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def records(raw: list[dict]) -> tuple[list[dict], dict[str, dict], dict]:
    """(eval examples, the fine-tune's answer by example id, counts): one item per distinct prompt, its first
    answer kept; requests without a text answer left out; answers cut off at the length limit flagged."""
    examples, answers, seen = [], {}, {}
    counts = {"requests": len(raw), "duplicates": 0, "no_answer": 0, "cut_off": 0, "temperatures": []}
    for r in raw:
        if not r.get("reply"):
            counts["no_answer"] += 1
            continue
        key = prompt_key(r["prompt"])
        if key in seen:
            counts["duplicates"] += 1
            continue
        seen[key] = r["id"]
        if r.get("finish_reason") == "length":
            counts["cut_off"] += 1
        if r.get("temperature") is not None:
            counts["temperatures"].append(float(r["temperature"]))
        examples.append({"id": r["id"], "messages": r["prompt"], "reference": {}})
        answers[r["id"]] = {"reply": r["reply"], "finish_reason": r.get("finish_reason"),
                            "input_tokens": r.get("input_tokens"), "output_tokens": r.get("output_tokens"),
                            "ttft_s": None, "latency_s": None, "created": r.get("created")}
    counts["temperatures"] = sorted(set(counts["temperatures"]))
    if not examples:
        raise FtscaleError("the traffic holds no request with a text answer")
    return examples, answers, counts
