"""How a model is named for a job (a teacher, a judge): `hf:<model>`, `openai:<model>[@<base_url>][#KEY_ENV]`.

Config files name such models (a task's judge, an experiment's `eval.judge`), so the syntax is
checked where they are loaded (`ModelSpec`), apart from the backends that later run the model.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import AfterValidator

from .apikey import valid_env_name


def parse_spec_key(spec: str) -> tuple[str, str, str | None, str | None]:
    """A model named for a job (a teacher, a judge) as `hf:<model ref>`, `openai:<model>` (OpenAI, or
    the server OPENAI_BASE_URL names) or `openai:<model>@<base_url>` (any OpenAI-compatible server,
    e.g. a local vLLM one: `openai:Qwen/Qwen2.5-7B-Instruct@http://127.0.0.1:8000/v1`). An openai
    spec may end in `#ENV_NAME`, the environment variable holding the key for that endpoint
    (`openai:m@https://provider.example/v1#PROVIDER_KEY`); without it only OpenAI's own API gets a
    key (ftscale/apikey.py). Returns (backend kind, model, base_url, key env name)."""
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
