"""`ftscale doctor`: what is installed and usable here; --gpu adds the CUDA checks (ftscale/doctor.py)."""

from __future__ import annotations

from ftscale import doctor


def add_parser(sub) -> None:
    dr = sub.add_parser("doctor", help="what is installed and usable here (ok / missing / broken, with the fix); "
                        "--gpu: correctness, speed and memory on a CUDA GPU")
    dr.add_argument("--gpu", action="store_true", help="also train and evaluate on the GPU, and time 8B-scale steps "
                    "(exit 1 without a CUDA GPU)")
    dr.add_argument("--output", help="the JSON of every figure (default: runs/doctor/doctor-<host>-<time>.json)")
    dr.add_argument("--model", default="llama-3.1-8b", help="--gpu: the architecture timed, random weights (configs/models/)")
    dr.add_argument("--seq-len", type=int, default=2048)
    dr.add_argument("--steps", type=int, default=5, help="--gpu: measured steps per speed run")
    dr.add_argument("--warmup", type=int, default=2)
    dr.add_argument("--examples", type=int, default=100, help="--gpu: training examples of the correctness runs")
    dr.add_argument("--eval-limit", type=int, default=100, help="--gpu: held-out examples they are scored on")
    dr.add_argument("--margin", type=float, help="--gpu: format_ok the QLoRA adapter may lose on the bf16 base (default 0.05)")
    dr.set_defaults(fn=run)


def run(args) -> int:
    return doctor.run(args.gpu, args.output, args.model, args.seq_len, args.steps, args.warmup, args.examples,
                      args.eval_limit, args.margin)
