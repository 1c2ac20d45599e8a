"""Run a task's eval set through a backend; write generations.jsonl and scores.json.

Each generation record holds everything needed to recompute its scores (prompt, output,
reference), so `rescore()` reproduces scores.json from generations.jsonl alone.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from pathlib import Path

from ftscale.atomic import write_json, write_jsonl
from ftscale.provenance import machine

from .backends import Backend, Request, Sampling, make_judge_backend
from .latency import latency_of
from .task_types import Task

TIMING = "timing.json"
SCORES = "scores.json"
# an evaluation with failed requests writes this instead of scores.json, and no completion record
FAILED = "failed.json"


def evaluate(task: Task, examples: list[dict], pool: list[dict], backend: Backend, sampling: Sampling,
             variant: str, out_dir: Path, few_shot_k: int = 3) -> dict:
    """Generate and score; scores.json only when every request (and judge request) succeeded,
    failed.json with the errors otherwise."""
    out_dir = Path(out_dir)
    for old in (SCORES, FAILED):
        (out_dir / old).unlink(missing_ok=True)
    requests = [Request(ex["id"], task.build_messages(ex, variant, pool, few_shot_k, sampling.seed))
                for ex in examples]
    start = time.perf_counter()
    generations = backend.generate(requests, sampling)
    wall_time_s = time.perf_counter() - start
    records = []
    for ex, req, gen in zip(examples, requests, generations):
        records.append({
            "id": ex["id"], "prompt": req.messages, "output": gen.text, "reference": ex["reference"],
            "input_tokens": gen.input_tokens, "output_tokens": gen.output_tokens,
            "ttft_s": gen.ttft_s, "latency_s": gen.latency_s, "finish_reason": gen.finish_reason,
            "error": gen.error, "backend": backend.name, "model": backend.model, "prompt_variant": variant,
            "sampling": sampling.as_dict(), **gen.extra,
            "scores": task.score(ex, gen.text) if gen.error is None else None,
        })
    if task.judges:
        judge_pass(task, records)
    write_jsonl(out_dir / "generations.jsonl", records)
    # what serving these requests took on this machine: the cost model prices local systems by it
    write_json(out_dir / TIMING, {"wall_time_s": wall_time_s, "requests": len(requests),
                                  "requests_per_s": len(requests) / wall_time_s if wall_time_s else None,
                                  "backend": backend.name, "machine": machine()})
    summary = summarise(task, records)
    if failure_count(summary):
        write_json(out_dir / FAILED, failure_report(summary, records))
    else:
        write_json(out_dir / SCORES, summary)
    return summary


def failure_count(summary: dict) -> int:
    return summary["failed"] + summary.get("judge_failed", 0)


def failure_report(summary: dict, records: list[dict]) -> dict:
    """How many requests failed and their most frequent errors, for the summary and the console."""
    errors = Counter(r["error"] for r in records if r["error"] is not None)
    errors.update(f"judge: {e}" for r in records for e in (r.get("judge_errors") or {}).values())
    return {"n": summary["n"], "failed": summary["failed"], "judge_failed": summary.get("judge_failed", 0),
            "errors": [{"error": e, "count": c} for e, c in errors.most_common(5)]}


def judge_pass(task: Task, records: list[dict]) -> None:
    """Ask each judge evaluator's model about every answered example (greedy); keep its reply beside the scores."""
    answered = [r for r in records if r["error"] is None]
    for evaluator, params, prefix in task.judges:
        backend = make_judge_backend(params.judge)
        prompts = [Request(r["id"], evaluator.judge.messages(params, _user_text(r["prompt"]), r["output"], r["reference"]))
                   for r in answered]
        replies = backend.generate(prompts, Sampling(temperature=0.0, max_new_tokens=params.max_new_tokens))
        for r, reply in zip(answered, replies):
            r.setdefault("judgements", {})[prefix] = reply.text if reply.error is None else None
            if reply.error is not None:  # the judge could not be asked: a failure, not an unparsable reply
                r.setdefault("judge_errors", {})[prefix] = reply.error
            r["scores"] |= evaluator.judge.scores(r["judgements"][prefix], params, prefix)


def _user_text(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def summarise(task: Task, records: list[dict]) -> dict:
    """Means of every metric over the examples. A failed request counts as a failure (0), not as
    absent; an example a metric cannot score (its reference lacks a field, a judge's reply did not
    parse) is left out of that metric's mean and counted in `not_scorable`. `latency`: eval/latency.py's, the
    one definition every report reads."""
    scored = [r for r in records if r["scores"] is not None]
    n = len(records)
    metrics, not_scorable = {}, {}
    for m in task.metrics:
        values = [r["scores"].get(m.name) for r in scored]
        missing = sum(v is None for v in values)
        if missing:
            not_scorable[m.name] = missing
        metrics[m.name] = sum(v for v in values if v is not None) / (n - missing) if n - missing else None
    return {
        "task": task.name, "n": n, "failed": n - len(scored), "metrics": metrics,
        "judge_failed": sum(bool(r.get("judge_errors")) for r in records),
        **({"not_scorable": not_scorable} if not_scorable else {}),
        "backend": records[0]["backend"] if records else None, "model": records[0]["model"] if records else None,
        "prompt_variant": records[0]["prompt_variant"] if records else None,
        "sampling": records[0]["sampling"] if records else None,
        "latency": latency_of(records).as_dict(),
        "mean_output_tokens": statistics.fmean(r["output_tokens"] for r in scored) if scored else None,
        "mean_input_tokens": statistics.fmean(r["input_tokens"] for r in scored) if scored else None,
        **(task.aggregates(records) if task.aggregates else {}),
    }


def rescore(generations_path: str | Path, task: Task) -> dict:
    """Recompute scores from a generations file (no model involved)."""
    records = [json.loads(line) for line in open(generations_path, encoding="utf-8")]
    for r in records:
        if r["error"] is None:
            r["scores"] = task.score({"reference": r["reference"], "id": r["id"]}, r["output"])
            for evaluator, params, prefix in task.judges:  # the judge's stored reply, parsed again
                r["scores"] |= evaluator.judge.scores(r.get("judgements", {}).get(prefix), params, prefix)
    return summarise(task, records)
