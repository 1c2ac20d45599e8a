"""`ftscale eval`: evaluate the base model or an adapter (ftscale/evaluate_one.py)."""

from __future__ import annotations

from .config_args import load, with_config


def add_parser(sub) -> None:
    s = with_config(sub, "eval", run, "evaluate the base model or an adapter")
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
    s.add_argument("--output-dir", help="where generations.jsonl and scores.json go (default: beside the cell's other "
                   "evaluations in the experiment folder; that folder's root is the config's output_dir, set in the file)")


def run(args) -> None:
    cfg = load(args)
    # imported here: evaluate_one imports the openai client (train/openai_ft.py), half a second at every start-up
    from ftscale.evaluate_one import evaluate_one

    out = evaluate_one(cfg, args.backend, adapter=args.adapter, model=args.model, base_url=args.base_url,
                       api_key_env=args.api_key_env, concurrency=args.concurrency, merged=args.merged,
                       variants=args.variant, output_dir=args.output_dir)
    print(f"results in {out}")
