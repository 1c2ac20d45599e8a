"""`ftscale serve`: a vLLM OpenAI-compatible server for a model and its adapters (serve/foreground.py)."""

from __future__ import annotations

from ftscale.errors import FtscaleError
from ftscale.serve.foreground import serve_until_stopped


def add_parser(sub) -> None:
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
    v.set_defaults(fn=run)


def run(args) -> None:
    bad = [a for a in args.adapter if "=" not in a]
    if bad:
        raise FtscaleError(f"--adapter {bad[0]}: expected NAME=RUN_DIR")
    serve_until_stopped(args.model, dict(a.split("=", 1) for a in args.adapter), merged=args.merged, host=args.host,
                        port=args.port, api_key_env=args.api_key_env, max_model_len=args.max_model_len,
                        kv_cache_gb=args.kv_cache_gb, log=args.log)
