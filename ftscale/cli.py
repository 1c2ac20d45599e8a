"""`ftscale`: one command line for the whole flow (data -> train -> eval -> report)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import FtscaleError


def _models(args) -> None:
    from . import models

    if args.action == "list":
        for name in models.registry():
            spec = models.load_spec(name)
            state = ("prepared" if (models.local_dir(name) / models.MANIFEST).is_file() else "not prepared") \
                if spec.gguf else f"hub: {spec.hub_id}"
            print(f"{name:20s} {state:32s} {spec.description}")
        return
    if not args.name:
        raise FtscaleError("models prepare: name a model, e.g. `ftscale models prepare smollm2-135m`")
    for name in args.name:
        models.prepare(name, force=args.force)


def _data(args) -> None:
    if args.action == "generate":
        if args.task != "formatting":
            raise FtscaleError(f"data generate: no generator for task {args.task!r} (available: formatting)")
        from ftscale.data import formatting

        res = formatting.write(args.out or Path("data/formatting"), args.seed, args.n_train, args.n_eval)
        print(f"wrote {res['n_train']} training examples to {res['train']} and {res['n_eval']} eval examples to {res['eval']}")
    else:
        from .chatdata import read_jsonl

        for f in args.files:
            kind = args.kind or ("eval" if "eval" in Path(f).name else "train")
            recs = read_jsonl(f, kind)
            print(f"{f}: ok, {len(recs)} {kind} examples")


def _load(args):
    from .config import load_config, parse_overrides

    return load_config(args.config, parse_overrides(args.overrides))


def _run(args) -> None:
    from .experiment import run_experiment

    run_experiment(_load(args))


def _eval(args) -> None:
    from ftscale.eval.tasks import get_task

    from .chatdata import read_jsonl
    from .experiment import evaluate_cell

    cfg = _load(args)
    adapter = Path(args.adapter) if args.adapter else None
    if adapter and not (adapter / "adapter_config.json").is_file():
        raise FtscaleError(f"--adapter {adapter}: not a PEFT adapter directory (no adapter_config.json)")
    out = Path(args.output_dir) if args.output_dir else cfg.experiment_dir / ("eval-" + (adapter.parent.name if adapter else "base"))
    task = get_task(cfg.task)
    evaluate_cell(cfg, out, adapter, task, read_jsonl(cfg.data.train, "train"),
                  read_jsonl(cfg.data.eval, "eval")[: cfg.eval.limit])
    print(f"results in {out}")


def _report(args) -> None:
    import yaml

    from ftscale.eval.report import write_report
    from ftscale.eval.tasks import get_task

    exp = Path(args.experiment_dir)
    cfg_path = exp / "experiment.yaml"
    if not cfg_path.is_file():
        raise FtscaleError(f"{exp}: not an experiment directory (no experiment.yaml)")
    print(write_report(exp, get_task(yaml.safe_load(cfg_path.read_text())["task"])))


def _train(args) -> int:
    from ftscale.train import sft

    return sft.main(["--config", str(args.config), *args.overrides])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ftscale", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list models, prepare the embedded one")
    m.add_argument("action", choices=["list", "prepare"])
    m.add_argument("name", nargs="*")
    m.add_argument("--force", action="store_true", help="convert again even if prepared")
    m.set_defaults(fn=_models)

    d = sub.add_parser("data", help="generate task data, check JSONL files")
    dsub = d.add_subparsers(dest="action", required=True)
    g = dsub.add_parser("generate", help="write a task's train pool and eval set")
    g.add_argument("task")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--n-train", type=int, default=1200)
    g.add_argument("--n-eval", type=int, default=200)
    g.add_argument("--out", type=Path)
    c = dsub.add_parser("check", help="validate chat JSONL files (errors as file:line: reason)")
    c.add_argument("files", nargs="+")
    c.add_argument("--kind", choices=["train", "eval"], help="default: eval if the name says so, else train")
    d.set_defaults(fn=_data)

    for name, fn, helptext in (("run", _run, "train every size of an experiment, evaluate, write the summary"),
                               ("train", _train, "train one adapter (same as train/sft.py)"),
                               ("eval", _eval, "evaluate the base model or an adapter")):
        s = sub.add_parser(name, help=helptext, epilog="Any config key can be overridden: --section.key value")
        if name == "run":
            s.add_argument("config", type=Path)
        else:
            s.add_argument("--config", type=Path, required=True)
        if name == "eval":
            s.add_argument("--backend", choices=["hf"], default="hf")
            s.add_argument("--adapter", help="a run's adapter directory (default: the base model)")
            s.add_argument("--output-dir", help="where generations.jsonl and scores.json go")
        s.set_defaults(fn=fn)

    r = sub.add_parser("report", help="write summary.md and scaling.png for an experiment directory")
    r.add_argument("experiment_dir")
    r.set_defaults(fn=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    args.overrides = rest
    if rest and args.command not in ("run", "train", "eval"):
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.fn(args) or 0
    except FtscaleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished steps are kept; run the same command again to resume", file=sys.stderr)
        return 130
