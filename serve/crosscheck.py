"""Measure one server with our latency code and with vLLM's serving benchmark, on the same
prompts, output lengths and concurrency, and compare the medians.

Both sides run as child processes, whose environment carries none of the user's OpenAI key
(OPENAI_API_KEY, OPENAI_API_KEY_FILE), only the measured server's own key (FTSCALE_SERVER_KEY; vLLM's
benchmark sends it as its bearer token: serve/vllm_bench.py). Their no_proxy names the loopback
addresses (ftscale/loopback.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ftscale import loopback
from ftscale.atomic import write_json, write_jsonl
from ftscale.chatdata import read_jsonl
from ftscale.eval.backends import Request, Sampling

from .latency import measure
from .vllm_bench import SERVER_KEY, USER_KEYS


def child_env(api_key: str | None) -> dict[str, str]:
    """This environment less the user's OpenAI key, with the measured server's key (if any) in SERVER_KEY."""
    env = loopback.child_env({k: v for k, v in os.environ.items() if k not in USER_KEYS and k != SERVER_KEY})
    return env | ({SERVER_KEY: api_key} if api_key else {})


def _requests(prompts: Path) -> list:
    """vLLM's custom dataset sends each prompt as the one user message; so do we."""
    rows = [json.loads(line) for line in Path(prompts).read_text().splitlines()]  # written by crosscheck() itself
    return [Request(str(i), [{"role": "user", "content": r["prompt"]}]) for i, r in enumerate(rows)]


def _measure_ours(base_url: str, model: str, prompts: Path, output_len: int, concurrency: int,
                  api_key: str | None) -> dict:
    """ignore_eos fixes the output length on both sides, so the two measure the very same work."""
    sampling = Sampling(temperature=0.0, max_new_tokens=output_len, ignore_eos=True)
    return measure(base_url, model, _requests(prompts), sampling, concurrency, api_key)


def _ours(base_url: str, model: str, prompts: Path, output_len: int, concurrency: int, api_key: str | None,
          out: Path) -> dict:
    # Our client runs in a fresh process, as vLLM's benchmark does: a caller's own threads and heap
    # (a long test session's, for one) would otherwise add their pauses to our side only.
    cmd = [sys.executable, "-m", "ftscale.serve.crosscheck", base_url, model, str(prompts), str(output_len),
           str(concurrency), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(api_key))
    if proc.returncode != 0:
        raise RuntimeError(f"our latency measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def _vllms_command(base_url: str, model: str, tokenizer: str, prompts: Path, output_len: int, num_prompts: int,
                   concurrency: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "ftscale.serve.vllm_bench", "--backend", "openai-chat",
            "--endpoint", "/v1/chat/completions", "--base-url", base_url.removesuffix("/v1"), "--model", model,
            "--tokenizer", tokenizer, "--dataset-name", "custom", "--dataset-path", str(prompts),
            "--custom-output-len", str(output_len), "--skip-chat-template", "--disable-shuffle",
            "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency), "--num-warmups", str(concurrency),
            "--ignore-eos", "--temperature", "0", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,90,99", "--save-result", "--result-dir", str(out.parent),
            "--result-filename", out.name, "--disable-tqdm"]


def _theirs(cmd: list[str], api_key: str | None, out: Path) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(api_key))
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def _medians_ms(ours: dict, theirs: dict) -> dict[str, tuple[float, float]]:
    return {"ttft_p50_ms": (ours["ttft_s"]["p50"] * 1000, theirs["median_ttft_ms"]),
            "e2e_p50_ms": (ours["e2e_s"]["p50"] * 1000, theirs["median_e2el_ms"]),
            "tpot_p50_ms": (ours["tpot_s"]["p50"] * 1000, theirs["median_tpot_ms"]),
            "itl_p50_ms": (ours["itl_s"]["p50"] * 1000, theirs["median_itl_ms"])}


def crosscheck(cfg, base_url: str, model: str, tokenizer: str, out_dir: Path, num_prompts: int = 32,
               concurrency: int = 1, output_len: int = 32, api_key: str | None = None, rounds: int = 2) -> dict:
    """`api_key`: the measured server's key (a server ftscale started has one: serve/server.py).

    Each side measures all the prompts once per round, in ABBA order (ours, vLLM's, vLLM's, ours, ...), and
    a side's figure is the mean of its rounds' medians: a slow stretch of the machine (a VM's CPU speed
    wanders from minute to minute) then weighs on both sides instead of on whichever ran during it."""
    out_dir = Path(out_dir)
    questions = [next(m["content"] for m in e["messages"] if m["role"] == "user")
                 for e in read_jsonl(cfg.data.eval, "eval")[:num_prompts]]
    prompts = out_dir / "crosscheck-prompts.jsonl"
    write_jsonl(prompts, [{"prompt": q} for q in questions])
    per_round, ours, theirs = [], [], []
    for r in range(rounds):
        mine, vllms = out_dir / f"ftscale-latency-{r}.json", out_dir / f"vllm-bench-serve-{r}.json"
        cmd = _vllms_command(base_url, model, tokenizer, prompts, output_len, num_prompts, concurrency, vllms)
        for side in ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours"):
            if side == "ours":
                ours.append(_ours(base_url, model, prompts, output_len, concurrency, api_key, mine))
            else:
                theirs.append(_theirs(cmd, api_key, vllms))
        per_round.append({k: {"ftscale": a, "vllm": b} for k, (a, b) in _medians_ms(ours[-1], theirs[-1]).items()})
    metrics = {}
    for k in per_round[0]:
        a, b = (sum(m[k][side] for m in per_round) / rounds for side in ("ftscale", "vllm"))
        metrics[k] = {"ftscale": a, "vllm": b, "relative_difference": abs(a - b) / b}
    result = {"num_prompts": num_prompts, "concurrency": concurrency, "output_len": output_len, "rounds": rounds,
              "command": " ".join(cmd), "metrics": metrics, "per_round": per_round,
              "completed": {"ftscale": sum(o["requests"] - o["failed"] for o in ours),
                            "vllm": sum(t["completed"] for t in theirs)}}
    write_json(out_dir / "crosscheck.json", result)
    return result


def run_crosscheck(cfg, out_dir: Path | None, num_prompts: int, concurrency: int, output_len: int) -> dict:
    """A server for the config's model, measured both ways; in `out_dir` (default: <experiment dir>/crosscheck)."""
    # imported here: this module is also the measuring client, run in a fresh process whose heap must
    # stay small (its garbage-collection pauses would count as latency)
    from ftscale.config import write_task_data
    from ftscale.models import resolve

    from .evaluate_on_vllm import evaluate_on_vllm

    write_task_data(cfg)  # the prompts come from the eval set, which a hub dataset writes out first
    out_dir = Path(out_dir or cfg.experiment_dir / "crosscheck")
    with evaluate_on_vllm(cfg, out_dir / "vllm-server.log") as vllm:
        return crosscheck(cfg, vllm.base_url, vllm.model(), resolve(cfg.model), out_dir, num_prompts, concurrency,
                          output_len, vllm.api_key)


if __name__ == "__main__":  # our side of the comparison, run by crosscheck() in a fresh process
    url, name, path, length, conc, out = sys.argv[1:]
    write_json(Path(out), _measure_ours(url, name, Path(path), int(length), int(conc), os.environ.get(SERVER_KEY)))
