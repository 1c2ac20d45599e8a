"""`ftscale openai inventory` and `ftscale migrate capture|plan`: off OpenAI fine-tuning
(ftscale/openai_org.py, ftscale/migrate.py, ftscale/migrate_plan.py)."""

from __future__ import annotations

from pathlib import Path


KEY_HELP = ("the environment variable holding the key of --base-url's endpoint; without it, an endpoint other "
            "than OpenAI's API gets no key (--api-key-env OPENAI_API_KEY sends your OpenAI key there)")


def add_parser(sub) -> None:
    o = sub.add_parser("openai", help="the organisation's OpenAI fine-tunes").add_subparsers(dest="action", required=True)
    inv = o.add_parser("inventory", help="every fine-tuning job and ft: model, with the day it stops answering")
    inv.add_argument("--base-url", help="another endpoint than OpenAI's API (default: OPENAI_BASE_URL, else OpenAI's)")
    inv.add_argument("--api-key-env", metavar="NAME", help=KEY_HELP)
    inv.add_argument("--json", action="store_true")
    inv.add_argument("--deprecations", default="configs/openai_deprecations.yaml")
    inv.set_defaults(fn=run_inventory)
    mig = sub.add_parser("migrate", help="replace an OpenAI fine-tune with a local one: capture, plan, serve, shadow")
    msub = mig.add_subparsers(dest="action", required=True)
    c = msub.add_parser("capture", help="download a fine-tune's data and record its answers (resumable, cached)")
    c.add_argument("model", help="the ft: model id")
    c.add_argument("--output-dir", required=True, type=Path, hidden=("--out",), help="the migration folder, e.g. migrations/acme")
    c.add_argument("--from", dest="source", default="ask", metavar="ask|stored|FILE",
                   help="where the eval prompts and the fine-tune's answers come from: ask (re-ask prompts, the "
                        "default), stored (OpenAI's stored completions of the model: requests made with store=true), "
                        "or FILE (your request log: chat JSONL ending with the fine-tune's answer)")
    c.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                   help="--from stored: only the completions with this metadata (repeatable)")
    c.add_argument("--base-url", help="another endpoint than OpenAI's API (default: OPENAI_BASE_URL, else OpenAI's)")
    c.add_argument("--api-key-env", metavar="NAME", help=KEY_HELP)
    c.add_argument("--train", type=Path, help="the training data, when the job's file is gone")
    c.add_argument("--eval", type=Path, help="--from ask: chat JSONL of prompts to ask (default: the job's validation "
                                             "file, else a held-out split of the training file)")
    c.add_argument("--eval-size", type=int, default=300,
                   help="held-out examples (default 300, at most a fifth of the file; 195 agreeing items are what a "
                        "margin of 0.02 needs)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--max-new-tokens", type=int, default=256)
    c.add_argument("--temperature", type=float,
                   help="--from ask: the temperature to ask at (default 0); from traffic: the one the product used")
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
    p.add_argument("--qlora", action="store_true", help="train 4-bit QLoRA adapters instead of LoRA (wherever bitsandbytes "
                   "runs; served on the bf16 base)")
    p.add_argument("--judge", help="add agreement_judge with this judge (hf:, openai:, openai:M@URL)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an experiment key for every cell (train.epochs=1, eval.max_new_tokens=64)")
    sv = msub.add_parser("serve", help="serve the chosen local system under the fine-tune's own model name (vLLM)")
    sv.add_argument("folder", type=Path, help="a migration folder with its report written (ftscale report DIR)")
    sv.add_argument("--system", help="a local system to serve instead of the verdict's (with --n)")
    sv.add_argument("--n", type=int, help="its training size")
    sv.add_argument("--host", default="127.0.0.1", help="default: this machine only; elsewhere --api-key-env is required")
    sv.add_argument("--port", type=int, help="default: a free port")
    sv.add_argument("--api-key-env", metavar="NAME", help="the variable holding the key the product must send")
    sh = msub.add_parser("shadow", help="replay recent requests to the fine-tune and the local system and re-check the "
                                        "verdict on them alone")
    sh.add_argument("folder", type=Path, help="a migration folder with its report written")
    sh.add_argument("--requests", required=True, type=Path, help="chat JSONL of recent requests (a final assistant "
                                                                  "turn is ignored)")
    sh.add_argument("--name", help="the shadow set's name (default: the requests file's name)")
    sh.add_argument("--system", help="the local system to check instead of the verdict's (with --n; the one served)")
    sh.add_argument("--n", type=int, help="its training size")
    sh.add_argument("--local-url", help="a running `ftscale migrate serve` (default: start the chosen system)")
    sh.add_argument("--local-api-key-env", metavar="NAME", help="the variable holding --local-url's key")
    sh.add_argument("--base-url", help="the fine-tune's endpoint, if not OpenAI's API")
    sh.add_argument("--api-key-env", metavar="NAME", help=KEY_HELP)
    sh.add_argument("--concurrency", type=int, default=8)
    mig.set_defaults(fn=run_migrate)


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    from ftscale.errors import ConfigError

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"{flag} {item}: expected KEY=VALUE")
        out[key] = value
    return out


# The job modules are imported inside the functions below: each imports the openai client, half a
# second at every start-up of every command.
def run_inventory(args) -> None:
    from ftscale import openai_org

    print(openai_org.main(args.base_url, args.json, args.deprecations, api_key_env=args.api_key_env))


def run_migrate(args) -> int:
    if args.action == "capture":
        from ftscale.migrate import capture

        m = capture(args.model, args.output_dir, source=args.source, base_url=args.base_url,
                    api_key_env=args.api_key_env, train=args.train, eval_file=args.eval, eval_size=args.eval_size,
                    seed=args.seed, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    metadata=_pairs(args.metadata, "--metadata"), batch_size=args.batch_size,
                    concurrency=args.concurrency, deprecations=args.deprecations)
        return 1 if m["failed"] else 0
    if args.action == "serve":
        from ftscale.migrate_serve import serve

        serve(args.folder, args.system, args.n, host=args.host, port=args.port, api_key_env=args.api_key_env,
              log=lambda text: print(text, flush=True))
        return 0
    if args.action == "shadow":
        from ftscale.migrate_shadow import shadow

        r = shadow(args.folder, args.requests, name=args.name, local_url=args.local_url,
                   local_api_key_env=args.local_api_key_env, base_url=args.base_url, api_key_env=args.api_key_env,
                   system=args.system, n=args.n, concurrency=args.concurrency)
        return 1 if r["failed"]["fine_tune"] or r["failed"]["local"] else 0
    from ftscale.migrate_plan import plan

    print(plan(args.folder, args.model, task=args.task, sizes=args.sizes, seeds=args.seeds, margin=args.margin,
               monthly_requests=args.monthly_requests, judge=args.judge, overrides=args.set, qlora=args.qlora))
    return 0
