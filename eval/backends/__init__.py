"""Backends: a batch of chat requests + sampling settings in, one Generation per request out."""

from ftscale.modelspec import parse_spec, parse_spec_key

from .base import Backend, Generation, Request, Sampling
from .captured import CapturedBackend

# parse_spec and parse_spec_key (ftscale/modelspec.py) stay importable here: callers name a backend by them
__all__ = ["Backend", "Generation", "Request", "Sampling", "make_backend", "make_judge_backend", "parse_spec",
           "parse_spec_key"]


def make_backend(kind: str, **kwargs) -> Backend:
    # hf (torch, transformers) and openai are imported only when asked for: both are slow to import,
    # and every command that names a backend imports this package
    if kind == "hf":
        from .hf import HFBackend

        return HFBackend(**kwargs)
    if kind == "openai":
        from .openai_compat import OpenAIBackend

        return OpenAIBackend(**kwargs)
    if kind == "captured":  # a fine-tune's recorded answers, replayed (ftscale migrate capture)
        return CapturedBackend(**kwargs)
    raise ValueError(f"unknown backend {kind!r}; available: hf, openai, captured")


def make_judge_backend(spec: str) -> Backend:
    """The backend for a model named by `parse_spec`'s syntax, without progress bars."""
    kind, model, base_url, key_env = parse_spec_key(spec)
    if kind == "hf":
        return make_backend("hf", model=model, progress=False)
    return make_backend("openai", model=model, base_url=base_url, api_key_env=key_env, progress=False)
