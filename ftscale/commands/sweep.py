"""`ftscale sweep`: run a grid of cells, resumable, in the built-in loop or one scheduler job per
cell (ftscale/sweep.py); --status to follow it."""

from __future__ import annotations

from pathlib import Path

from ftscale.errors import StepsFailed


def add_parser(sub) -> None:
    sw = sub.add_parser("sweep", help="run a grid of cells (configs/sweeps/), resumable; --status to follow it")
    sw.add_argument("config", type=Path)
    sw.add_argument("--status", action="store_true", help="done / running / failed / left, with an ETA")
    sw.add_argument("--fail-fast", action="store_true", help="stop at the first failed cell")
    sw.add_argument("--executor", choices=["slurm", "local", "debug"],
                    help="submit one job per cell through submitit instead of the built-in loop")
    sw.add_argument("--timeout-min", type=int, help="per job, with --executor (default: the sweep's slurm.timeout_min, 240)")
    sw.add_argument("--max-parallel", type=int, default=1, help="with --executor local: jobs run at once")
    sw.add_argument("--slurm-partition", help="default: the sweep's slurm.partition, else the cluster's")
    sw.add_argument("--gpus-per-node", type=int,
                    help="GPUs per job (default: the sweep's slurm.gpus_per_node, 0: none, as on a CPU node)")
    sw.set_defaults(fn=run)


def run(args) -> None:
    # imported here: the sweep imports scipy (through the config), half a second at every start-up
    from ftscale import sweep

    if args.status:
        print(sweep.status(args.config))
        return
    if args.executor:
        sweep.submit(args.config, args.executor, args.timeout_min, args.slurm_partition, args.gpus_per_node,
                     max_parallel=args.max_parallel)
        if args.executor == "slurm":
            return
        print(sweep.status(args.config))
        counts = sweep.status_counts(args.config)
    else:
        counts = sweep.Runner(args.config).run(fail_fast=args.fail_fast)
        print(", ".join(f"{v} {k}" for k, v in counts.items()))
    if counts["failed"] or counts.get("diverged"):
        what = " and ".join(f"{counts[k]} cell(s) {k}" for k in ("failed", "diverged") if counts.get(k))
        raise StepsFailed(f"{what}; `ftscale sweep {args.config} --status` shows their errors (a diverged cell: the "
                          "knob to change), and running the sweep again redoes them")
