"""Backends: a batch of chat requests + sampling settings in, one Generation per request out."""

from .base import Backend, Generation, Request, Sampling

__all__ = ["Backend", "Generation", "Request", "Sampling", "make_backend", "make_judge_backend"]


def make_backend(kind: str, **kwargs) -> Backend:
    if kind == "hf":
        from .hf import HFBackend

        return HFBackend(**kwargs)
    if kind == "openai":
        from .openai_compat import OpenAIBackend

        return OpenAIBackend(**kwargs)
    raise ValueError(f"unknown backend {kind!r}; available: hf, openai")


def make_judge_backend(spec: str) -> Backend:
    """A judge named `hf:<model ref>` (in-process) or `openai:<model>` (OpenAI, or any OpenAI-compatible
    server such as a vLLM one named by OPENAI_BASE_URL)."""
    import os

    kind, _, model = spec.partition(":")
    if kind == "hf":
        return make_backend("hf", model=model, progress=False)
    if kind == "openai":
        return make_backend("openai", model=model, base_url=os.environ.get("OPENAI_BASE_URL"), progress=False)
    raise ValueError(f"judge {spec!r}: use hf:<model> or openai:<model> (a vLLM server: openai:<served name> "
                     "with OPENAI_BASE_URL=http://127.0.0.1:PORT/v1)")
