"""Eval throughput: the same eval set through a vLLM server with concurrency vs the `hf`
backend one request at a time (the way a plain transformers loop evaluates)."""

from __future__ import annotations

import time
from pathlib import Path

from ftscale.atomic import write_json
from ftscale.cellrunner import sampling_of
from ftscale.chatdata import read_jsonl
from ftscale.eval.backends import Request, make_backend
from ftscale.experiment import task_for
from ftscale.rundir import adapter_dir

from .evaluate_on_vllm import FT, evaluate_on_vllm


def headline_means(task, scores: list[dict]) -> dict[str, float | None]:
    """Mean of each of the task's headline metrics over the examples it could score (None: none)."""
    out = {}
    for name in task.headline or tuple(m.name for m in task.metrics):
        values = [s[name] for s in scores if s.get(name) is not None]
        out[name] = sum(values) / len(values) if values else None
    return out


def run_throughput_benchmark(cfg, adapter: str | Path | None, num_prompts: int, concurrency: int,
                             out_dir: Path | None = None) -> dict:
    """Written to `out_dir` (default: <experiment dir>/throughput)."""
    adapter = adapter_dir(adapter) if adapter else None
    out_dir = out_dir or cfg.experiment_dir / "throughput"
    task = task_for(cfg)
    examples = read_jsonl(cfg.data.eval, "eval")[:num_prompts]
    requests = [Request(e["id"], e["messages"]) for e in examples]
    sampling = sampling_of(cfg)
    results = {}

    def timed(backend):
        start = time.perf_counter()
        gens = backend.generate(requests, sampling)
        wall = time.perf_counter() - start
        scores = [task.score(e, g.text) for e, g in zip(examples, gens) if g.error is None]
        return {"wall_s": wall, "requests_per_s": len(requests) / wall, "failed": sum(g.error is not None for g in gens),
                "output_tokens": sum(g.output_tokens for g in gens),
                "scores": headline_means(task, scores)}

    hf = make_backend("hf", model=cfg.model, adapter=str(adapter) if adapter else None, batch_size=1,
                      dtype=cfg.eval.precision)
    results["hf, batch 1"] = timed(hf)
    del hf
    with evaluate_on_vllm(cfg, out_dir / "vllm-throughput.log", {FT: adapter} if adapter else None) as vllm:
        results[f"vllm, concurrency {concurrency}"] = timed(vllm.answerer(cfg, concurrency, FT if adapter else None).make())
    if adapter:  # vLLM's LoRA kernels are slow on a CPU; the merged checkpoint is the same function
        with evaluate_on_vllm(cfg, out_dir / "vllm-throughput-merged.log", merged=adapter) as vllm:
            results[f"vllm merged, concurrency {concurrency}"] = timed(vllm.answerer(cfg, concurrency, label="vllm-merged").make())
    hf_wall = results["hf, batch 1"]["wall_s"]
    summary = {"model": cfg.model, "adapter": str(adapter) if adapter else None, "num_prompts": len(requests),
               "results": results,
               "speedup_over_hf_batch_1": {k: hf_wall / r["wall_s"] for k, r in results.items() if k != "hf, batch 1"}}
    write_json(out_dir / f"throughput-{'lora' if adapter else 'base'}.json", summary)
    return summary
