"""The `openai` backend: any OpenAI-compatible endpoint (a vLLM server, OpenAI, other providers).

Requests are streamed so that time to first token and inter-token latencies are measured the
way vLLM's serving benchmark measures them; `stream_options.include_usage` gives the token
counts. Retries (429, 5xx, timeouts, dropped connections) back off exponentially, are bounded,
and are logged; a request that still fails is returned with its error, never dropped.
Which key goes to which endpoint is ftscale/apikey.py's rule (`api_key`: the random key of a server
ftscale started on this machine); keys are never written anywhere, and provider error text is masked
before it is logged or recorded. A loopback endpoint is never asked through an http_proxy.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import httpx
import openai

from ftscale import progress as progress_view  # the run's one view, when there is one
from ftscale.apikey import key_for, mask, openai_client

from .base import Generation, Request, Sampling

log = logging.getLogger(__name__)


class IncompleteStream(Exception):
    """The stream ended without a finish reason: the connection broke and the answer is cut."""


def _retryable(e: Exception) -> bool:
    # httpx errors surface directly when a stream breaks after the response has started
    if isinstance(e, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, httpx.TransportError,
                      IncompleteStream)):
        return True
    return isinstance(e, openai.APIStatusError) and e.status_code >= 500


class OpenAIBackend:
    def __init__(self, model: str, base_url: str | None = None, api_key_env: str | None = None, concurrency: int = 8,
                 max_retries: int = 4, backoff_s: float = 1.0, timeout_s: float = 300.0, progress: bool = True,
                 name: str = "openai", api_key: str | None = None):
        self.name = name  # "vllm" when the endpoint is a server that ftscale started
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self._api_key = api_key
        key_for(base_url, api_key_env, api_key)  # a missing or misdirected key is refused before any work
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.progress = progress

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Generation]:
        return asyncio.run(self._generate(requests, sampling))

    async def _generate(self, requests: list[Request], sampling: Sampling) -> list[Generation]:
        client = openai_client(self.base_url, self.api_key_env, api_key=self._api_key, asynchronous=True, max_retries=0,
                               timeout=self.timeout_s)
        gate = asyncio.Semaphore(self.concurrency)
        bar = progress_view.bar(len(requests), f"generating ({self.model})", "req", disable=not self.progress)

        async def one(req: Request) -> Generation:
            async with gate:
                gen = await self._with_retries(client, req, sampling)
            bar.update(1)
            return gen

        try:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            bar.close()
            await client.close()

    async def _with_retries(self, client, req: Request, sampling: Sampling) -> Generation:
        for attempt in range(self.max_retries + 1):
            try:
                gen = await self._stream(client, req, sampling)
                gen.extra["attempts"] = attempt + 1
                return gen
            except Exception as e:  # noqa: BLE001 - every failure is either retried or recorded
                if not _retryable(e) or attempt == self.max_retries:
                    return Generation(text="", input_tokens=0, output_tokens=0, ttft_s=None, latency_s=0.0,
                                      finish_reason="error", error=mask(f"{type(e).__name__}: {e}"),
                                      extra={"attempts": attempt + 1})
                delay = self.backoff_s * 2**attempt * (0.5 + random.random())
                response = getattr(e, "response", None)
                try:  # a server that says when to come back is believed
                    delay = max(delay, float(response.headers.get("retry-after", 0))) if response is not None else delay
                except ValueError:
                    pass
                log.warning("request %s failed (%s: %s); retry %d/%d in %.1f s", req.id, type(e).__name__, mask(str(e)),
                            attempt + 1, self.max_retries, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _stream(self, client, req: Request, sampling: Sampling) -> Generation:
        kwargs = dict(model=self.model, messages=req.messages, stream=True, stream_options={"include_usage": True},
                      temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                      seed=sampling.seed)
        if sampling.ignore_eos:  # a vLLM extension of the API
            kwargs["extra_body"] = {"ignore_eos": True}
        start = time.perf_counter()
        stream = await client.chat.completions.create(**kwargs)
        pieces, arrivals, usage, finish = [], [], None, None
        async for chunk in stream:
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.delta and choice.delta.content:
                    pieces.append(choice.delta.content)
                    arrivals.append(time.perf_counter())
                finish = choice.finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
        end = time.perf_counter()
        if finish is None:
            raise IncompleteStream(f"the stream ended after {len(pieces)} chunks without a finish reason")
        return Generation(
            text="".join(pieces),
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else len(pieces),
            ttft_s=arrivals[0] - start if arrivals else None,
            latency_s=end - start,
            finish_reason=finish,
            # gaps between streamed chunks: vLLM's ITL (a chunk may carry several tokens)
            extra={"itl_s": [b - a for a, b in zip(arrivals, arrivals[1:])]},
        )
