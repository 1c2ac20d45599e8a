"""`ftscale migrate shadow DIR --requests FILE`: before the cut-over, replay a batch of recent requests to
both the fine-tune (while it still answers) and the chosen local system, and re-check the verdict on them.

The shadow set is a second, later eval set: it is scored with the migration's own evaluators and tested on
its own (one confirmatory non-inferiority test of the chosen system against the fine-tune at the migration's
margin and level ALPHA), never pooled with the first. Each side's answers go through distill's cache
(appended per batch, fsync'd): a killed run resumes, and a failed request is counted and asked again by the
next run, never stored. The local side is a running `ftscale migrate serve` (`--local-url`, its key with
`--local-api-key-env`) or, by default, the chosen system (the verdict's, or `--system NAME --n N`)
started for the replay on loopback.

Written in DIR/shadow/<name>/: the two caches, `generations.jsonl` (per request: both answers and the
scores) and, last, `shadow.json`: the verdict with the hash of the requests, the answers and the cell.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path

from .apikey import pairing_hint
from .atomic import write_json, write_jsonl
from .chatdata import json_lines, sha256_file
from .data.distill import ask_cached, cache_key, load_cache
from .errors import DataError, FtscaleError
from .eval.backends import Request, Sampling, make_backend
from .eval.migration_verdict import ALPHA
from .eval.noninferiority import noninferiority
from .eval.tasks import get_task
from .migrate import MANIFEST
from .migrate_serve import choose, serving

MARKER = "migration.json"
RESULT = "shadow.json"


def read_requests(path: Path) -> list[dict]:
    """The replayed requests: chat JSONL; a final assistant turn (the answer the product got) is dropped."""
    out, seen = [], set()
    for lineno, rec in json_lines(path):
        messages = rec.get("messages") if isinstance(rec, dict) else None
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{path}:{lineno}: expected an object with a 'messages' list")
        if messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        key = json.dumps(messages, sort_keys=True)
        if key in seen:  # a repeated request is one item
            continue
        seen.add(key)
        out.append({"id": str(rec.get("id") or f"shadow-{lineno:05d}"), "messages": messages})
    if not out:
        raise DataError(f"{path}: no requests")
    return out


def _ask(backend, who: str, requests: list[dict], sampling: Sampling, cache_path: Path) -> tuple[dict, list]:
    cache = load_cache(cache_path)
    keys = {r["id"]: cache_key(who, "shadow", "", json.dumps(r["messages"], ensure_ascii=False)) for r in requests}
    todo = [(keys[r["id"]], Request(r["id"], r["messages"]), {"id": r["id"]}) for r in requests
            if keys[r["id"]] not in cache]
    errors = ask_cached(backend, todo, sampling, cache, cache_path, desc=f"shadow: {who}") if todo else []
    return {i: cache[k] for i, k in keys.items() if k in cache}, errors


def _scores(task, headline: str, requests: list[dict], ft: dict, local: dict) -> tuple[list, list, list[dict]]:
    """Per request both answered: the headline of the local answer and of the fine-tune's own, each scored by
    the migration's evaluators against the fine-tune's answer (unscorable items left out of both)."""
    a, b, records = [], [], []
    for r in requests:
        if r["id"] not in ft or r["id"] not in local:
            continue
        example = {"id": r["id"], "messages": r["messages"], "reference": {"captured": ft[r["id"]]["reply"]}}
        s_local, s_ft = task.score(example, local[r["id"]]["reply"]), task.score(example, ft[r["id"]]["reply"])
        records.append({"id": r["id"], "prompt": r["messages"], "fine_tune": ft[r["id"]]["reply"],
                        "local": local[r["id"]]["reply"], "scores": {"local": s_local, "fine_tune": s_ft}})
        if s_local.get(headline) is not None and s_ft.get(headline) is not None:
            a.append(float(s_local[headline]))
            b.append(float(s_ft[headline]))
    return a, b, records


def replay(out: Path, requests_path: Path, requests: list[dict], marker: dict, task, sampling: Sampling,
           ft_backend, ft_name: str, local_backend, local_name: str, cell: dict) -> dict:
    """Ask both sides every request (cached, resumable), score, test; shadow.json written last, and only when
    every request has both answers."""
    ft, ft_errors = _ask(ft_backend, ft_name, requests, sampling, out / "fine-tune.cache.jsonl")
    local, local_errors = _ask(local_backend, local_name, requests, sampling, out / "local.cache.jsonl")
    a, b, records = _scores(task, marker["headline"], requests, ft, local)
    write_jsonl(out / "generations.jsonl", records)
    result = {"name": out.name, "requests": str(requests_path), "requests_sha256": sha256_file(requests_path),
              "n_requests": len(requests), "n_items": len(a), "model": ft_name, "margin": marker["margin"],
              "headline": marker["headline"], "failed": {"fine_tune": len(ft_errors), "local": len(local_errors)},
              "errors": [f"{i}: {e}" for i, e in ft_errors + local_errors][:20], "answers_sha256": _answers_hash(records),
              **cell}
    if a:
        t = noninferiority([a], [b], marker["margin"], higher_is_better=_higher(task, marker["headline"]))
        result.update(diff=t.diff, low=t.low, high=t.high, p_value=t.p_value, method=t.method,
                      passes=t.passes(ALPHA), identical=sum(r["fine_tune"] == r["local"] for r in records))
    if not (ft_errors or local_errors):
        write_json(out / RESULT, result)  # last: the shadow set's completion record
    return result


def shadow(folder: str | Path, requests_path: str | Path, *, name: str | None = None, local_url: str | None = None,
           local_api_key_env: str | None = None, base_url: str | None = None, api_key_env: str | None = None,
           system: str | None = None, n: int | None = None, concurrency: int = 8, log=print) -> dict:
    """Replay, score and test (the module's docstring); returns what shadow.json records."""
    folder, requests_path = Path(folder), Path(requests_path)
    if not (folder / MARKER).is_file():
        raise FtscaleError(f"{folder}: not a migration folder (no {MARKER}): run `ftscale migrate plan` first")
    marker = json.loads((folder / MARKER).read_text())
    manifest = json.loads((folder / MANIFEST).read_text())
    chosen = choose(folder, system, n)
    out = folder / "shadow" / (name or requests_path.stem)
    requests = read_requests(requests_path)
    sampling = Sampling(temperature=marker.get("local_temperature") or 0.0,
                        max_new_tokens=manifest["sampling"].get("max_new_tokens") or 256)
    ft_backend = make_backend("openai", model=chosen.model_id, base_url=base_url, api_key_env=api_key_env,
                              concurrency=concurrency, progress=False)
    log(f"shadow check of {chosen.label} against {chosen.model_id} on {len(requests)} requests ({requests_path})")
    started = nullcontext() if local_url else serving(chosen, out / "vllm-server.log", random_key=True)
    with started as server:
        url, key = (local_url, None) if local_url else (server.base_url, server.api_key)
        local_backend = make_backend("openai", model=chosen.model_id, base_url=url, api_key_env=local_api_key_env,
                                     api_key=key, concurrency=concurrency, progress=False)
        result = replay(out, requests_path, requests, marker, get_task(str(folder / "task.yaml")), sampling,
                        ft_backend, chosen.model_id, local_backend, f"local:{chosen.system}:n{chosen.n}",
                        {"system": chosen.system, "n": chosen.n, "run_dir": str(chosen.run_dir)})
    failed = result["failed"]
    hint = pairing_hint(base_url, api_key_env)
    if hint and failed["fine_tune"] == len(requests) and all("AuthenticationError" in e for e in result["errors"]):
        raise FtscaleError(hint)
    if failed["fine_tune"] or failed["local"]:
        log(f"{failed['fine_tune']} fine-tune and {failed['local']} local requests failed (first: {result['errors'][0]}): "
            "not stored; run the same command again to ask them. No result is recorded until every request is answered")
    else:
        log(line(result))
    return result


def _higher(task, metric: str) -> bool:
    return next((m.higher_is_better for m in task.metrics if m.name == metric), True)


def _answers_hash(records: list[dict]) -> str:
    return hashlib.sha256(json.dumps([(r["id"], r["fine_tune"], r["local"]) for r in records]).encode()).hexdigest()


def line(r: dict) -> str:
    """The shadow set's verdict in one line."""
    head = f"shadow set {r['name']} ({r['n_items']} items, {r['requests']}): {r['system']} n={r['n']}"
    if not r.get("n_items"):
        return f"{head}: no item both answered and scorable"
    word = "YES, still matches" if r["passes"] else "NOT confirmed against"
    return (f"{head}: {word} {r['model']}: difference {r['diff']:+.3f} (95% CI {r['low']:+.3f} to {r['high']:+.3f}), "
            f"p = {r['p_value']:.2g} at margin {r['margin']}; {r['identical']} of {r['n_items']} answers identical")


def results(folder: Path) -> list[dict]:
    """Every finished shadow set of a migration folder, oldest first."""
    found = sorted((folder / "shadow").glob(f"*/{RESULT}"), key=lambda p: p.stat().st_mtime)
    return [json.loads(p.read_text()) for p in found]
