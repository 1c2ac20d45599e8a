"""`ftscale rate`: a double-blind human rating study: build it, serve its page, judge it, unblind it (eval/rating)."""

from __future__ import annotations

import json
from pathlib import Path

from ftscale.errors import FtscaleError


def add_parser(sub) -> None:
    ra = sub.add_parser("rate", help="a double-blind human rating study: build it, serve its page, unblind it")
    ra.add_argument("study", help="a study name (under --studies-dir) or its directory")
    ra.add_argument("--build", nargs="+", metavar="SYSTEM=GENERATIONS", help="build the study from evaluations' generations.jsonl")
    ra.add_argument("--pairs", type=int, help="with --build: queries per pair of systems (default: all they share)")
    ra.add_argument("--seed", type=int, help="with --build: the A/B sides, order and sample (default: a secret one drawn "
                    "from `secrets`, kept in study.json only: anyone who knows the seed can tell the sides); "
                    "with --judge: which order is asked first (default 0)")
    ra.add_argument("--task", help="with --build: the task whose `rating:` wording the page uses (default: the task "
                    "of the runs the generations come from)")
    ra.add_argument("--report", action="store_true",
                    help="print the unblinded results (while the page is served: /report?key=<owner key>)")
    ra.add_argument("--judge", metavar="BACKEND:MODEL",
                    help="have an LLM judge the study's pairs (both orders; hf:, openai:, openai:M@URL): llm_judge.json")
    ra.add_argument("--persona", default="rude", help="with --judge: the persona whose tone is judged")
    ra.add_argument("--studies-dir", default="runs/studies")
    ra.add_argument("--host", default="127.0.0.1")
    ra.add_argument("--port", type=int, default=8765)
    ra.add_argument("--max-raters", type=int, help="rater names the page takes (default: 200, eval/rating/server.py)")
    ra.set_defaults(fn=run)


def _task_of(args) -> str | None:
    """The task the study is about: --task, else the one task of the runs the generations come from."""
    from ftscale.eval import rating
    from ftscale.eval.tasks.yaml_task import find_task_file

    if args.task:
        if find_task_file(args.task) is None:
            raise FtscaleError(f"--task {args.task}: no task file of that name in configs/tasks/ or at that path")
        return args.task
    found = {rating.task_of_generations(b.split("=", 1)[1]) for b in args.build}
    return found.pop() if len(found) == 1 else None


def run(args) -> None:
    # imported here: the rating package imports scipy, half a second at every start-up
    from ftscale.eval import rating

    study_dir = Path(args.study) if Path(args.study).is_dir() or "/" in args.study else Path(args.studies_dir) / args.study
    if args.build:
        bad = [b for b in args.build if "=" not in b]
        if bad:
            raise FtscaleError(f"--build {bad[0]}: expected SYSTEM=path/to/generations.jsonl")
        replies = {name: rating.load_replies_from_generations(path) for name, path in (b.split("=", 1) for b in args.build)}
        built = rating.build_study(study_dir.name, replies, study_dir.parent, seed=args.seed, n_pairs_per_system_pair=args.pairs,
                                   task=_task_of(args))
        print(f"study written to {built}; rate it with `ftscale rate {args.study}`")
    elif args.judge:
        done = rating.judge_study(study_dir, args.judge, args.persona, args.seed or 0)
        print(f"{done['verdicts']} of {done['pairs']} pairs judged by {done['judge']} ({done['unparsable']} unparsable, "
              f"{done['failed']} failed) in {done['file']}; `ftscale rate {args.study} --report` compares them with the raters")
    elif args.report:
        print(json.dumps(rating.unblind(study_dir), indent=2))
    else:
        max_raters = rating.MAX_RATERS if args.max_raters is None else args.max_raters
        rating.run_rating_server(study_dir, args.host, args.port, max_raters)
