"""`ftscale`: one command line for the whole flow (data -> train -> eval -> report)."""

from __future__ import annotations

from . import allocator
from .commands import (bench, data, distill, doctor, evaluate, merge, migrate, models, rate, report, run, serve, sweep,
                       task, train, tune)
from .errors import run_command
from .flags import Parser

# in the order `ftscale --help` lists them; migrate adds `openai` and `migrate`
COMMANDS = (models, data, run, train, evaluate, serve, merge, bench, doctor, sweep, tune, distill, rate, task, migrate,
            report)
# the commands whose config keys may be overridden after them: --section.key value
TAKE_OVERRIDES = ("run", "train", "eval", "bench")


def build_parser() -> Parser:
    p = Parser(prog="ftscale", description=__doc__, epilog="Every flag takes dashes or underscores: --output-dir "
               "or --output_dir, as do config overrides (--train.learning-rate).")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # the `ftscale` command, not a test calling main with its arguments: on tcmalloc (ftscale/allocator.py)
    if argv is None and (refused := run_command(allocator.reexec)):
        return refused
    args, rest = build_parser().parse_known_args(argv)
    args.overrides = rest
    if args.command == "distill":  # its own parser (data/distill.py) takes the rest, and reports its own errors
        return args.fn(args)
    if rest and args.command not in TAKE_OVERRIDES:
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    return run_command(lambda: args.fn(args))
