"""Latency, defined once, as vLLM's serving benchmark defines it, from per-request records.

Every time is seconds from the moment a request was submitted, on the successful requests only:
- TTFT, time to first token;
- TPOT, time per output token after the first: (end-to-end - TTFT) / (output tokens - 1), for
  requests with more than one output token;
- ITL, the gaps between consecutive streamed tokens, pooled over requests (when recorded);
- end-to-end (e2e), submitted until the last token.
Each is summarised by its mean and its 50th/90th/99th percentiles (linear interpolation).
Throughputs need the wall time of the whole batch, so they exist only when it is given.

The evaluation writes this into its scores (`latency`); reports, sweeps, benchmarks and the
migration report read it from there and never summarise latency another way.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Iterable

from .stats import percentile

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Distribution:
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: list[float]) -> Distribution | None:
        if not values:
            return None
        return cls(statistics.fmean(values), *(percentile(values, p) for p in PERCENTILES))


@dataclass(frozen=True)
class Latency:
    requests: int
    failed: int
    wall_s: float | None  # here, beside the counts: the order latency.json has always had
    ttft_s: Distribution | None
    tpot_s: Distribution | None
    itl_s: Distribution | None
    e2e_s: Distribution | None
    output_tokens: Distribution | None
    input_tokens: Distribution | None
    requests_per_s: float | None = None
    output_tokens_per_s: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Latency:
        dists = {k: Distribution(**d[k]) if d.get(k) else None
                 for k in ("ttft_s", "tpot_s", "itl_s", "e2e_s", "output_tokens", "input_tokens")}
        return cls(**{**d, **dists})


def _get(record, key: str):
    return record.get(key) if isinstance(record, dict) else getattr(record, key, None)


def _itl(record) -> list[float]:
    extra = _get(record, "extra") or {}
    return list(_get(record, "itl_s") or extra.get("itl_s") or [])


def latency_of(records: Iterable, wall_s: float | None = None) -> Latency:
    """The latency of a batch of requests: `Generation`s, or their rows in generations.jsonl."""
    records = list(records)
    ok = [r for r in records if _get(r, "error") is None]
    ttft = [_get(r, "ttft_s") for r in ok if _get(r, "ttft_s") is not None]
    tpot = [(_get(r, "latency_s") - _get(r, "ttft_s")) / (_get(r, "output_tokens") - 1) for r in ok
            if _get(r, "output_tokens") > 1 and _get(r, "ttft_s") is not None]
    return Latency(
        requests=len(records), failed=len(records) - len(ok), wall_s=wall_s, ttft_s=Distribution.of(ttft),
        tpot_s=Distribution.of(tpot), itl_s=Distribution.of([x for r in ok for x in _itl(r)]),
        e2e_s=Distribution.of([_get(r, "latency_s") for r in ok if _get(r, "latency_s") is not None]),
        output_tokens=Distribution.of([_get(r, "output_tokens") for r in ok]),
        input_tokens=Distribution.of([_get(r, "input_tokens") for r in ok]),
        requests_per_s=len(ok) / wall_s if wall_s else None,
        output_tokens_per_s=sum(_get(r, "output_tokens") for r in ok) / wall_s if wall_s else None)
