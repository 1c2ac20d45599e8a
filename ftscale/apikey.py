"""Which API key goes to which endpoint, and keeping keys out of error text.

The key rule, the one place every OpenAI client is built through (`openai_client`):

- OpenAI's own API (https://api.openai.com/...) gets OPENAI_API_KEY, or the first line of the
  file OPENAI_API_KEY_FILE names.
- Any other endpoint gets a key only when the user pairs one with it: the name of an environment
  variable holding it (`openai.api_key_env` beside `openai.base_url`, `--api-key-env` beside
  `--base-url`, `openai:MODEL@URL#ENV_NAME`). Unpaired, it gets a placeholder that is no secret
  (a vLLM server started without --api-key ignores it).
- No key travels over plain http to a host other than this machine.
- A server ftscale starts itself (serve/server.py) has a random key of its own, which ftscale's
  clients of it are handed directly (`api_key=`): only to an endpoint on this machine.

Keys come from the environment only and are written nowhere; `mask` removes them (and anything
that looks like one) from provider error text before it is stored or printed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from . import loopback
from .errors import FtscaleError
from .loopback import is_loopback  # noqa: F401 - imported from here by the rest of ftscale

MISSING = "set OPENAI_API_KEY, or OPENAI_API_KEY_FILE to a file holding the key"
OPENAI_API = "https://api.openai.com/v1"
PLACEHOLDER = "EMPTY"  # sent where no key is due: the openai client insists on some token
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_handed_out: set[str] = set()  # every key given to a client, so that `mask` knows their values


def openai_api_key() -> str | None:
    """OPENAI_API_KEY, else the first line of the file OPENAI_API_KEY_FILE names; None if neither is set."""
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        return key
    name = os.environ.get("OPENAI_API_KEY_FILE")
    if not name:
        return None
    try:
        key = Path(name).expanduser().read_text(encoding="utf-8").strip().splitlines()[0].strip()
    except (OSError, IndexError):
        raise FtscaleError(f"OPENAI_API_KEY_FILE={name}: cannot read a key from that file") from None
    if not key:
        raise FtscaleError(f"OPENAI_API_KEY_FILE={name}: the file's first line is empty")
    return key


def endpoint_url(base_url: str | None) -> str:
    """The URL requests really go to: the one given, else OPENAI_BASE_URL, else OpenAI's API. Resolved
    here, not by the openai client, so that the key rule judges the actual destination."""
    return base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_API


def is_openai_api(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" and parts.hostname == "api.openai.com"


def valid_env_name(name: str) -> bool:
    return bool(_ENV_NAME.match(name))


def key_for(base_url: str | None, api_key_env: str | None = None, api_key: str | None = None) -> str | None:
    """The key to send to `base_url` (see the module's rule), or None when none is due. Refuses an
    unset paired variable, OpenAI's API without a key, and a key over plain http to another host.
    `api_key`: the key of a server ftscale started on this machine (refused for any other endpoint)."""
    url = endpoint_url(base_url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FtscaleError(f"{url}: the endpoint must be an http:// or https:// URL")
    if api_key:
        if not loopback.is_loopback_url(url):
            raise FtscaleError(f"{url}: the key of a server ftscale started goes only to this machine")
        key = api_key
    elif api_key_env:
        if not valid_env_name(api_key_env):
            raise FtscaleError(f"api key env {api_key_env!r}: give the name of an environment variable, not a key")
        # naming OPENAI_API_KEY pairs the user's OpenAI key, wherever it is kept (its variable or file)
        key = openai_api_key() if api_key_env == "OPENAI_API_KEY" else os.environ.get(api_key_env)
        if not key:
            raise FtscaleError(f"{api_key_env} is not set: it should hold the API key for {url}")
    elif is_openai_api(url):
        key = openai_api_key()
        if key is None:
            raise FtscaleError(f"{url} needs a key: {MISSING}")
    else:
        return None
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise FtscaleError(f"{url}: refusing to send an API key over plain http to another machine; use https")
    _handed_out.add(key)
    return key


def openai_client(base_url: str | None, api_key_env: str | None = None, *, api_key: str | None = None,
                  asynchronous: bool = False, **kwargs):
    """An `openai.OpenAI` (or `AsyncOpenAI`) client for the endpoint, carrying only the key due to it.
    The URL and key are always passed explicitly so that the client's own fallbacks to
    OPENAI_BASE_URL / OPENAI_API_KEY cannot send the key somewhere else. A client of this machine
    never goes through an http_proxy (ftscale/loopback.py)."""
    import openai

    key = key_for(base_url, api_key_env, api_key)
    cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    if loopback.is_loopback_url(endpoint_url(base_url)) and "http_client" not in kwargs:
        kwargs["http_client"] = loopback.httpx_client(asynchronous)  # never through an http_proxy
    return cls(base_url=endpoint_url(base_url), api_key=key or PLACEHOLDER, **kwargs)


def pairing_hint(base_url: str | None, api_key_env: str | None) -> str | None:
    """For an endpoint that refused a request with 401: how to pair a key with it, when the refusal is because
    none was (a non-OpenAI endpoint gets a key only when paired); None when a key was sent."""
    url = endpoint_url(base_url)
    if api_key_env or is_openai_api(url):
        return None
    return unpaired_401(url)


def unpaired_401(url: str) -> str:
    return (f"{url} refused the request (401): ftscale sends an API key only to OpenAI's API or to an endpoint you "
            "pair one with; pair it: --api-key-env NAME, NAME the environment variable holding that endpoint's key "
            "(--api-key-env OPENAI_API_KEY sends your OpenAI key there)")


_LOOKS_LIKE_KEY = re.compile(r"\b(sk-)[A-Za-z0-9_*.\-]{6,}|\b(Bearer)\s+[A-Za-z0-9._~+/=*\-]+", re.IGNORECASE)


def mask(text: str) -> str:
    """`text` with every known key value, anything shaped like an OpenAI key (sk-...) and any
    `Bearer <token>` replaced by `***`."""
    if not text:
        return text
    known = _handed_out | {os.environ.get("OPENAI_API_KEY") or ""}
    for key in sorted(known, key=len, reverse=True):
        if len(key) >= 6:  # a tiny "key" would mangle ordinary words
            text = text.replace(key, "***")
    return _LOOKS_LIKE_KEY.sub(lambda m: f"{m.group(1) or m.group(2) + ' '}***", text)
