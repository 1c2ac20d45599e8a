"""`ftscale merge`: merge a LoRA adapter into its base model (train/merge.py)."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    mg = sub.add_parser("merge", help="merge a LoRA adapter into its base model")
    mg.add_argument("adapter", help="a run directory or its adapter/ folder")
    mg.add_argument("--output-dir", required=True, type=Path, hidden=("--out",))
    mg.add_argument("--base", help="base model (default: the one the adapter names)")
    mg.add_argument("--into", choices=["auto", "original", "dequantized"], default="auto",
                    help="the base weights merged into: a QLoRA adapter's default is `dequantized` (the nf4 weights it "
                         "trained on, which keeps its answers: docs/qlora.md), any other adapter's `original`")
    mg.add_argument("--force", action="store_true",
                    help="replace an earlier merge in --output-dir (only a folder `ftscale merge` wrote is ever replaced)")
    mg.set_defaults(fn=run)


def run(args) -> None:
    # imported here: the merge's stop check loads the config and scipy, which `ftscale doctor` must run without
    from ftscale.train.merge import merge

    print(f"merged checkpoint written to {merge(args.adapter, args.output_dir, base=args.base, force=args.force, into=args.into)}")
