"""Traffic to this machine never goes through a proxy.

On a cluster `http_proxy`/`https_proxy` are often set without `no_proxy`; urllib, httpx and aiohttp
read them and would send requests for 127.0.0.1 to the proxy: a server's start-up check waits until
its timeout, and prompts leave the machine. Every client of a loopback address is therefore built
without the environment's proxies (`opener`, `httpx_client`), and a child process that talks to one
(vLLM's benchmark) gets the loopback names added to its `no_proxy` (`child_env`).
"""

from __future__ import annotations

import ipaddress
import urllib.request
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str | None) -> bool:
    """Whether `url` reaches this machine: a loopback host, or the unspecified address a server bound to
    all interfaces is asked at (`ftscale serve --host 0.0.0.0`)."""
    host = urlsplit(url or "").hostname
    return bool(host) and (is_loopback(host) or host in ("0.0.0.0", "::"))


def opener() -> urllib.request.OpenerDirector:
    """urllib without the environment's proxies (urlopen's default opener reads them)."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def httpx_client(asynchronous: bool = False, **kwargs):
    """An httpx client for a loopback endpoint (the openai client's `http_client`): trust_env=False keeps
    http_proxy/https_proxy/all_proxy out of it. Built with openai's defaults (timeouts, limits)."""
    import openai

    cls = openai.DefaultAsyncHttpxClient if asynchronous else openai.DefaultHttpxClient
    return cls(trust_env=False, **kwargs)


def child_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the loopback names in no_proxy and NO_PROXY (added to what is there)."""
    out = dict(env)
    for name in ("no_proxy", "NO_PROXY"):
        have = [h for h in out.get(name, "").split(",") if h.strip()]
        out[name] = ",".join(have + [h for h in LOOPBACK_NAMES if h not in have])
    return out
