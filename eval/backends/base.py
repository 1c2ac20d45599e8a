"""The backend contract every way of generating shares: Requests and Sampling in, a Generation per request out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 96
    seed: int = 0
    ignore_eos: bool = False  # generate exactly max_new_tokens (latency at equal output length)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Request:
    id: str
    messages: list[dict]


@dataclass
class Generation:
    """One request's outcome. Times are seconds from the moment the request was submitted."""

    text: str
    input_tokens: int
    output_tokens: int
    ttft_s: float | None  # time to first token
    latency_s: float | None  # end-to-end: submitted until the last token (None: not measured, a replayed answer)
    finish_reason: str  # "stop" (end-of-turn), "length" (max_new_tokens) or "error"
    error: str | None = None
    extra: dict = field(default_factory=dict)


class Backend(Protocol):
    name: str  # "hf", "openai", ...
    model: str  # what the backend calls the model (path, hub id, adapter name)

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Generation]: ...
