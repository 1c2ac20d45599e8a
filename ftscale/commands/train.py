"""`ftscale train`: one adapter (train/sft.py) or an OpenAI fine-tuning job (train/openai_ft.py)."""

from __future__ import annotations

from .config_args import add_prices, with_config, with_prices


def add_parser(sub) -> None:
    t = with_config(sub, "train", run, "train one adapter (train/sft.py) or launch an OpenAI job (train/openai_ft.py)")
    t.add_argument("--backend", choices=["local", "openai"], default="local")
    t.add_argument("--yes", action="store_true", help="openai: start the job without asking")
    add_prices(t)  # the OpenAI job's estimate


def run(args) -> int:
    # imported here: sft imports torch, openai_ft the openai client, seconds every command would pay at start-up
    if args.backend == "openai":
        from ftscale.train import openai_ft

        return openai_ft.main(["--config", str(args.config), *(["--yes"] if args.yes else []),
                               *with_prices(args, args.overrides)])
    from ftscale.train import sft

    return sft.main(["--config", str(args.config), *with_prices(args, args.overrides)])
