"""`ftscale tune`: a hyperparameter search (Optuna) over an experiment's training knobs at one training
size, on a validation split of the training pool; resumable; writes best.yaml for `ftscale run --overlay`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ftscale.errors import FtscaleError


def add_parser(sub) -> None:
    t = sub.add_parser("tune", help="hyperparameter search (configs/tune/), resumable; writes best.yaml, an overlay "
                                    "for `ftscale run --overlay`")
    t.add_argument("config", type=Path, help="a tune config: a path or a name in configs/tune/")
    t.set_defaults(fn=run)


def run(args) -> None:
    if importlib.util.find_spec("optuna") is None:
        raise FtscaleError("ftscale tune needs Optuna: pip install -e '.[tune]'")
    # imported here: the search imports Optuna, torch and transformers, seconds every command would pay at start-up
    from ftscale.tune import run_tune

    run_tune(args.config)
