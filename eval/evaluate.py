"""Run a task's eval set through a backend; write generations.jsonl and scores.json.

Each generation record holds everything needed to recompute its scores (prompt, output,
reference), so `rescore()` reproduces scores.json from generations.jsonl alone.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from ftscale.atomic import write_json, write_jsonl
from ftscale.provenance import machine

from .backends import Backend, Request, Sampling
from .tasks import Task

TIMING = "timing.json"


def evaluate(task: Task, examples: list[dict], pool: list[dict], backend: Backend, sampling: Sampling,
             variant: str, out_dir: Path, few_shot_k: int = 3) -> dict:
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
    out_dir = Path(out_dir)
    write_jsonl(out_dir / "generations.jsonl", records)
    # what serving these requests took on this machine: the cost model prices local systems by it
    write_json(out_dir / TIMING, {"wall_time_s": wall_time_s, "requests": len(requests),
                                  "requests_per_s": len(requests) / wall_time_s if wall_time_s else None,
                                  "backend": backend.name, "machine": machine()})
    summary = summarise(task, records)
    write_json(out_dir / "scores.json", summary)
    return summary


def summarise(task: Task, records: list[dict]) -> dict:
    """Means of every metric over the examples; failed requests count as failures, not as absent."""
    scored = [r for r in records if r["scores"] is not None]
    n = len(records)
    metrics = {m.name: sum(r["scores"][m.name] for r in scored) / n if n else 0.0 for m in task.metrics}

    def median(key):
        values = [r[key] for r in scored if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "task": task.name, "n": n, "failed": n - len(scored), "metrics": metrics,
        "backend": records[0]["backend"] if records else None, "model": records[0]["model"] if records else None,
        "prompt_variant": records[0]["prompt_variant"] if records else None,
        "median_latency_s": median("latency_s"), "median_ttft_s": median("ttft_s"),
        "mean_output_tokens": statistics.fmean(r["output_tokens"] for r in scored) if scored else None,
        "mean_input_tokens": statistics.fmean(r["input_tokens"] for r in scored) if scored else None,
    }


def rescore(generations_path: str | Path, task: Task) -> dict:
    """Recompute scores from a generations file (no model involved)."""
    records = [json.loads(line) for line in open(generations_path, encoding="utf-8")]
    for r in records:
        if r["error"] is None:
            r["scores"] = task.score({"reference": r["reference"], "id": r["id"]}, r["output"])
    return summarise(task, records)
