"""Backends: a batch of chat requests + sampling settings in, one Generation per request out."""

from typing import Annotated

from pydantic import AfterValidator

from .base import Backend, Generation, Request, Sampling

__all__ = ["Backend", "Generation", "ModelSpec", "Request", "Sampling", "make_backend", "make_judge_backend", "parse_spec",
           "parse_spec_key"]


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


def parse_spec_key(spec: str) -> tuple[str, str, str | None, str | None]:
    """A model named for a job (a teacher, a judge) as `hf:<model ref>`, `openai:<model>` (OpenAI, or
    the server OPENAI_BASE_URL names) or `openai:<model>@<base_url>` (any OpenAI-compatible server,
    e.g. a local vLLM one: `openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1`). An openai
    spec may end in `#ENV_NAME`, the environment variable holding the key for that endpoint
    (`openai:m@https://provider.example/v1#PROVIDER_KEY`); without it only OpenAI's own API gets a
    key (ftscale/apikey.py). Returns (backend kind, model, base_url, key env name)."""
    import os

    from ftscale.apikey import valid_env_name

    kind, _, model = spec.partition(":")
    if kind == "hf" and model.strip():
        return "hf", model, None, None
    if kind == "openai" and model.strip():
        rest, hash_, env = model.rpartition("#")
        env = env if hash_ else None
        if env is not None:
            if not (valid_env_name(env) and rest.strip()):
                raise ValueError(f"{spec!r}: after '#' give the name of the environment variable that holds the "
                                 "key (openai:<model>@<base_url>#ENV_NAME)")
            model = rest
        name, at, url = model.rpartition("@")
        if at and url.startswith(("http://", "https://")) and name:
            return "openai", name, url, env
        return "openai", model, os.environ.get("OPENAI_BASE_URL") or None, env
    raise ValueError(f"{spec!r}: use hf:<model>, openai:<model> or openai:<model>@<base_url>[#KEY_ENV] "
                     "(a local vLLM server: openai:<served name>@http://127.0.0.1:PORT/v1)")


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """(backend kind, model, base_url) of a spec; see `parse_spec_key`."""
    return parse_spec_key(spec)[:3]


def _checked_spec(spec: str) -> str:
    parse_spec(spec)  # its ValueError names what is wrong
    return spec


# A config field naming a model by `parse_spec`'s syntax (a judge, a teacher), checked on load.
ModelSpec = Annotated[str, AfterValidator(_checked_spec)]


def make_judge_backend(spec: str) -> Backend:
    """The backend for a model named by `parse_spec`'s syntax, without progress bars."""
    kind, model, base_url, key_env = parse_spec_key(spec)
    if kind == "hf":
        return make_backend("hf", model=model, progress=False)
    return make_backend("openai", model=model, base_url=base_url, api_key_env=key_env, progress=False)
