"""`ftscale serve`: one vLLM server in the foreground, for a model and its LoRA adapters (or one
adapter merged into its base), until Ctrl-C, a scheduler's SIGTERM or a closed terminal's SIGHUP stops it
(ftscale/errors.py run_command: exit 130, 143, 129). Once it is up, a few
greedy answers of each served model must end their turn (train/stop_check.py): a warning if not."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ftscale.apikey import is_loopback
from ftscale.errors import FtscaleError
from ftscale.rundir import adapter_dir
from ftscale.train import stop_check
from ftscale.train.merge import merged_beside

from .server import VLLMServer


def serve_until_stopped(model: str, adapters: dict[str, str], merged: bool = False, host: str = "127.0.0.1",
                        port: int | None = None, api_key_env: str | None = None, max_model_len: int = 2048,
                        kv_cache_gb: float = 1.0, log: str | None = None) -> None:
    """Serve `model` with `adapters` (NAME -> run), or with the one adapter merged into it and served
    under its NAME; raises FtscaleError if the server dies."""
    served = None
    first = next(iter(adapters.values()), None)  # its run's eval prompts are the stop check's
    if merged:
        if len(adapters) != 1:
            raise FtscaleError("--merged serves one adapter merged into its base: give exactly one --adapter")
        (served, path), = adapters.items()
        model, adapters = str(merged_beside(path, base=model)), {}
    log_path = Path(log or Path("runs") / "serve" / f"vllm-{int(time.time())}.log")
    if not is_loopback(host) and not api_key_env:
        print(f"warning: serving on {host} without an API key: anyone who can reach it can use the model; "
              "set one with --api-key-env NAME", file=sys.stderr, flush=True)
    print(f"starting vLLM for {model} (log: {log_path}) ...", flush=True)
    # no key unless the user names one (--api-key-env): clients of this server are the user's, as documented
    with VLLMServer(model, adapters, log_path=log_path, host=host, port=port, served_name=served,
                    max_model_len=max_model_len, kv_cache_gb=kv_cache_gb, api_key_env=api_key_env,
                    random_key=False) as server:
        needs = f"; clients send the key in ${api_key_env}" if api_key_env else ""
        print(f"serving {', '.join(server.model_names)} at {server.base_url}{needs} (Ctrl-C to stop)", flush=True)
        stop_check.check_server(server.base_url, server.api_key or "EMPTY",
                                server.model_names, server.model_path, first and adapter_dir(first).parent)
        while server.alive():
            time.sleep(1)
        raise FtscaleError(f"the vLLM server died; the end of its log:\n{server.log_tail()}")
