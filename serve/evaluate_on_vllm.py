"""Evaluate (or measure) through a vLLM server ftscale starts for it: the config's model alone, with
LoRA adapters loaded under their own names, or with one adapter merged into its base. The server
stops when the `with` block ends, however it ends.

    with evaluate_on_vllm(cfg, out / "vllm-server.log", {FT: adapter}) as vllm:
        answerer = vllm.answerer(cfg, concurrency, lora=FT)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ftscale.cellrunner import Answerer, endpoint_answerer
from ftscale.stepinputs import model_identity
from ftscale.train.merge import merged_beside

from .server import VLLMServer, server_for

# the name one adapter is served under
FT = "ft"


@dataclass(frozen=True)
class OnVLLM:
    """A server ftscale started, and how to ask it."""

    server: VLLMServer

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def api_key(self) -> str | None:
        """The key every client of the server sends (serve/server.py: a random one of its own)."""
        return self.server.api_key

    def model(self, lora: str | None = None) -> str:
        """The name to ask for: the LoRA module `lora`, else the served model (the base, or the merge)."""
        return lora or self.server.served_name

    def answerer(self, cfg, concurrency: int, lora: str | None = None, label: str = "vllm",
                 adapter: bool | None = None) -> Answerer:
        """The evaluations' answerer on this server. Its identity names what is served, never the URL
        (a fresh port each time); `adapter`: whether an adapter is in the model asked (loaded, or merged
        into the base; default: whether `lora` is asked)."""
        served = {"model": model_identity(cfg.model), "adapter": lora is not None if adapter is None else adapter,
                  "precision": cfg.eval.precision, "serve": cfg.serve.model_dump(mode="json")}
        return endpoint_answerer(self.model(lora), self.base_url, concurrency, label=label, served=served,
                                 api_key=self.api_key)


@contextmanager
def evaluate_on_vllm(cfg, log_path: Path, adapters: dict[str, str | Path] | None = None,
                     merged: str | Path | None = None) -> Iterator[OnVLLM]:
    """A vLLM server for the config's model with its serve.* settings: the base alone, with `adapters`
    loaded as LoRA modules (NAME -> run), or with the adapter `merged` merged into its base (vLLM's
    LoRA path is slow on a CPU; the merged checkpoint computes the same function)."""
    model = str(merged_beside(merged)) if merged else None
    with server_for(cfg, adapters or None, log_path, model=model) as server:
        yield OnVLLM(server)
