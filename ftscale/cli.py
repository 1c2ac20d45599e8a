"""`ftscale`: one command line for the whole flow (data -> train -> eval -> report)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import FtscaleError, run_command


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


def _data(args) -> int | None:
    if args.action == "generate":
        import importlib

        # modules of ftscale.data with write(out, seed, n_train, n_eval); tone writes customer queries
        generators = ("formatting", "orders", "tone")
        if args.task == "probes":
            from ftscale.data.probes import write_probes

            res = write_probes(args.out or Path("data/probes"), args.seed, **({"n": args.n_eval} if args.n_eval else {}))
            print(f"wrote {res['n']} probes to {res['probes']}")
            return None
        if args.task not in generators:
            raise FtscaleError(f"data generate: no generator for {args.task!r} (available: {', '.join(generators)}, probes)")
        module = importlib.import_module(f"ftscale.data.{args.task}")
        sizes = {k: v for k, v in (("n_train", args.n_train), ("n_eval", args.n_eval)) if v is not None}
        res = module.write(args.out or Path("data") / args.task, args.seed, **sizes)
        print(f"wrote {res['n_train']} training examples to {res['train']} and {res['n_eval']} eval examples to {res['eval']}")
    else:
        from .chatdata import read_jsonl
        from .datacheck import check_file

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


def _load(args):
    from .config import load_config, parse_overrides

    return load_config(args.config, parse_overrides(args.overrides))


def _run(args) -> None:
    from .experiment import run_experiment

    run_experiment(_load(args))


def _eval(args) -> None:
    """Evaluate through the cell runner: a step is redone when its inputs (the --eval.* settings,
    the model, the adapter's training) differ from its record, and a failed one exits 1."""
    from .cellrunner import endpoint_answerer, eval_jobs, hf_answerer, run_evals
    from .chatdata import read_jsonl
    from .errors import StepsFailed
    from .experiment import load_probes, task_for
    from .rundir import adapter_dir, cell_dir

    cfg = _load(args)
    task = task_for(cfg, args.variant)
    adapter = adapter_dir(args.adapter) if args.adapter else None
    if adapter and args.backend == "openai":
        raise FtscaleError("--adapter works with the hf and vllm backends; on an OpenAI-compatible endpoint "
                           "name the fine-tuned model with --model")
    if args.model and args.backend == "vllm":
        raise FtscaleError("--model names an endpoint's model (--backend openai) or another local model (--backend hf); "
                           "for vllm set the served model with --model in the config (--model is the config key too)")
    if args.output_dir:
        out = Path(args.output_dir)
    elif args.backend == "openai":
        from ftscale.train.openai_ft import eval_dir_for

        out = eval_dir_for(cfg, args.model or cfg.model)
    else:  # next to the hf results of the same cell, so the report shows both backends side by side
        out = adapter.parent if adapter else cell_dir(cfg.experiment_dir, 0, cfg.train.seed)
    variants = args.variant or cfg.eval.prompt_variants
    pool, examples = read_jsonl(cfg.data.train, "train"), read_jsonl(cfg.data.eval, "eval")[: cfg.eval.limit]
    concurrency = args.concurrency or cfg.serve.concurrency
    probes = load_probes(cfg)
    if args.backend != "openai":
        from .models import check_for_generation

        check_for_generation(args.model or cfg.model)  # reachable, with a chat template: before any work
    if args.backend != "openai" and not adapter and not args.output_dir:
        from .cellrunner import ensure_trained

        ensure_trained(cfg, 0, out)  # the untrained base's record (and config.yaml): what its evaluations name

    def evaluate(answerer):
        failures = run_evals(out, eval_jobs(cfg, out, task, pool, examples, variants, answerer, probes), answerer,
                             pool, cfg.eval.few_shot_k)
        if failures:
            raise StepsFailed("\n".join(f.line() for f in failures))

    if args.backend == "hf":
        # another local model than the config's gets a label of its own, so it is a curve of its own
        label = f"hf-{_slug(args.model)}" if args.model and args.model != cfg.model else "hf"
        evaluate(hf_answerer(cfg, adapter, model=args.model, label=label))
    elif args.backend == "openai":
        from .apikey import key_for

        key_for(args.base_url, args.api_key_env)  # a missing or misdirected key is refused before any work
        evaluate(endpoint_answerer(args.model or cfg.model, args.base_url, concurrency, api_key_env=args.api_key_env))
    else:
        _eval_on_vllm(cfg, adapter, out, args.merged, concurrency, evaluate)
    print(f"results in {out}")


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()


def _eval_on_vllm(cfg, adapter, out: Path, merged: bool, concurrency: int, evaluate) -> None:
    """Start a vLLM server for the model (with the adapter, or merged into it) and evaluate through it."""
    from ftscale.serve.server import server_for

    from .cellrunner import endpoint_answerer
    from .stepinputs import model_identity

    if merged and not adapter:
        raise FtscaleError("--merged needs --adapter: it serves that adapter merged into its base")
    if merged:
        from ftscale.train.merge import merged_beside

        server_cm = server_for(cfg, None, out / "vllm-server.log", model=str(merged_beside(adapter)))
    else:
        server_cm = server_for(cfg, {"ft": adapter} if adapter else None, out / "vllm-server.log")
    label = "vllm-merged" if merged else "vllm"
    served = {"model": model_identity(cfg.model), "adapter": adapter is not None, "precision": cfg.eval.precision,
              "serve": cfg.serve.model_dump(mode="json")}
    with server_cm as server:
        name = "ft" if adapter and not merged else server.served_name
        evaluate(endpoint_answerer(name, server.base_url, concurrency, label=label, served=served))


def _interrupt(*_):
    raise KeyboardInterrupt


def _serve(args) -> None:
    import signal
    import time

    from ftscale.serve.server import VLLMServer

    from .apikey import is_loopback

    bad = [a for a in args.adapter if "=" not in a]
    if bad:
        raise FtscaleError(f"--adapter {bad[0]}: expected NAME=RUN_DIR")
    adapters = dict(a.split("=", 1) for a in args.adapter)
    model, served = args.model, None
    if args.merged:
        from ftscale.train.merge import merged_beside

        if len(adapters) != 1:
            raise FtscaleError("--merged serves one adapter merged into its base: give exactly one --adapter")
        (served, path), = adapters.items()
        model, adapters = str(merged_beside(path, base=args.model)), {}
    signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's SIGTERM stops the server like Ctrl-C
    log = Path(args.log or Path("runs") / "serve" / f"vllm-{int(time.time())}.log")
    if not is_loopback(args.host) and not args.api_key_env:
        print(f"warning: serving on {args.host} without an API key: anyone who can reach it can use the model; "
              "set one with --api-key-env NAME", file=sys.stderr, flush=True)
    print(f"starting vLLM for {model} (log: {log}) ...", flush=True)
    with VLLMServer(model, adapters, log_path=log, host=args.host, port=args.port, served_name=served,
                    max_model_len=args.max_model_len, kv_cache_gb=args.kv_cache_gb, api_key_env=args.api_key_env) as server:
        needs = f"; clients send the key in ${args.api_key_env}" if args.api_key_env else ""
        print(f"serving {', '.join(server.model_names)} at {server.base_url}{needs} (Ctrl-C to stop)", flush=True)
        while server.alive():
            time.sleep(1)
        raise FtscaleError(f"the vLLM server died; the end of its log:\n{server.log_tail()}")


def _merge(args) -> None:
    from ftscale.train.merge import merge

    print(f"merged checkpoint written to {merge(args.adapter, args.out, base=args.base, force=args.force)}")


def positive_int(text: str) -> int:
    """argparse type: a count of requests in flight (0 would wait for ever)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def concurrency_levels(text: str) -> list[int]:
    """argparse type: comma-separated concurrency levels, `1,4,16`."""
    try:
        return [positive_int(part.strip()) for part in text.split(",")]
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e} in {text!r} (expected positive integers like 1,4,16)") from None


def _bench(args) -> None:
    import json

    cfg = _load(args)
    out = Path(args.output_dir) if args.output_dir else None
    if args.action == "latency":
        from ftscale.serve.latency import run_latency_benchmark

        print(run_latency_benchmark(cfg, args.adapter, args.concurrency, args.num_prompts, out))
    elif args.action == "crosscheck":
        from ftscale.models import resolve
        from ftscale.serve.crosscheck import crosscheck
        from ftscale.serve.server import server_for

        out = out or cfg.experiment_dir / "crosscheck"
        with server_for(cfg, None, out / "vllm-server.log") as server:
            result = crosscheck(cfg, server.base_url, server.served_name, resolve(cfg.model), out,
                                args.num_prompts, args.concurrency, args.output_len)
        print(json.dumps(result["metrics"], indent=2))
    else:
        from ftscale.serve.throughput import run_throughput_benchmark

        result = run_throughput_benchmark(cfg, args.adapter, args.num_prompts, args.concurrency,
                                          out or cfg.experiment_dir / "throughput")
        print(json.dumps(result, indent=2))


def _bench_train(args) -> None:
    from ftscale.train.bench import run_train_benchmark, summary_line

    if args.model:
        args.overrides = [*args.overrides, "--model", args.model]
    cfg = _load(args)
    tag = f"{Path(cfg.model).name}-s{args.seq_len}-b{args.batch}-{'qlora' if cfg.train.quantization == '4bit' else 'lora'}"
    out = Path(args.output) if args.output else Path("runs") / "bench-train" / f"{tag}{'-random' if args.random_init else ''}.json"
    result = run_train_benchmark(cfg, args.seq_len, args.batch, args.steps, args.warmup, args.random_init,
                                 args.peak_tflops, out)
    print(summary_line(result))
    print(f"written to {out}")


def _doctor(args) -> int:
    from . import doctor

    return doctor.run(args.gpu, args.output, args.model, args.seq_len, args.steps, args.warmup, args.examples,
                      args.eval_limit, args.margin)


def _task(args) -> int:
    from ftscale.eval.tasks.check import check_task

    report = check_task(Path(args.task_file))
    print(report.format())
    return 0 if report.ok else 1


def _sweep(args) -> None:
    from ftscale import sweep

    from .errors import StepsFailed

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
    if counts["failed"]:
        raise StepsFailed(f"{counts['failed']} cell(s) failed; `ftscale sweep {args.config} --status` shows their "
                          "errors, and running the sweep again redoes them")


def _rate(args) -> None:
    import json

    from ftscale.eval import rating

    study_dir = Path(args.study) if Path(args.study).is_dir() or "/" in args.study else Path(args.studies_dir) / args.study
    if args.build:
        bad = [b for b in args.build if "=" not in b]
        if bad:
            raise FtscaleError(f"--build {bad[0]}: expected SYSTEM=path/to/generations.jsonl")
        replies = {name: rating.load_replies_from_generations(path) for name, path in (b.split("=", 1) for b in args.build)}
        built = rating.build_study(study_dir.name, replies, study_dir.parent, seed=args.seed, n_pairs_per_system_pair=args.pairs)
        print(f"study written to {built}; rate it with `ftscale rate {args.study}`")
    elif args.judge:
        done = rating.judge_study(study_dir, args.judge, args.persona, args.seed)
        print(f"{done['verdicts']} of {done['pairs']} pairs judged by {done['judge']} ({done['unparsable']} unparsable, "
              f"{done['failed']} failed) in {done['file']}; `ftscale rate {args.study} --report` compares them with the raters")
    elif args.report:
        print(json.dumps(rating.unblind(study_dir), indent=2))
    else:
        rating.run_rating_server(study_dir, args.host, args.port)


def _report(args) -> None:
    import yaml

    from ftscale.eval.report import cost_spec_of, write_report
    from ftscale.eval.tasks import get_task

    from ftscale.eval.migration_report import is_migration, write_migration_report

    exp = Path(args.experiment_dir)

    if is_migration(exp) and (exp / "results.db").is_file():  # `migrate plan` wrote it: the verdict first
        print(write_migration_report(exp))
    if (exp / "results.db").is_file():  # a sweep: the cross-backend comparison report
        from ftscale.sweep import write_report as write_sweep

        html, md = write_sweep(exp, " ".join(["ftscale", "report", *sys.argv[2:]]))
        print(f"{html}\n{md}")
        return
    configs = [exp / "experiment.yaml", *sorted(exp.glob("*/config.yaml"))]
    found = next((c for c in configs if c.is_file()), None)
    if found is None:
        raise FtscaleError(f"{exp}: not an experiment directory (no experiment.yaml, no run directories)")
    overrides = {k: v for k, v in (("prices", args.prices), ("hardware", args.hardware), ("hourly_usd", args.hourly_usd),
                                    ("reference_model", args.reference_model)) if v is not None}
    cost = cost_spec_of(exp, overrides)
    # nothing evaluated yet (or only failed or stale evaluations): write_report says so, writing nothing
    print(write_report(exp, get_task(yaml.safe_load(found.read_text())["task"]), cost))


def _train(args) -> int:
    if args.backend == "openai":
        from ftscale.train import openai_ft

        return openai_ft.main(["--config", str(args.config), *(["--yes"] if args.yes else []), *args.overrides])
    from ftscale.train import sft

    return sft.main(["--config", str(args.config), *args.overrides])


# --- migration off OpenAI fine-tuning (ftscale/openai_org.py, ftscale/migrate.py, ftscale/migrate_plan.py) ---
def _openai(args) -> None:
    from . import openai_org

    print(openai_org.main(args.base_url, args.json, args.deprecations))


def _migrate(args) -> int:
    if args.action == "capture":
        from .migrate import capture

        m = capture(args.model, args.out, base_url=args.base_url, train=args.train, eval_file=args.eval,
                    eval_size=args.eval_size, seed=args.seed, max_new_tokens=args.max_new_tokens,
                    temperature=args.temperature, batch_size=args.batch_size, concurrency=args.concurrency,
                    deprecations=args.deprecations)
        return 1 if m["failed"] else 0
    from .migrate_plan import plan

    print(plan(args.folder, args.model, task=args.task, sizes=args.sizes, seeds=args.seeds, margin=args.margin,
               monthly_requests=args.monthly_requests, judge=args.judge, overrides=args.set, qlora=args.qlora))
    return 0


def _migrate_parsers(sub) -> None:
    o = sub.add_parser("openai", help="the organisation's OpenAI fine-tunes").add_subparsers(dest="action", required=True)
    inv = o.add_parser("inventory", help="every fine-tuning job and ft: model, with the day it stops answering")
    inv.add_argument("--base-url", help="the endpoint the key is paired with (default: OpenAI's)")
    inv.add_argument("--json", action="store_true")
    inv.add_argument("--deprecations", default="configs/openai_deprecations.yaml")
    inv.set_defaults(fn=_openai)
    mig = sub.add_parser("migrate", help="replace an OpenAI fine-tune with a local one: capture, plan")
    msub = mig.add_subparsers(dest="action", required=True)
    c = msub.add_parser("capture", help="download a fine-tune's data and record its answers (resumable, cached)")
    c.add_argument("model", help="the ft: model id")
    c.add_argument("--out", required=True, type=Path, help="the migration folder, e.g. migrations/acme")
    c.add_argument("--base-url", help="the endpoint the key is paired with (default: OpenAI's)")
    c.add_argument("--train", type=Path, help="the training data, when the job's file is gone")
    c.add_argument("--eval", type=Path, help="chat JSONL of prompts to ask (default: the job's validation file, "
                                             "else a held-out split of the training file)")
    c.add_argument("--eval-size", type=int, default=50, help="held-out examples (at most a fifth of the file)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--max-new-tokens", type=int, default=256)
    c.add_argument("--temperature", type=float, default=0.0)
    c.add_argument("--batch-size", type=int, default=16, help="requests per batch (the cache is written after each)")
    c.add_argument("--concurrency", type=int, default=8)
    c.add_argument("--deprecations", default="configs/openai_deprecations.yaml")
    p = msub.add_parser("plan", help="write the sweep that trains local replacements and compares them")
    p.add_argument("folder", type=Path, help="a folder written by `migrate capture`")
    p.add_argument("--model", required=True, action="append", help="a local model (repeat for several)")
    p.add_argument("--task", help="a task YAML whose evaluators score (default: agreement with the fine-tune)")
    p.add_argument("--sizes", help="comma-separated training sizes (default: 0 and halvings of the whole set down to 8)")
    p.add_argument("--seeds", default="42", help="comma-separated training seeds")
    p.add_argument("--margin", type=float, default=0.02, help="non-inferiority margin on the headline metric")
    p.add_argument("--monthly-requests", type=int, default=100_000, help="the traffic the monthly cost is for")
    p.add_argument("--qlora", action="store_true", help="train 4-bit QLoRA adapters instead of LoRA (CUDA)")
    p.add_argument("--judge", help="add agreement_judge with this judge (hf:, openai:, openai:M@URL)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an experiment key for every cell (train.epochs=1, eval.max_new_tokens=64)")
    mig.set_defaults(fn=_migrate)


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
    g.add_argument("--n-train", type=int, help="default: the generator's (formatting 1200, orders 600)")
    g.add_argument("--n-eval", type=int, help="default: the generator's (formatting 200, orders 100)")
    g.add_argument("--out", type=Path)
    c = dsub.add_parser("check", help="validate chat JSONL files (errors as file:line: reason)")
    c.add_argument("files", nargs="+")
    c.add_argument("--kind", choices=["train", "eval"], help="default: eval if the name says so, else train")
    c.add_argument("--model", default="gpt-4.1-mini-2025-04-14", help="OpenAI model whose limits and tokenizer apply")
    c.add_argument("--epochs", type=int, default=3, help="for the billed-token estimate")
    d.set_defaults(fn=_data)

    def with_config(parent, name, fn, helptext, positional=False):
        """A subcommand that takes an experiment config plus --section.key overrides."""
        s = parent.add_parser(name, help=helptext, epilog="Any config key can be overridden: --section.key value")
        s.add_argument(*(["config"] if positional else ["--config"]), type=Path, **({} if positional else {"required": True}))
        s.set_defaults(fn=fn)
        return s

    with_config(sub, "run", _run, "train every size of an experiment, evaluate, write the summary", positional=True)
    t = with_config(sub, "train", _train, "train one adapter (train/sft.py) or launch an OpenAI job (train/openai_ft.py)")
    t.add_argument("--backend", choices=["local", "openai"], default="local")
    t.add_argument("--yes", action="store_true", help="openai: start the job without asking")
    s = with_config(sub, "eval", _eval, "evaluate the base model or an adapter")
    s.add_argument("--backend", choices=["hf", "openai", "vllm"], default="hf",
                   help="hf: in-process transformers; vllm: start a vLLM server for it; "
                        "openai: an OpenAI-compatible endpoint (OpenAI itself, or --base-url)")
    s.add_argument("--adapter", help="a run (or its adapter/ directory); default: the base model")
    s.add_argument("--model", help="openai backend: the model name the endpoint knows (default: config's)")
    s.add_argument("--base-url", help="openai backend: endpoint URL (default: OpenAI's)")
    s.add_argument("--api-key-env", metavar="NAME", help="openai backend: the environment variable holding the key for "
                   "--base-url (only OpenAI's own API gets OPENAI_API_KEY)")
    s.add_argument("--concurrency", type=int, help="openai/vllm: requests in flight (default: serve.concurrency)")
    s.add_argument("--merged", action="store_true",
                   help="vllm: serve the adapter merged into its base (vLLM's LoRA path is slow on a CPU)")
    s.add_argument("--variant", action="append", help="prompt variant(s) (default: eval.prompt_variants)")
    s.add_argument("--output-dir", help="where generations.jsonl and scores.json go")

    v = sub.add_parser("serve", help="start a vLLM OpenAI-compatible server for a model and its adapters")
    v.add_argument("--model", required=True, help="hub id, local directory or configs/models name")
    v.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN_DIR", help="a LoRA adapter to serve as NAME")
    v.add_argument("--merged", action="store_true", help="serve the one adapter merged into its base instead")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, help="default: a free port")
    v.add_argument("--api-key-env", metavar="NAME", help="the environment variable holding the key clients must send "
                   "(vLLM's --api-key, passed without putting the key on any command line); advised off loopback")
    v.add_argument("--max-model-len", type=int, default=2048)
    v.add_argument("--kv-cache-gb", type=float, default=1.0, help="KV cache on a CPU")
    v.add_argument("--log", help="server log file (default: runs/serve/vllm-<time>.log)")
    v.set_defaults(fn=_serve)

    mg = sub.add_parser("merge", help="merge a LoRA adapter into its base model")
    mg.add_argument("adapter", help="a run directory or its adapter/ folder")
    mg.add_argument("--out", required=True, type=Path)
    mg.add_argument("--base", help="base model (default: the one the adapter names)")
    mg.add_argument("--force", action="store_true",
                    help="replace an earlier merge in --out (only a folder `ftscale merge` wrote is ever replaced)")
    mg.set_defaults(fn=_merge)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="action", required=True)
    bl = with_config(bsub, "latency", _bench, "TTFT/TPOT/ITL/E2E of base, LoRA and merged models on vLLM")
    bl.add_argument("--adapter", required=True, help="the fine-tuned run (or its adapter/ folder)")
    bl.add_argument("--concurrency", type=concurrency_levels, default="1,4,16", help="comma-separated levels")
    bl.add_argument("--num-prompts", type=positive_int, default=32, help="eval prompts sent at each level")
    bl.add_argument("--output-dir", help="default: <adapter run>/latency")
    bc = with_config(bsub, "crosscheck", _bench, "our latency numbers vs vLLM's serving benchmark on one server")
    bc.add_argument("--concurrency", type=positive_int, default=1)
    bc.add_argument("--num-prompts", type=positive_int, default=32)
    bc.add_argument("--output-len", type=int, default=32, help="tokens per answer (ignore_eos on both sides)")
    bc.add_argument("--output-dir", help="default: <experiment dir>/crosscheck")
    bt = with_config(bsub, "throughput", _bench, "eval set through vLLM with concurrency vs hf one request at a time")
    bt.add_argument("--adapter", help="a fine-tuned run (default: the base model)")
    bt.add_argument("--concurrency", type=positive_int, default=16)
    bt.add_argument("--num-prompts", type=positive_int, default=200)
    bt.add_argument("--output-dir", help="default: <experiment dir>/throughput")

    btr = bsub.add_parser("train", help="train tokens/s, peak memory and MFU of a LoRA/QLoRA step",
                          epilog="Training knobs as in the config: --train.quantization 4bit, --train.gradient_checkpointing true, ...")
    btr.add_argument("--config", type=Path, default=Path("configs/experiments/formatting-smollm2-cpu.yaml"),
                     help="where the LoRA and training settings come from (default: the main job's)")
    btr.add_argument("--model", help="model reference (default: the config's)")
    btr.add_argument("--seq-len", type=int, default=512)
    btr.add_argument("--batch", type=int, default=1, help="sequences per device and step")
    btr.add_argument("--steps", type=int, default=10, help="measured steps (the median step time counts)")
    btr.add_argument("--warmup", type=int, default=3, help="steps run first and not measured")
    btr.add_argument("--random-init", action="store_true", help="the architecture with random weights: nothing to download")
    btr.add_argument("--peak-tflops", type=float, help="the machine's dense bf16 peak (default: configs/gpus.yaml)")
    btr.add_argument("--output", help="result JSON (default: runs/bench-train/<model>-s<L>-b<B>-<lora|qlora>.json)")
    btr.set_defaults(fn=_bench_train)

    dr = sub.add_parser("doctor", help="what is installed and usable here (ok / missing / broken, with the fix); "
                        "--gpu: correctness, speed and memory on a CUDA GPU")
    dr.add_argument("--gpu", action="store_true", help="also train and evaluate on the GPU, and time 8B-scale steps "
                    "(exit 1 without a CUDA GPU)")
    dr.add_argument("--output", help="the JSON of every figure (default: runs/doctor/doctor-<host>-<time>.json)")
    dr.add_argument("--model", default="llama-3.1-8b", help="--gpu: the architecture timed, random weights (configs/models/)")
    dr.add_argument("--seq-len", type=int, default=2048)
    dr.add_argument("--steps", type=int, default=5, help="--gpu: measured steps per speed run")
    dr.add_argument("--warmup", type=int, default=2)
    dr.add_argument("--examples", type=int, default=100, help="--gpu: training examples of the correctness runs")
    dr.add_argument("--eval-limit", type=int, default=100, help="--gpu: held-out examples they are scored on")
    dr.add_argument("--margin", type=float, help="--gpu: format_ok the QLoRA adapter may lose on the bf16 base (default 0.05)")
    dr.set_defaults(fn=_doctor)

    sw = sub.add_parser("sweep", help="run a grid of cells (configs/sweeps/), resumable; --status to follow it")
    sw.add_argument("config", type=Path)
    sw.add_argument("--status", action="store_true", help="done / running / failed / left, with an ETA")
    sw.add_argument("--fail-fast", action="store_true", help="stop at the first failed cell")
    sw.add_argument("--executor", choices=["slurm", "local", "debug"],
                    help="submit one job per cell through submitit instead of the built-in loop")
    sw.add_argument("--timeout-min", type=int, default=240, help="per job, with --executor")
    sw.add_argument("--max-parallel", type=int, default=1, help="with --executor local: jobs run at once")
    sw.add_argument("--slurm-partition")
    sw.add_argument("--gpus-per-node", type=int, default=1)
    sw.set_defaults(fn=_sweep)

    sub.add_parser("distill", add_help=False,
                   help="training data from a teacher answering customer queries in a persona (resumable, cached)")
    ra = sub.add_parser("rate", help="a double-blind human rating study: build it, serve its page, unblind it")
    ra.add_argument("study", help="a study name (under --studies-dir) or its directory")
    ra.add_argument("--build", nargs="+", metavar="SYSTEM=GENERATIONS", help="build the study from evaluations' generations.jsonl")
    ra.add_argument("--pairs", type=int, help="with --build: queries per pair of systems (default: all they share)")
    ra.add_argument("--seed", type=int, default=0, help="with --build: the A/B order and sample; with --judge: which order is asked first")
    ra.add_argument("--report", action="store_true",
                    help="print the unblinded results (while the page is served: /report?key=<owner key>)")
    ra.add_argument("--judge", metavar="BACKEND:MODEL",
                    help="have an LLM judge the study's pairs (both orders; hf:, openai:, openai:M@URL): llm_judge.json")
    ra.add_argument("--persona", default="rude", help="with --judge: the persona whose tone is judged")
    ra.add_argument("--studies-dir", default="runs/studies")
    ra.add_argument("--host", default="127.0.0.1")
    ra.add_argument("--port", type=int, default=8765)
    ra.set_defaults(fn=_rate)

    tk = sub.add_parser("task", help="user-defined tasks (YAML)").add_subparsers(dest="action", required=True)
    tc = tk.add_parser("check", help="validate a task YAML and its data before any training")
    tc.add_argument("task_file", help="configs/tasks/<name>.yaml or any path")
    tc.set_defaults(fn=_task)

    _migrate_parsers(sub)

    r = sub.add_parser("report", help="write summary.md, results.json, scaling.png and cost.png for an experiment directory")
    r.add_argument("experiment_dir", help="an experiment's directory, or a sweep's (the HTML comparison report)")
    r.add_argument("--prices", help="price table (default: the experiment's cost.prices, configs/prices.yaml)")
    r.add_argument("--hardware", help="the price-table machine local runs are priced as (default: auto)")
    r.add_argument("--hourly-usd", help="your own price per hour of the local machine")
    r.add_argument("--reference-model", help="the bigger model prompted instead of fine-tuning (default: gpt-4.1)")
    r.set_defaults(fn=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    args.overrides = rest
    if args.command == "distill":  # its own parser (data/distill.py)
        from ftscale.data.distill import main as distill_main

        return distill_main(rest)
    if rest and args.command not in ("run", "train", "eval", "bench"):
        build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
    return run_command(lambda: args.fn(args))
