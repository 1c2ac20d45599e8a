"""`ftscale bench`: latency, crosscheck and throughput on vLLM (serve/), a training step (train/bench.py), the
main job against an earlier revision (ftscale/bench_main_job.py) and the migration verdict's error
(eval/verdict_error.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config_args import load, with_config


def positive_int(text: str) -> int:
    """argparse type: a count of requests in flight (0 would wait for ever)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def concurrency_levels(text: str) -> list[int]:
    """argparse type: comma-separated concurrency levels, `1,4,16`."""
    try:
        return [positive_int(part.strip()) for part in text.split(",")]
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} in {text!r} (expected positive integers like 1,4,16)") from None


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="action", required=True)
    bl = with_config(bsub, "latency", run_serving, "TTFT/TPOT/ITL/E2E of base, LoRA and merged models on vLLM")
    bl.add_argument("--adapter", required=True, help="the fine-tuned run (or its adapter/ folder)")
    bl.add_argument("--concurrency", type=concurrency_levels, default="1,4,16", help="comma-separated levels")
    bl.add_argument("--num-prompts", type=positive_int, default=32, help="eval prompts sent at each level")
    bl.add_argument("--output-dir", help="default: <adapter run>/latency")
    bc = with_config(bsub, "crosscheck", run_serving, "our latency numbers vs vLLM's serving benchmark on one server")
    bc.add_argument("--concurrency", type=positive_int, default=1)
    bc.add_argument("--num-prompts", type=positive_int, default=32)
    bc.add_argument("--output-len", type=int, default=32, help="tokens per answer (ignore_eos on both sides)")
    bc.add_argument("--output-dir", help="default: <experiment dir>/crosscheck")
    bt = with_config(bsub, "throughput", run_serving, "eval set through vLLM with concurrency vs hf one request at a time")
    bt.add_argument("--adapter", help="a fine-tuned run (default: the base model)")
    bt.add_argument("--concurrency", type=positive_int, default=16)
    bt.add_argument("--num-prompts", type=positive_int, default=200)
    bt.add_argument("--output-dir", help="default: <experiment dir>/throughput")
    _add_train_parser(bsub)
    bm = bsub.add_parser("main-job", help="an experiment run by an earlier git revision and by this code, back to back",
                         epilog="Other arguments are passed to both runs as overrides (--eval.limit 20, ...).")
    bm.add_argument("--baseline", required=True, help="the git revision to compare with (a commit, tag or branch)")
    bm.add_argument("--config", default="configs/experiments/formatting-smollm2-cpu.yaml", help="default: the main job")
    bm.add_argument("--output-dir", type=Path, default=Path("runs/bench-main-job"))
    bm.add_argument("--jobs", type=positive_int, default=1, help="this code's `ftscale run --jobs` (the baseline's: one cell at a time)")
    bm.set_defaults(fn=run_main_job)
    ve = bsub.add_parser("verdict-error", help="the migration verdict's type I error: exact for 0/1 scores, simulated "
                                              "for graded ones (docs/reliability.md)")
    ve.add_argument("--n-max", type=positive_int, default=400, help="sizes of the eval set checked: 4..N")
    ve.add_argument("--margins", default="0.01,0.02,0.05,0.1", help="comma-separated margins")
    ve.add_argument("--agreement-from", type=float, default=0.80, help="the lowest agreement rate of the range reported")
    ve.add_argument("--graded-draws", type=positive_int, default=2000, help="simulated studies per graded case")
    ve.add_argument("--output", type=Path, default=Path("runs/bench-verdict-error.json"))
    ve.set_defaults(fn=run_verdict_error)


def _add_train_parser(bsub) -> None:
    btr = bsub.add_parser("train", help="train tokens/s, peak memory and MFU of a LoRA/QLoRA step",
                          epilog="Training knobs as in the config: --train.quantization 4bit, --train.gradient_checkpointing true, ...")
    btr.add_argument("--config", type=Path, default=Path("configs/experiments/formatting-smollm2-cpu.yaml"),
                     help="where the LoRA and training settings come from (default: the main job's)")
    btr.add_argument("--model", help="model reference (default: the config's)")
    btr.add_argument("--seq-len", type=int, default=512)
    btr.add_argument("--batch", type=int, default=1, help="sequences per device and step")
    btr.add_argument("--steps", type=int, default=10, help="measured steps (the median step time counts)")
    btr.add_argument("--warmup", type=int, default=3, help="steps run first and not measured")
    btr.add_argument("--random-init", action="store_true", help="the architecture with random weights: nothing to download")
    btr.add_argument("--peak-tflops", type=float, help="the machine's dense bf16 peak (default: configs/gpus.yaml)")
    btr.add_argument("--output", help="result JSON (default: runs/bench-train/<model>-s<L>-b<B>-<lora|qlora>.json)")
    btr.set_defaults(fn=run_train)


def run_serving(args) -> None:
    cfg = load(args)
    out = Path(args.output_dir) if args.output_dir else None
    # imported here and in run_train: the benchmarks import scipy (through the config), half a second
    # at every start-up
    if args.action == "latency":
        from ftscale.serve.latency import run_latency_benchmark

        print(run_latency_benchmark(cfg, args.adapter, args.concurrency, args.num_prompts, out))
    elif args.action == "crosscheck":
        from ftscale.serve.crosscheck import run_crosscheck

        result = run_crosscheck(cfg, out, args.num_prompts, args.concurrency, args.output_len)
        print(json.dumps(result["metrics"], indent=2))
    else:
        from ftscale.serve.throughput import run_throughput_benchmark

        print(json.dumps(run_throughput_benchmark(cfg, args.adapter, args.num_prompts, args.concurrency, out), indent=2))


def run_main_job(args) -> None:
    from ftscale.bench_main_job import run_bench, summary

    result = run_bench(args.config, args.baseline, args.output_dir, args.overrides, args.jobs)
    print(summary(result))
    print(f"written to {args.output_dir / 'main-job.json'}")


def run_verdict_error(args) -> None:
    from ftscale.atomic import write_json
    from ftscale.eval.verdict_error import run

    margins = [float(m) for m in args.margins.split(",") if m.strip()]
    write_json(args.output, run(args.n_max, margins, args.agreement_from, args.graded_draws))
    print(f"written to {args.output}")


def run_train(args) -> None:
    from ftscale.train.bench import run_train_benchmark, summary_line

    if args.model:
        args.overrides = [*args.overrides, "--model", args.model]
    cfg = load(args)
    tag = f"{Path(cfg.model).name}-s{args.seq_len}-b{args.batch}-{'qlora' if cfg.train.quantization == '4bit' else 'lora'}"
    out = Path(args.output) if args.output else Path("runs") / "bench-train" / f"{tag}{'-random' if args.random_init else ''}.json"
    result = run_train_benchmark(cfg, args.seq_len, args.batch, args.steps, args.warmup, args.random_init,
                                 args.peak_tflops, out)
    print(summary_line(result))
    print(f"written to {out}")
