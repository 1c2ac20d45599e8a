"""`ftscale run`: train every size of an experiment, evaluate, write the summary."""

from __future__ import annotations

from pathlib import Path

from ftscale.errors import ConfigError

from .config_args import add_prices, load, with_config


def add_parser(sub) -> None:
    r = with_config(sub, "run", run, "train every size of an experiment, evaluate, write the summary", positional=True)
    r.add_argument("--overlay", type=Path, action="append", default=[], metavar="FILE",
                   help="a YAML of config keys merged over the experiment before any --section.key override "
                        "(a tune's best.yaml); repeatable, the last wins")
    r.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="cells at once, each in its own process on 1/N of the cores; the same adapters and "
                        "answers, bit for bit (default 1: one after the other)")
    add_prices(r)  # the summary's cost section


def run(args) -> None:
    # imported here: the experiment imports scipy (through the config), half a second at every start-up
    from ftscale.run_experiment import run_experiment

    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: give 1 or more")
    run_experiment(load(args, args.overlay), jobs=args.jobs)
