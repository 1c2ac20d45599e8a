"""Backends: a batch of chat requests + sampling settings in, one Generation per request out."""

from .base import Backend, Generation, Request, Sampling

__all__ = ["Backend", "Generation", "Request", "Sampling", "make_backend"]


def make_backend(kind: str, **kwargs) -> Backend:
    if kind == "hf":
        from .hf import HFBackend

        return HFBackend(**kwargs)
    if kind == "openai":
        from .openai_compat import OpenAIBackend

        return OpenAIBackend(**kwargs)
    raise ValueError(f"unknown backend {kind!r}; available: hf, openai")
