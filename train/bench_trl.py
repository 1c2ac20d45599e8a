"""ftscale's training against TRL's own `trl sft` command, like for like, back to back on one machine.

    python -m ftscale.train.bench_trl --config configs/experiments/formatting-smollm2-cpu.yaml \
        --num-train-examples 100 [--quantization 4bit] [--repeats 4] [--output-dir runs/bench-trl]

Both sides train the same examples (ftscale's nested subset, written once as a prompt-completion JSONL
that `trl sft` loads), with the loss on the completion only, TRL's padding collator, the same thread
count and allocator (tcmalloc where ftscale would preload it), sequence length, LoRA and optimizer
settings, and the same 4-bit base for QLoRA. ftscale trains through train/sft.py (its stop check off:
it runs after train_runtime and is not training). Tokens/s: TRL's count of non-padding tokens trained
on (`num_tokens`, the same counter on both sides) over the trainer's `train_runtime`; peak memory: the
child process's maximum resident memory (wait4). The sides alternate (ABBA), `--repeats` times each; the
ratio is of the medians, and, step by step, of the durations of the same batch on both sides (timed from
outside as each step's log line arrives).
"""

from __future__ import annotations

import ast
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ftscale.allocator import preload
from ftscale.atomic import write_json, write_jsonl
from ftscale.chatdata import nested_subset, read_jsonl, to_prompt_completion
from ftscale.config import load_config
from ftscale.device import resolve_dtype
from ftscale.flags import Parser
from ftscale.models import resolve
from ftscale.provenance import machine, versions
from ftscale.train.sft import _max_length

BIN = Path(sys.executable).parent


def trl_command(cfg, data_dir: Path, out: Path) -> list[str]:
    """`trl sft` with the experiment's settings: what train/sft.py's SFTConfig, LoRA and model load set."""
    t, lora = cfg.train, cfg.train.lora
    cmd = [str(BIN / "trl"), "sft", "--model_name_or_path", str(resolve(cfg.model)), "--dataset_name", str(data_dir),
           "--output_dir", str(out), "--seed", str(t.seed), "--data_seed", str(t.seed),
           "--num_train_epochs", str(t.epochs), "--learning_rate", str(t.learning_rate),
           "--per_device_train_batch_size", str(t.batch_size),
           "--gradient_accumulation_steps", str(t.gradient_accumulation_steps), "--lr_scheduler_type", t.lr_scheduler,
           "--warmup_steps", str(t.warmup_ratio), "--weight_decay", str(t.weight_decay),
           "--max_length", str(_max_length(cfg)), "--optim", t.optim, "--logging_steps", "1", "--report_to", "none",
           "--save_strategy", "no", "--completion_only_loss", "true", "--packing", "false", "--padding_free", "false",
           "--gradient_checkpointing", str(t.gradient_checkpointing).lower(), "--use_cpu", "true",
           "--bf16", str(resolve_dtype(t.precision) == torch.bfloat16).lower(),
           "--disable_tqdm", "true", "--use_peft", "--lora_r", str(lora.r), "--lora_alpha", str(lora.alpha),
           "--lora_dropout", str(lora.dropout), "--lora_target_modules", *([lora.target_modules]
                                                                          if isinstance(lora.target_modules, str)
                                                                          else lora.target_modules)]
    if t.quantization == "4bit":  # ftscale/quantization.py's config, with the model's rest in the storage dtype
        cmd += ["--load_in_4bit", "--bnb_4bit_quant_type", "nf4", "--use_bnb_nested_quant", "--bnb_4bit_quant_storage",
                "bfloat16", "--dtype", "bfloat16"]
    else:  # train/sft.py loads the weights in fp32 on a CPU; bf16 autocast computes
        cmd += ["--dtype", "float32"]
    return cmd


def ftscale_command(config: Path, n: int, quantization: str, out: Path) -> list[str]:
    return [sys.executable, "train/sft.py", "--config", str(config), "--num_train_examples", str(n),
            "--train.quantization", quantization, "--train.stop_check", "0", "--output-dir", str(out)]


STEP_LINE = re.compile(r"\{'loss'")  # the trainer's log of one step (logging_steps 1), not the final summary


def _run(cmd: list[str], env: dict, log: Path) -> tuple[int, float, str, list[float]]:
    """(exit code, the child's max resident memory in MiB, its output, the time each training log line
    arrived). With logging every step and unbuffered output, the gaps between those times are the steps'
    durations: both sides' steps are timed by the same clock from outside, callbacks and logging included."""
    arrivals, lines = [], []
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1)
        for line in proc.stdout:
            if STEP_LINE.search(line):
                arrivals.append(time.perf_counter())
            f.write(line)
            lines.append(line)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024, "".join(lines), arrivals


def _logged(text: str, key: str) -> list[dict]:
    """The trainer's printed log dicts that carry `key`."""
    out = []
    for m in re.finditer(r"\{'[^{}]*\}", text):
        try:
            d = ast.literal_eval(m.group(0))
        except (ValueError, SyntaxError):
            continue
        if key in d:
            out.append(d)
    return out


def trl_result(text: str) -> dict:
    runtime = _logged(text, "train_runtime")[-1]["train_runtime"]
    tokens = max(float(d["num_tokens"]) for d in _logged(text, "num_tokens"))
    return {"train_runtime_s": float(runtime), "train_tokens": tokens}


def ftscale_result(out: Path) -> dict:
    import json

    m = json.loads((out / "train_metrics.json").read_text())
    return {"train_runtime_s": m["train_runtime_s"], "train_tokens": m["train_tokens"], "steps": m["steps"]}


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/experiments/formatting-smollm2-cpu.yaml"))
    parser.add_argument("--num-train-examples", type=int, default=100)
    parser.add_argument("--quantization", choices=["none", "4bit"], default="none")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/bench-trl"))
    args = parser.parse_args(argv)
    cfg = load_config(args.config, {"train.quantization": args.quantization})
    out = args.output_dir / f"n{args.num_train_examples}-{args.quantization}"
    data = out / "data"
    subset = nested_subset(read_jsonl(cfg.data.train, "train"), args.num_train_examples, cfg.data.seed)
    write_jsonl(data / "train.jsonl", [to_prompt_completion(r) for r in subset])
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "LD_PRELOAD": preload(os.environ),
                        "TOKENIZERS_PARALLELISM": "false", "FTSCALE_MALLOC": "system",  # preloaded here for both
                        "PYTHONUNBUFFERED": "1"}  # each step's log line arrives when the step ends
    runs = []
    for i in range(args.repeats):
        # ABBA order: a drift of the CPU's speed over the run weighs on both sides alike
        for side in ("ftscale", "trl") if i % 2 == 0 else ("trl", "ftscale"):
            where = out / f"{side}-{i}"
            cmd = (ftscale_command(args.config, args.num_train_examples, args.quantization, where) if side == "ftscale"
                   else trl_command(cfg, data, where))
            start = time.time()
            code, rss, text, arrivals = _run(cmd, env, out / f"{side}-{i}.log")
            if code != 0:
                print(text[-3000:], file=sys.stderr)
                return 1
            result = ftscale_result(where) if side == "ftscale" else trl_result(text)
            steps = _logged(text, "loss")
            result |= {"side": side, "repeat": i, "peak_rss_mib": rss, "wall_s": time.time() - start,
                       "tokens_per_s": result["train_tokens"] / result["train_runtime_s"],
                       "step_s": [b - a for a, b in zip(arrivals, arrivals[1:])],
                       "step_num_tokens": [d["num_tokens"] for d in steps], "step_loss": [float(d["loss"]) for d in steps],
                       "command": " ".join(cmd)}
            runs.append(result)
            print(f"{side:8s} #{i}: {result['tokens_per_s']:.1f} tokens/s ({result['train_tokens']:.0f} tokens in "
                  f"{result['train_runtime_s']:.1f} s), median step {statistics.median(result['step_s']):.2f} s, "
                  f"peak RSS {rss:,.0f} MiB")
    summary = {"config": str(args.config), "num_train_examples": args.num_train_examples,
               "quantization": args.quantization, "threads": args.threads, "allocator": env["LD_PRELOAD"] or "glibc",
               "machine": machine(), "versions": versions(), "runs": runs}
    try:
        summary |= ratios(runs)
    except ValueError as e:
        write_json(out / "bench-trl.json", summary)  # the runs are kept even when they cannot be compared
        print(f"error: {e} (the runs: {out / 'bench-trl.json'})", file=sys.stderr)
        return 1
    write_json(out / "bench-trl.json", summary)
    print(f"ftscale / trl sft tokens/s, ratio of the medians of {args.repeats} runs each: "
          f"{summary['ratio_median_tokens_per_s']:.3f}; per pair: "
          + ", ".join(f"{r:.3f}" for r in summary["ratio_per_pair"]))
    print(f"the same step of both sides (same batch), trl's duration / ftscale's: median "
          f"{summary['step_ratio_median']:.3f} over {summary['paired_steps']} steps; per pair: "
          + ", ".join(f"{r:.3f}" for r in summary["step_ratio_per_pair"]))
    return 0


def ratios(runs: list[dict]) -> dict:
    """ftscale's speed over trl's: of the medians of train_runtime tokens/s, per pair, and step by step.
    Both sides train the same batches in the same order (their logged token counts must agree) with the same
    loss (their first batch's loss must agree), so the
    durations of step k compare like for like, and a stretch of slow CPU inside one run moves a few
    steps, not the whole ratio."""
    side = {s: [r for r in runs if r["side"] == s] for s in ("ftscale", "trl")}
    median = {s: statistics.median(r["tokens_per_s"] for r in rs) for s, rs in side.items()}
    per_pair, step_pairs, all_steps = [], [], []
    for f, t in zip(side["ftscale"], side["trl"]):
        per_pair.append(f["tokens_per_s"] / t["tokens_per_s"])
        ours, theirs = ([float(x) for x in r["step_num_tokens"]] for r in (f, t))
        # the logs print 4 significant digits, and the sides tokenize 4 tokens of 20,000 differently
        if len(ours) != len(theirs) or any(abs(x - y) > 0.002 * y for x, y in zip(ours, theirs)):
            raise ValueError(f"pair {f['repeat']}: the two sides trained different batches "
                             f"({f['step_num_tokens'][:3]}... against {t['step_num_tokens'][:3]}...)")
        # the first batch meets the same weights on both sides (LoRA's B starts at 0): the same loss mask
        # gives the same loss, to the logs' 4 digits
        if abs(f["step_loss"][0] - t["step_loss"][0]) > 0.001 * t["step_loss"][0]:
            raise ValueError(f"pair {f['repeat']}: the two sides computed different losses on the first batch "
                             f"({f['step_loss'][0]} against {t['step_loss'][0]}): not the same loss mask or model")
        steps = [trl_s / ftscale_s for ftscale_s, trl_s in zip(f["step_s"], t["step_s"])]
        step_pairs.append(statistics.median(steps))
        all_steps += steps
    return {"ratio_median_tokens_per_s": median["ftscale"] / median["trl"], "ratio_per_pair": per_pair,
            "step_ratio_median": statistics.median(all_steps), "step_ratio_per_pair": step_pairs,
            "paired_steps": len(all_steps)}


if __name__ == "__main__":
    raise SystemExit(main())
