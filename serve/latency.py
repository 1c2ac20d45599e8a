"""Latency benchmark of base, LoRA and merged models on vLLM, with vLLM's definitions.

Per request, as in vLLM's serving benchmark (benchmarks/serve.py):
  TTFT  time from sending the request to the first streamed token;
  E2E   time from sending the request to the last token;
  TPOT  (E2E - TTFT) / (output tokens - 1), for requests with more than one output token;
  ITL   the gaps between consecutive streamed chunks, pooled over all requests.
Throughput: completed requests and output tokens per second of the level's wall time.

Systems compared (the study's setup): the base model with the long prompt (format instructions
and few-shot examples), the base with the short prompt, the LoRA adapter with the short prompt,
and the adapter merged into the base with the short prompt.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from ftscale.atomic import write_json, write_text
from ftscale.chatdata import read_jsonl
from ftscale.eval.backends import Request, make_backend
from ftscale.eval.latency import latency_of
from ftscale.rundir import adapter_dir


def measure(base_url: str, model: str, requests, sampling, concurrency: int, api_key: str | None = None) -> dict:
    """`api_key`: the key of the server ftscale started (serve/server.py), sent with every request."""
    backend = make_backend("openai", name="vllm", model=model, base_url=base_url, concurrency=concurrency, progress=False,
                           api_key=api_key)
    backend.generate(requests[:concurrency], sampling)  # warm-up: first-request costs are not latency
    start = time.perf_counter()
    generations = backend.generate(requests, sampling)
    return latency_of(generations, time.perf_counter() - start).as_dict()


def speedup(base: dict, ft: dict) -> dict:
    """E2E speed-up of the fine-tuned model and how much of it comes from shorter outputs.

    E2E ~ TTFT + TPOT x (tokens - 1): the log of the speed-up splits into the log-ratio of output
    tokens (shorter answers) and the rest (faster prompt processing and decoding per token).
    """
    e2e = base["e2e_s"]["p50"] / ft["e2e_s"]["p50"]
    tokens = base["output_tokens"]["mean"] / ft["output_tokens"]["mean"]
    share = math.log(tokens) / math.log(e2e) if e2e > 0 and abs(math.log(e2e)) > 1e-9 else None
    return {"e2e_p50_speedup": e2e, "output_tokens_ratio": tokens, "share_from_shorter_outputs": share,
            "ttft_p50_ratio": base["ttft_s"]["p50"] / ft["ttft_s"]["p50"],
            "tpot_p50_ratio": base["tpot_s"]["p50"] / ft["tpot_s"]["p50"] if base["tpot_s"] and ft["tpot_s"] else None}


def _row(system: str, level: int, r: dict) -> str:
    f = lambda d, k="p50": f"{d[k] * 1000:.0f}" if d else "–"  # noqa: E731
    return (f"| {system} | {level} | {r['requests'] - r['failed']}/{r['requests']} | {f(r['ttft_s'])} | {f(r['ttft_s'], 'p90')} | "
            f"{f(r['tpot_s'])} | {f(r['itl_s'])} | {f(r['e2e_s'])} | {f(r['e2e_s'], 'p90')} | {f(r['e2e_s'], 'p99')} | "
            f"{r['output_tokens']['mean']:.1f} | {r['requests_per_s']:.2f} | {r['output_tokens_per_s']:.1f} |")


def run_latency_benchmark(cfg, adapter: str | Path, levels: list[int], num_prompts: int, out_dir: Path | None = None) -> Path:
    # imported here, not at the top: crosscheck's measuring client imports this module in a fresh
    # process whose heap must stay small (its garbage-collection pauses would count as latency)
    from ftscale.cellrunner import sampling_of
    from ftscale.eval.report import write_report
    from ftscale.experiment import task_for

    from .evaluate_on_vllm import FT, evaluate_on_vllm

    adapter = adapter_dir(adapter)
    out_dir = Path(out_dir or adapter.parent / "latency")
    task = task_for(cfg)
    pool = read_jsonl(cfg.data.train, "train")
    examples = read_jsonl(cfg.data.eval, "eval")[:num_prompts]
    sampling = sampling_of(cfg)

    def prompts(variant):
        return [Request(e["id"], task.build_messages(e, variant, pool, cfg.eval.few_shot_k, sampling.seed)) for e in examples]

    long_variant = "few_shot" if "few_shot" in task.prompt_variants else "default"
    fixed = dataclasses.replace(sampling, ignore_eos=True, max_new_tokens=32)  # equal output length
    results: dict[str, dict[int, dict]] = {}
    equal: dict[str, dict] = {}

    def run(system, vllm, model, variant):
        results[system] = {c: measure(vllm.base_url, model, prompts(variant), sampling, c, vllm.api_key) for c in levels}

    # Three servers, one after another: a server started with --enable-lora wraps every linear
    # layer, which slows the base model too, so the base is measured on a plain server.
    with evaluate_on_vllm(cfg, out_dir / "vllm-base.log") as vllm:
        run("base, long prompt", vllm, vllm.model(), long_variant)
        run("base, short prompt", vllm, vllm.model(), "default")
    with evaluate_on_vllm(cfg, out_dir / "vllm-lora.log", {FT: adapter}) as vllm:
        run("LoRA, short prompt", vllm, FT, "default")
        run("base on the LoRA-enabled server, short prompt", vllm, vllm.model(), "default")
        equal["LoRA"] = measure(vllm.base_url, FT, prompts("default"), fixed, 1, vllm.api_key)
    with evaluate_on_vllm(cfg, out_dir / "vllm-merged.log", merged=adapter) as vllm:
        run("merged, short prompt", vllm, vllm.model(), "default")
        equal["merged"] = measure(vllm.base_url, vllm.model(), prompts("default"), fixed, 1, vllm.api_key)

    speedups = {c: {"LoRA": speedup(results["base, long prompt"][c], results["LoRA, short prompt"][c]),
                    "merged": speedup(results["base, long prompt"][c], results["merged, short prompt"][c])}
                for c in levels}
    lora_vs_merged = equal["LoRA"]["e2e_s"]["p50"] / equal["merged"]["e2e_s"]["p50"]
    write_json(out_dir / "latency.json", {"adapter": str(adapter), "num_prompts": num_prompts, "levels": levels,
                                          "sampling": sampling.as_dict(), "results": results, "speedups": speedups,
                                          "equal_length_c1": equal, "lora_over_merged_e2e_p50_equal_length": lora_vs_merged})
    lines = [f"# Latency: {cfg.model} base vs LoRA vs merged ({num_prompts} prompts per level)", "",
             "Times in ms; TTFT, TPOT, ITL and E2E as vLLM's serving benchmark defines them.", "",
             "| system | concurrency | ok | TTFT p50 | TTFT p90 | TPOT p50 | ITL p50 | E2E p50 | E2E p90 | E2E p99 | "
             "mean output tokens | req/s | output tok/s |", "|" + "---|" * 13]
    lines += [_row(s, c, results[s][c]) for s in results for c in levels]
    lines += ["", "| concurrency | fine-tuned | E2E p50 speed-up over base (long prompt) | output-token ratio | "
              "share from shorter outputs | TTFT ratio | TPOT ratio |", "|---|---|---|---|---|---|---|"]
    for c in levels:
        for name, s in speedups[c].items():
            share = f"{s['share_from_shorter_outputs']:.0%}" if s["share_from_shorter_outputs"] is not None else "–"
            tpot = f"{s['tpot_p50_ratio']:.2f}" if s["tpot_p50_ratio"] else "–"
            lines.append(f"| {c} | {name} | {s['e2e_p50_speedup']:.2f}x | {s['output_tokens_ratio']:.2f} | {share} | "
                         f"{s['ttft_p50_ratio']:.2f} | {tpot} |")
    lines += ["", f"At equal output length (32 tokens, ignore_eos, concurrency 1) the LoRA adapter's E2E p50 is "
              f"{lora_vs_merged:.2f}x the merged model's.", ""]
    written = write_text(out_dir / "latency.md", "\n".join(lines))
    experiment = adapter.parent.parent
    if out_dir == adapter.parent / "latency" and (experiment / "experiment.yaml").is_file():
        write_report(experiment, task)  # the experiment's summary gets a latency section
    return written
