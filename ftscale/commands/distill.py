"""`ftscale distill`: training data from a teacher answering customer queries in a persona
(data/distill.py, whose own parser takes every argument after the command)."""

from __future__ import annotations


def add_parser(sub) -> None:
    sub.add_parser("distill", add_help=False,
                   help="training data from a teacher answering customer queries in a persona (resumable, cached)"
                   ).set_defaults(fn=run)


def run(args) -> int:
    # imported here: distill imports tqdm, and every command (`ftscale doctor` too, which reports a
    # missing tqdm) imports this module at start-up
    from ftscale.data.distill import main as distill_main

    return distill_main(args.overrides)
