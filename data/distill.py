"""`ftscale distill`: a persona's training set, distilled from a stronger teacher model.

The teacher is asked each customer query with the persona's `teacher_prompt` as its system
message; the training file then pairs the query with the teacher's reply under the persona's
(shorter) `system_prompt`, in OpenAI chat fine-tuning JSONL.

Teachers (the same names as judges, plus a base URL):

    hf:<model ref>                 in-process transformers (a hub id, a directory, a configs/models name)
    openai:<model>                 OpenAI; or whatever OpenAI-compatible server OPENAI_BASE_URL names
    openai:<model>@<base_url>      any OpenAI-compatible server, e.g. a local vLLM one:
                                   openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1
    scripted:rude, scripted:cheerful   an OFFLINE STAND-IN for a strong teacher: replies written from
                                   each generated query's slots (data/scripted_teacher.py)

Cost: before anything is asked, the teacher's cost is estimated for the queries not yet cached.
An `hf:` teacher, or an `openai:` one whose endpoint is on this machine or a private network
(localhost, 127.0.0.0/8, 10/8, 172.16/12, 192.168/16, ::1), is local: no per-token cost. Otherwise the
model is priced from `configs/prices.yaml`: input tokens counted with tiktoken (the messages as the
chat API bills them; characters / 4 where tiktoken has no table), output tokens estimated as
0.6 x max_new_tokens per reply (teachers seldom fill the limit; the estimate is stated as such).
Above $1, or when the model has no price in the table, the run asks for confirmation unless
`yes` is given.

Cache (resumable): every answer is appended to a JSONL file as soon as its batch returns, flushed
and fsync'd, so a killed run loses at most the batch in flight; running again asks only what is not
there. Several processes may share one cache (`ftscale migrate capture` uses it too): each batch is
appended under a lock (ftscale/claims.py `appending`) that also cuts a line a killed writer tore, so
no process's line is cut or run into another's. One line per answer:

    {"key": sha256 hex, "teacher": ..., "persona": ..., "query_id": ..., "query": ...,
     "reply": ..., "finish_reason": "stop"|"length", "input_tokens": ..., "output_tokens": ...,
     "ttft_s": ..., "latency_s": ..., "sampling": {...}, "time": unix seconds}

`key` is the sha256 of the JSON list [teacher, persona name, persona teacher_prompt, query text]:
the same query for the same persona and teacher is never asked twice, whatever its id; a changed
teacher prompt asks again. Sampling settings (temperature, max_new_tokens, seed) are recorded but
are not part of the key: changing them does not re-ask what is cached. One cache can hold several
personas and teachers. Failed requests are not cached (they are asked again next time).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import re
import sys
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from tqdm.auto import tqdm

from ftscale.atomic import atomic_path, write_json
from ftscale.chatdata import json_lines, sha256_file
from ftscale.claims import appending
from ftscale.datacheck import check_file, count_tokens, encoding_for
from ftscale.errors import FtscaleError, run_command
from ftscale.flags import Parser
from ftscale.eval.backends import Backend, Request, Sampling, make_judge_backend
from ftscale.modelspec import parse_spec
from ftscale.prices import age, load_prices

from . import scripted_teacher
from .personas import load_persona

OUTPUT_FRACTION = 0.6  # estimated reply length as a share of max_new_tokens (cost estimate only)
CONFIRM_ABOVE_USD = 1.0
BATCH_SIZE = 16


# --- teachers ----------------------------------------------------------------------------------------

def parse_teacher(spec: str) -> tuple[str, str, str | None]:
    """(backend kind, model, base_url) of a teacher spec; see the module's docstring."""
    if spec.startswith(scripted_teacher.PREFIX):
        return "scripted", scripted_teacher.persona_of(spec), None
    try:
        return parse_spec(spec)
    except ValueError as e:
        raise FtscaleError(f"teacher {e}") from None


def make_teacher(spec: str) -> Backend:
    try:
        return make_judge_backend(spec)
    except ValueError as e:
        raise FtscaleError(f"teacher {e}") from None


def is_local(kind: str, base_url: str | None) -> bool:
    """An in-process teacher, or an endpoint on this machine or a private network: no per-token cost."""
    if kind in ("hf", "scripted"):
        return True
    if not base_url:
        return False
    host = urlparse(base_url).hostname or ""
    if host in ("localhost", "0.0.0.0") or host.endswith(".localhost"):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return addr.is_loopback or addr.is_private


# --- personas, queries, messages -----------------------------------------------------------------------

def _field(persona, key: str) -> str:
    value = persona.get(key) if isinstance(persona, dict) else getattr(persona, key, None)
    if not isinstance(value, str):
        raise FtscaleError(f"persona: {key} must be a string, got {value!r}")
    return value


def cache_key(teacher: str, persona_name: str, teacher_prompt: str, query: str) -> str:
    return hashlib.sha256(json.dumps([teacher, persona_name, teacher_prompt, query],
                                     ensure_ascii=False).encode("utf-8")).hexdigest()


def _system(content: str) -> list[dict]:
    return [{"role": "system", "content": content}] if content.strip() else []


def teacher_messages(teacher_prompt: str, query: str) -> list[dict]:
    return _system(teacher_prompt) + [{"role": "user", "content": query}]


# --- the cost estimate -------------------------------------------------------------------------------

def estimate_cost(teacher: str, teacher_prompt: str, queries: list[str], max_new_tokens: int,
                  prices_path: str | Path = "configs/prices.yaml") -> dict:
    """`{"local": bool, "input_tokens", "output_tokens", "usd": float|None, "text": one line}` for
    asking `queries`. usd is None for a local teacher (0 cost) or a model without a price."""
    kind, model, base_url = parse_teacher(teacher)
    n = len(queries)
    output_tokens = round(n * max_new_tokens * OUTPUT_FRACTION)
    if is_local(kind, base_url):
        return {"local": True, "input_tokens": None, "output_tokens": output_tokens, "usd": 0.0,
                "text": f"teacher cost: local: no per-token cost ({n} queries to ask)"}
    try:
        enc, _, _ = encoding_for(model)
        input_tokens = sum(count_tokens(teacher_messages(teacher_prompt, q), enc) for q in queries)
        counted = "tiktoken"
    except FtscaleError:
        input_tokens = sum(len(teacher_prompt) + len(q) for q in queries) // 4
        counted = "characters / 4"
    table = load_prices(prices_path)
    prices = table.inference(model)
    tokens = (f"{n} queries to ask: ~{input_tokens} input tokens ({counted}), ~{output_tokens} output tokens "
              f"({OUTPUT_FRACTION} x max_new_tokens={max_new_tokens} per reply)")
    if prices is None:
        return {"local": False, "input_tokens": input_tokens, "output_tokens": output_tokens, "usd": None,
                "text": f"teacher cost: unknown: {model!r} has no price in {prices_path}; {tokens}"}
    usd = prices.per_request(input_tokens, output_tokens)
    return {"local": False, "input_tokens": input_tokens, "output_tokens": output_tokens, "usd": usd,
            "text": f"teacher cost: estimated ${usd:.2f} at {model} prices ({age(table.checked)}, {prices_path}; "
                    f"your own: --prices FILE); {tokens}"}


def _ask_yes(question: str) -> bool:
    if not sys.stdin or not sys.stdin.isatty():
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


# --- the cache -------------------------------------------------------------------------------------------

def load_cache(path: Path) -> dict[str, dict]:
    """key -> record. A torn last line (a run killed while writing) is cut off; any other bad line
    is an error naming file:line."""
    if not path.is_file():
        return {}
    # under the appenders' lock: a line another process is writing is not mistaken for a torn one
    with appending(path) as f:
        f.seek(0)
        data = f.read()
    out = {}
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[rec["key"]] = rec
        except (json.JSONDecodeError, KeyError, TypeError):
            raise FtscaleError(f"{path}:{lineno}: not a distillation cache record; fix or remove the line") from None
    return out


def append_records(path: Path, records: list[dict]) -> None:
    """One batch's lines, written at once under the lock other processes appending to the cache take."""
    if records:
        with appending(path) as f:
            f.write("".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records).encode("utf-8"))


# --- distillation --------------------------------------------------------------------------------------------

def distill(teacher: str, persona, queries: list[dict], n: int, out_path: Path, cache_path: Path,
            max_new_tokens: int = 200, temperature: float = 0.7, seed: int = 0, yes: bool = False,
            log: Callable[[str], None] = print, *, backend: Backend | None = None, batch_size: int = BATCH_SIZE,
            prices_path: str | Path = "configs/prices.yaml", confirm: Callable[[str], bool] | None = None,
            progress: bool = True) -> Path:
    """Ask the teacher the first `n` queries (dicts with `id` and `query`) as the persona, cache every
    answer, and write the training file `out_path` (system: the persona's system_prompt, user: the
    query, assistant: the teacher's reply), checked like `ftscale data check`.

    `backend`: an already built teacher backend (otherwise made from `teacher`, which also names the
    cache entries and prices the run). `confirm(question) -> bool` replaces the interactive question.
    Returns `out_path`.
    """
    out_path, cache_path = Path(out_path), Path(cache_path)
    name, teacher_prompt, system_prompt = (_field(persona, k) for k in ("name", "teacher_prompt", "system_prompt"))
    kind, writes, _ = parse_teacher(teacher)  # a bad name fails before anything else
    if kind == "scripted" and writes != name:
        raise FtscaleError(f"teacher {teacher!r} writes the {writes!r} persona, not {name!r}: "
                           f"use --persona {writes} or --teacher {scripted_teacher.PREFIX}{name}")
    if n < 1:
        raise FtscaleError(f"n must be at least 1, got {n}")
    if n > len(queries):
        raise FtscaleError(f"asked for {n} replies but only {len(queries)} queries were given")
    chosen = queries[:n]
    for i, q in enumerate(chosen):
        if not isinstance(q, dict) or not isinstance(q.get("query"), str) or not q["query"].strip():
            raise FtscaleError(f"query {i}: expected a dict with a non-empty 'query' string, got {q!r}")
    keys = [cache_key(teacher, name, teacher_prompt, q["query"]) for q in chosen]
    cache = load_cache(cache_path)
    todo: dict[str, dict] = {}  # key -> query, first occurrence (duplicate texts are asked once)
    for key, q in zip(keys, chosen):
        if key not in cache and key not in todo:
            todo[key] = q
    log(f"distill {name!r} from {teacher}: {n} queries, {n - sum(k in todo for k in keys)} answered in "
        f"{cache_path}, {len(todo)} to ask")

    if todo:
        estimate = estimate_cost(teacher, teacher_prompt, [q["query"] for q in todo.values()], max_new_tokens,
                                 prices_path)
        log(estimate["text"])
        usd = estimate["usd"]
        if not yes and (usd is None or usd > CONFIRM_ABOVE_USD):
            question = ("the cost is unknown; continue?" if usd is None else f"spend about ${usd:.2f}?")
            if not (confirm or _ask_yes)(question):
                raise FtscaleError(f"not confirmed ({question}); nothing was asked. Pass --yes to go ahead")
        _ask_teacher(teacher, backend, name, teacher_prompt, todo, cache, cache_path, keys,
                     Sampling(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed), batch_size, progress)

    _write_training_file(out_path, [(q, cache[k]) for k, q in zip(keys, chosen)], system_prompt, log)
    note = scripted_teacher.STAND_IN if kind == "scripted" else ""
    written = len(out_path.read_text(encoding="utf-8").splitlines())  # empty replies are left out
    write_json(source_path(out_path), {"teacher": teacher, "persona": name, "examples": written,
                                       "sha256": sha256_file(out_path), "note": note})
    return out_path


def source_path(training_file: Path) -> Path:
    """Beside a distilled training file: which teacher wrote it (and the hash of the file it describes)."""
    return Path(training_file).with_suffix(".source.json")


def training_source(training_file: str | Path) -> str | None:
    """One sentence naming the teacher of a distilled training file, or None when it has no record of
    one or the file changed since (the record names the file's hash)."""
    path = source_path(training_file)
    if not path.is_file() or not Path(training_file).is_file():
        return None
    src = json.loads(path.read_text())
    if src.get("sha256") != sha256_file(training_file):
        return None
    return (f"Training data: `{training_file}`, {src['examples']} replies distilled from `{src['teacher']}` in the "
            f"`{src['persona']}` persona." + (f" {src['note']}" if src.get("note") else ""))


def _ask_teacher(teacher, backend, name, teacher_prompt, todo, cache, cache_path, keys, sampling, batch_size,
                 progress) -> None:
    if backend is None and teacher.startswith(scripted_teacher.PREFIX):  # it reads each query's slots, by id
        backend = scripted_teacher.ScriptedTeacher(teacher, {str(q.get("id", key[:12])): q for key, q in todo.items()})
    backend = backend or make_teacher(teacher)
    items = [(key, Request(id=str(q.get("id", key[:12])), messages=teacher_messages(teacher_prompt, q["query"])),
              {"teacher": teacher, "persona": name, "query_id": q.get("id"), "query": q["query"]})
             for key, q in todo.items()]

    def stopped(reason: str) -> FtscaleError:
        answered = sum(k in cache for k in keys)
        return FtscaleError(f"the teacher {teacher} failed: {reason}. {answered} of {len(keys)} answered (saved in "
                            f"{cache_path}); run the same command again to continue")

    try:
        errors = ask_cached(backend, items, sampling, cache, cache_path, batch_size, progress,
                            f"distilling ({teacher})", stop_on_error=True)
    except RuntimeError as e:
        raise stopped(str(e)) from e
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise stopped(f"query {errors[0][0]!r}: {errors[0][1]}{more}")


def ask_cached(backend: Backend, items: list[tuple[str, Request, dict]], sampling: Sampling, cache: dict[str, dict],
               cache_path: Path, batch_size: int = BATCH_SIZE, progress: bool = True, desc: str = "asking",
               stop_on_error: bool = False) -> list[tuple[str, str]]:
    """Ask `items` (cache key, request, fields kept in its record) batch by batch; append every answer
    to the cache file as its batch returns (flushed, fsync'd) and to `cache`. A failed request (the
    backend retries first) is never cached: it is returned as (request id, error) and asked again by
    the next run. `stop_on_error`: stop after the first batch with a failure. A backend that raises
    or miscounts raises RuntimeError; what was answered before is already saved."""
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(items), desc=desc, unit="query", disable=not progress)
    errors: list[tuple[str, str]] = []
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            try:
                gens = backend.generate([req for _, req, _ in batch], sampling)
            except Exception as e:  # noqa: BLE001 - what was answered is already saved
                raise RuntimeError(f"{type(e).__name__}: {e}") from e
            if len(gens) != len(batch):
                raise RuntimeError(f"{len(gens)} answers for {len(batch)} requests")
            good = []
            for (key, req, fields), g in zip(batch, gens):
                if g.error or g.finish_reason == "error":
                    errors.append((req.id, g.error or "failed"))
                    continue
                good.append({"key": key, **fields, "reply": g.text, "finish_reason": g.finish_reason,
                             "input_tokens": g.input_tokens, "output_tokens": g.output_tokens,
                             "ttft_s": None if g.ttft_s is None else round(g.ttft_s, 4),
                             "latency_s": round(g.latency_s, 4), "sampling": sampling.as_dict(),
                             "time": round(time.time(), 3)})
            append_records(cache_path, good)
            for rec in good:
                cache[rec["key"]] = rec
            bar.update(len(good))
            if errors and stop_on_error:
                break
    finally:
        bar.close()
    return errors


def _write_training_file(out_path: Path, answered: list[tuple[dict, dict]], system_prompt: str, log) -> Path:
    lines, empty, cut = [], 0, 0
    for q, rec in answered:
        reply = (rec.get("reply") or "").strip()
        if not reply:
            empty += 1
            continue
        cut += rec.get("finish_reason") == "length"
        lines.append({"messages": _system(system_prompt) + [{"role": "user", "content": q["query"]},
                                                            {"role": "assistant", "content": reply}]})
    if not lines:
        raise FtscaleError(f"every one of the {len(answered)} replies was empty; nothing to train on")
    with atomic_path(out_path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for rec in lines:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        report = check_file(tmp, min_examples=None)  # checked before it replaces anything
        if not report.ok:
            raise FtscaleError("the distilled training file failed its check:\n"
                               + report.format().replace(str(tmp), str(out_path)))
    log(f"wrote {out_path}: {len(lines)} examples"
        + (f"; skipped {empty} empty replies" if empty else "")
        + (f"; {cut} replies reached max_new_tokens (kept, cut short)" if cut else ""))
    return out_path


# --- command line --------------------------------------------------------------------------------------------

def _load_queries(path: str) -> list[dict]:
    out = []
    for lineno, rec in json_lines(path):
        if not isinstance(rec.get("query"), str):
            raise FtscaleError(f"{path}:{lineno}: expected an object with a 'query' string")
        out.append(rec)
    return out


def build_parser() -> Parser:
    p = Parser(prog="ftscale distill", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True,
                   help="hf:<model>, openai:<model>, openai:<model>@<base_url> (a local vLLM server), or "
                        "scripted:rude / scripted:cheerful (an offline stand-in for a strong teacher)")
    p.add_argument("--persona", default="rude", help="a persona in configs/personas/, or a path to one (default: rude)")
    p.add_argument("--queries", default="data/tone/queries-train.jsonl",
                   help="JSONL of customer queries: {\"id\", \"query\", ...} per line (default: the tone train pool)")
    p.add_argument("-n", "--n", type=int, required=True, help="distil the first N queries")
    p.add_argument("--output", type=Path, hidden=("--out",),
                   help="the training JSONL to write (default: data/tone/<persona>-<teacher>.jsonl)")
    p.add_argument("--cache", type=Path, help="the answers cache (default: <output>.cache.jsonl)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="requests per teacher call (the cache is written after each)")
    p.add_argument("--prices", default="configs/prices.yaml", metavar="FILE",
                   help="your own price table, a copy of configs/prices.yaml (default: that file)")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask before spending more than $1")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        persona = load_persona(args.persona)
        if args.output is None:
            args.output = Path("data/tone") / (f"{persona.name}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", args.teacher) + ".jsonl")
        cache = args.cache or args.output.with_name(args.output.name.removesuffix(".jsonl") + ".cache.jsonl")
        distill(args.teacher, persona, _load_queries(args.queries), args.n, args.output, cache,
                max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed, yes=args.yes,
                batch_size=args.batch_size, prices_path=args.prices)
        return 0

    return run_command(run, "interrupted: the answers so far are in the cache; run the same command again to continue")


if __name__ == "__main__":
    sys.exit(main())
