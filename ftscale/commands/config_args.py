"""The experiment config that `run`, `train`, `eval` and `bench` take, with any config key
overridden after it: `--section.key value`."""

from __future__ import annotations

from pathlib import Path


def with_config(parent, name, fn, helptext, positional=False):
    """A subcommand that takes an experiment config plus --section.key overrides."""
    s = parent.add_parser(name, help=helptext, epilog="Any config key can be overridden: --section.key value")
    s.add_argument(*(["config"] if positional else ["--config"]), type=Path, **({} if positional else {"required": True}))
    s.set_defaults(fn=fn)
    return s


def add_prices(parser) -> None:
    """`--prices FILE`, the same on every command that prices something: your own copy of configs/prices.yaml."""
    parser.add_argument("--prices", type=Path, metavar="FILE",
                        help="your own price table, a copy of configs/prices.yaml (default: the config's cost.prices)")


def with_prices(args, overrides: list[str]) -> list[str]:
    """The command's overrides, with `--prices FILE` as the config key it stands for."""
    return [*overrides, "--cost.prices", str(args.prices)] if getattr(args, "prices", None) else list(overrides)


def load(args, overlays: list[Path] | tuple = ()):
    """The config named on the command line, with any overlay files merged over it (in turn), then the
    overrides left over after parsing."""
    # imported here: the config imports the task registry and through it scipy, half a second that
    # every command would pay at start-up (this module is imported to build the parser)
    from ftscale.config import load_config, parse_overrides

    return load_config(args.config, parse_overrides(with_prices(args, args.overrides)), overlays)
