"""`ftscale migrate serve DIR`: the switch. The local system the verdict chose, on a vLLM OpenAI-compatible
server that answers under the fine-tune's own model name, so the product changes only its base URL and key:

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=...)        # was OpenAI's
    client.chat.completions.create(model="ft:gpt-4o-mini-2024-07-18:acme::abc123", ...)   # unchanged

The system is the first local system whose verdict is YES, at its chosen training size (the first seed),
served exactly as the migration sweep evaluated it (the same vLLM settings of the cell's config), so the
answers the product gets are the ones the report scored. `--system NAME --n N` serves another cell, and
says that no verdict backs it. Loopback by default; on any other address a key is required (`--api-key-env`).
What vLLM cannot serve (a DoRA or PiSSA adapter: ftscale/vllm_compat.py) is refused before starting.
vLLM itself passes `response_format`, streaming and sampling settings through, and answers what it cannot do
(tools without a tool parser, for one) with a 400 that names it.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .apikey import is_loopback
from .config import load_config
from .errors import FtscaleError
from .migrate import MANIFEST
from .serve.server import VLLMServer, server_for
from .vllm_compat import adapter_refusal

RESULTS = "migration-results.json"


@dataclass(frozen=True)
class Chosen:
    system: str
    n: int
    run_dir: Path
    model_id: str  # the fine-tune's id, the name the server answers to
    backed: bool  # whether the verdict says YES for it

    @property
    def label(self) -> str:
        return f"{self.system} n={self.n} ({self.run_dir})"


def _cell(folder: Path, system: str, n: int) -> Path:
    """The run folder of the system's first seed at size n (the untrained base: its `<system> base` cell)."""
    from .sweep import sweep_rows

    rows = [r for r in sweep_rows(folder).rows if r.status == "done" and r.num_train_examples == n
            and r.system in (system, f"{system} base") and r.run_dir]
    if not rows:
        raise FtscaleError(f"{folder}: no finished cell of {system!r} at n={n}: run the sweep first "
                           f"(ftscale sweep {folder / 'sweep.yaml'})")
    return Path(min(rows, key=lambda r: r.seed).run_dir)


def choose(folder: str | Path, system: str | None = None, n: int | None = None) -> Chosen:
    """The system and size to serve: the verdict's, or the one named (said to be unbacked when it is not)."""
    folder = Path(folder)
    if not (folder / RESULTS).is_file():
        raise FtscaleError(f"{folder}: no {RESULTS}: write the report first (ftscale report {folder})")
    res = json.loads((folder / RESULTS).read_text())
    model_id = json.loads((folder / MANIFEST).read_text())["model"]
    yes = {s["name"]: s["verdict"]["smallest_n"] for s in res["systems"] if s["verdict"]["smallest_n"] is not None}
    if system is None and n is None:
        if not yes:
            lines = "; ".join(s["verdict"]["line"] for s in res["systems"])
            raise FtscaleError(f"no local system matches {model_id} yet ({lines}); to serve one all the same, name it: "
                               "--system NAME --n N")
        system = next(iter(yes))
        n = yes[system]
    elif system is None or n is None:
        raise FtscaleError("--system and --n go together: the local system and the training size to serve")
    names = [s["name"] for s in res["systems"]]
    if system not in names:
        raise FtscaleError(f"--system {system!r}: not a local system of this migration ({', '.join(names)})")
    return Chosen(system, n, _cell(folder, system, n), model_id, yes.get(system) is not None and n >= yes[system])


@contextmanager
def serving(chosen: Chosen, log_path: Path, host: str = "127.0.0.1", port: int | None = None,
            api_key_env: str | None = None, random_key: bool = False):
    """The chosen cell on vLLM, under the fine-tune's name, with the settings its evaluation had."""
    if not is_loopback(host) and not api_key_env:
        raise FtscaleError(f"--host {host}: off this machine the server needs a key: --api-key-env NAME (the variable "
                           "holding the key your product will send)")
    cfg = load_config(chosen.run_dir / "config.yaml")
    adapters = None
    if chosen.n > 0:
        refusal = adapter_refusal(chosen.run_dir)
        if refusal:
            raise FtscaleError(f"{chosen.run_dir}: vLLM cannot serve this adapter: {refusal}")
        adapters = {chosen.model_id: chosen.run_dir}
    extra = {} if adapters else {"served_name": chosen.model_id}
    server: VLLMServer = server_for(cfg, adapters, log_path, port=port, host=host, api_key_env=api_key_env,
                                    random_key=random_key, **extra)
    with server:
        yield server


def serve(folder: str | Path, system: str | None = None, n: int | None = None, host: str = "127.0.0.1",
          port: int | None = None, api_key_env: str | None = None, log=print) -> None:
    """Serve the chosen system in the foreground until Ctrl-C, SIGTERM or SIGHUP."""
    folder = Path(folder)
    chosen = choose(folder, system, n)
    if not chosen.backed:
        log(f"warning: the verdict does not back {chosen.label}: it was not shown to match {chosen.model_id}")
    log_path = folder / "serve" / f"vllm-{int(time.time())}.log"
    log(f"starting vLLM for {chosen.label} as {chosen.model_id} (log: {log_path}) ...")
    with serving(chosen, log_path, host, port, api_key_env) as server:
        key = f"the key in ${api_key_env}" if api_key_env else "any key (none is checked on loopback)"
        log(f"serving {chosen.system} n={chosen.n} as {chosen.model_id} at {server.base_url} (Ctrl-C to stop)\n"
            f"  point the product's client there: OpenAI(base_url=\"{server.base_url}\", api_key=<{key}>), "
            f"model=\"{chosen.model_id}\" unchanged")
        while server.alive():
            time.sleep(1)
        raise FtscaleError(f"the vLLM server died; the end of its log:\n{server.log_tail()}")
