"""`ftscale data`: generate a task's data, check chat JSONL files."""

from __future__ import annotations

from pathlib import Path

from ftscale.chatdata import read_jsonl
from ftscale.data import formatting, orders, tone
from ftscale.data.probes import write_probes
from ftscale.datacheck import check_file
from ftscale.errors import FtscaleError

# modules with write(out, seed, n_train, n_eval); tone writes customer queries
GENERATORS = {"formatting": formatting, "orders": orders, "tone": tone}


def add_parser(sub) -> None:
    d = sub.add_parser("data", help="generate task data, check JSONL files")
    dsub = d.add_subparsers(dest="action", required=True)
    g = dsub.add_parser("generate", help="write a task's train pool and eval set")
    g.add_argument("task")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--n-train", type=int, help="default: the generator's (formatting 1200, orders 600)")
    g.add_argument("--n-eval", type=int, help="default: the generator's (formatting 200, orders 100)")
    g.add_argument("--output-dir", type=Path, hidden=("--out",))
    c = dsub.add_parser("check", help="validate chat JSONL files (errors as file:line: reason)")
    c.add_argument("files", nargs="+")
    c.add_argument("--kind", choices=["train", "eval"], help="default: eval if the name says so, else train")
    c.add_argument("--model", default="gpt-4.1-mini-2025-04-14", help="OpenAI model whose limits and tokenizer apply")
    c.add_argument("--epochs", type=int, default=3, help="for the billed-token estimate")
    d.set_defaults(fn=run)


def run(args) -> int | None:
    return _generate(args) if args.action == "generate" else _check(args)


def _generate(args) -> None:
    if args.task == "probes":
        res = write_probes(args.output_dir or Path("data/probes"), args.seed, **({"n": args.n_eval} if args.n_eval else {}))
        print(f"wrote {res['n']} probes to {res['probes']}")
        return
    if args.task not in GENERATORS:
        raise FtscaleError(f"data generate: no generator for {args.task!r} (available: {', '.join(GENERATORS)}, probes)")
    sizes = {k: v for k, v in (("n_train", args.n_train), ("n_eval", args.n_eval)) if v is not None}
    res = GENERATORS[args.task].write(args.output_dir or Path("data") / args.task, args.seed, **sizes)
    print(f"wrote {res['n_train']} training examples to {res['train']} and {res['n_eval']} eval examples to {res['eval']}")


def _check(args) -> int:
    failed = False
    for f in args.files:
        kind = args.kind or ("eval" if "eval" in Path(f).name else "train")
        if kind == "eval":  # eval sets never go to the endpoint: the structure is what matters
            print(f"{f}: ok, {len(read_jsonl(f, 'eval'))} eval examples")
            continue
        report = check_file(f, model=args.model, epochs=args.epochs)
        print(report.format())
        failed |= not report.ok
    return 1 if failed else 0
