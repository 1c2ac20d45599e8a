"""Backends: a batch of chat requests + sampling settings in, one Generation per request out."""

from typing import Annotated

from pydantic import AfterValidator

from .base import Backend, Generation, Request, Sampling

__all__ = ["Backend", "Generation", "ModelSpec", "Request", "Sampling", "make_backend", "make_judge_backend", "parse_spec"]


def make_backend(kind: str, **kwargs) -> Backend:
    if kind == "hf":
        from .hf import HFBackend

        return HFBackend(**kwargs)
    if kind == "openai":
        from .openai_compat import OpenAIBackend

        return OpenAIBackend(**kwargs)
    if kind == "captured":  # a fine-tune's recorded answers, replayed (ftscale migrate capture)
        from .captured import CapturedBackend

        return CapturedBackend(**kwargs)
    raise ValueError(f"unknown backend {kind!r}; available: hf, openai, captured")


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """A model named for a job (a teacher, a judge) as `hf:<model ref>`, `openai:<model>` (OpenAI, or
    the server OPENAI_BASE_URL names) or `openai:<model>@<base_url>` (any OpenAI-compatible server,
    e.g. a local vLLM one: `openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1`).
    Returns (backend kind, model, base_url)."""
    import os

    kind, _, model = spec.partition(":")
    if kind == "hf" and model.strip():
        return "hf", model, None
    if kind == "openai" and model.strip():
        name, at, url = model.rpartition("@")
        if at and url.startswith(("http://", "https://")) and name:
            return "openai", name, url
        return "openai", model, os.environ.get("OPENAI_BASE_URL") or None
    raise ValueError(f"{spec!r}: use hf:<model>, openai:<model> or openai:<model>@<base_url> "
                     "(a local vLLM server: openai:<served name>@http://127.0.0.1:PORT/v1)")


def _checked_spec(spec: str) -> str:
    parse_spec(spec)  # its ValueError names what is wrong
    return spec


# A config field naming a model by `parse_spec`'s syntax (a judge, a teacher), checked on load.
ModelSpec = Annotated[str, AfterValidator(_checked_spec)]


def make_judge_backend(spec: str) -> Backend:
    """The backend for a model named by `parse_spec`'s syntax, without progress bars."""
    kind, model, base_url = parse_spec(spec)
    if kind == "hf":
        return make_backend("hf", model=model, progress=False)
    return make_backend("openai", model=model, base_url=base_url, progress=False)
