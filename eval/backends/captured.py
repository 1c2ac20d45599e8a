"""The `captured` backend: a fine-tune's recorded answers replayed by example id.

`ftscale migrate capture` asks an OpenAI fine-tune every eval prompt while it still serves and
writes `captured.jsonl`; this backend returns those records (text, token counts, TTFT, latency as
measured then), so a sweep can keep the fine-tune as its reference after OpenAI switched it off.
A request whose id was not captured, or whose prompt differs from the one the fine-tune was
asked, is returned as failed with the reason: never a made-up answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftscale.chatdata import json_lines
from ftscale.errors import FtscaleError

from .base import Generation, Request, Sampling


class CapturedBackend:
    def __init__(self, path: str | Path, model: str | None = None, name: str = "openai-captured", **_ignored):
        # "openai-" so the cost model prices the rows at the fine-tune's OpenAI token prices
        self.name = name
        self.path = Path(path)
        if not self.path.is_file():
            raise FtscaleError(f"{self.path}: no captured answers (run `ftscale migrate capture` first)")
        self.records = {str(rec["id"]): rec for _, rec in json_lines(self.path)}
        models = {rec.get("model") for rec in self.records.values()}
        self.model = model or (models.pop() if len(models) == 1 else str(self.path))

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Generation]:
        return [self._one(r) for r in requests]

    def _one(self, req: Request) -> Generation:
        rec = self.records.get(str(req.id))
        reason = None
        if rec is None:
            reason = f"example {req.id!r} was not captured in {self.path}"
        elif json.dumps(rec["prompt"], sort_keys=True) != json.dumps(req.messages, sort_keys=True):
            reason = f"example {req.id!r}: the prompt differs from the one the fine-tune was asked"
        if reason:
            return Generation(text="", input_tokens=0, output_tokens=0, ttft_s=None, latency_s=0.0,
                              finish_reason="error", error=reason)
        return Generation(text=rec["output"], input_tokens=rec.get("input_tokens") or 0,
                          output_tokens=rec.get("output_tokens") or 0, ttft_s=rec.get("ttft_s"),
                          latency_s=rec.get("latency_s"),  # None: not measured (an answer from stored traffic)
                          finish_reason=rec.get("finish_reason") or "stop",
                          extra={"captured_on": rec.get("date")})
