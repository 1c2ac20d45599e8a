"""`ftscale task check`: validate a user-defined task's YAML and its data before any training."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    tk = sub.add_parser("task", help="user-defined tasks (YAML)").add_subparsers(dest="action", required=True)
    tc = tk.add_parser("check", help="validate a task YAML and its data before any training")
    tc.add_argument("task_file", help="configs/tasks/<name>.yaml or any path")
    tc.set_defaults(fn=run)


def run(args) -> int:
    # imported here: the task registry imports scipy, half a second at every start-up
    from ftscale.eval.tasks.check import check_task

    report = check_task(Path(args.task_file))
    print(report.format())
    return 0 if report.ok else 1
