"""`ftscale report`: an experiment's summary, plots and costs, or a sweep's HTML comparison (with a
migration's verdict first)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from ftscale.errors import FtscaleError
from .config_args import add_prices


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="write summary.md, results.json, scaling.png and cost.png for an experiment directory")
    r.add_argument("experiment_dir", help="an experiment's directory, or a sweep's (the HTML comparison report)")
    add_prices(r)
    r.add_argument("--hardware", help="the price-table machine local runs are priced as (default: auto)")
    r.add_argument("--hourly-usd", help="your own price per hour of the local machine")
    r.add_argument("--reference-model", help="the bigger model prompted instead of fine-tuning (default: gpt-4.1)")
    r.set_defaults(fn=run)


def run(args) -> None:
    # imported here: the report modules import scipy, half a second at every start-up
    from ftscale.eval.migration_report import is_migration, write_migration_report
    from ftscale.eval.report import cost_spec_of, write_report
    from ftscale.eval.tasks import get_task
    from ftscale.sweep import write_report as write_sweep

    exp = Path(args.experiment_dir)
    overrides = {k: v for k, v in (("prices", args.prices), ("hardware", args.hardware), ("hourly_usd", args.hourly_usd),
                                    ("reference_model", args.reference_model)) if v is not None}
    if is_migration(exp) and (exp / "results.db").is_file():  # `migrate plan` wrote it: the verdict first
        print(write_migration_report(exp))
    if (exp / "results.db").is_file():  # a sweep: the cross-backend comparison report
        html, md = write_sweep(exp, " ".join(["ftscale", "report", *sys.argv[2:]]), overrides)
        print(f"{html}\n{md}")
        return
    configs = [exp / "experiment.yaml", *sorted(exp.glob("*/config.yaml"))]
    found = next((c for c in configs if c.is_file()), None)
    if found is None:
        raise FtscaleError(f"{exp}: not an experiment directory (no experiment.yaml, no run directories)")
    cost = cost_spec_of(exp, overrides)
    # nothing evaluated yet (or only failed or stale evaluations): write_report says so, writing nothing
    print(write_report(exp, get_task(yaml.safe_load(found.read_text())["task"]), cost))
