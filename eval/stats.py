"""The project's statistics in one place: intervals of a rate or a mean, percentiles, a median's absolute
deviation, and paired comparisons of two systems evaluated on the same items.

Every system is scored on the same eval items, so two systems are compared item by item (paired): the
variation between items is shared and drops out, and both systems' own sampling noise is kept (neither side
is treated as exact). With one seed a side and 0/1 scores the test is McNemar's exact test (a binomial test
on the discordant pairs); otherwise a paired bootstrap that resamples items and, as a second level, each
side's seeds. Several comparisons of one question (the training sizes of a curve) are corrected with Holm.
Non-inferiority (the migration verdict), whose error must hold at tiny n and perfect agreement, is
eval/noninferiority.py.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as _st

from ftscale.errors import DataError

CONFIDENCE = 0.95
ALPHA = 0.05


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (95% for z=1.96), scipy's; (0, 1) when n is 0."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k={k} is not within 0..n={n}")
    ci = _st.binomtest(k, n).proportion_ci(confidence_level=2 * _st.norm.cdf(z) - 1, method="wilson")
    return (float(ci.low), float(ci.high))


def percentile(values, q) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks (numpy's default)."""
    if len(values) == 0:
        raise ValueError("percentile of no values")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the Student t interval mean +- t(1-(1-c)/2, n-1) * s / sqrt(n), s the sample
    standard deviation (n-1). With fewer than two values there is no interval: (mean, None, None)."""
    if not values:
        raise ValueError("no values")
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None, None
    half = float(_st.t.ppf(1.0 - (1.0 - confidence) / 2.0, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def median_and_mad(values: list[float]) -> tuple[float, float]:
    """The median of `values` and their median absolute deviation from it (MAD, not rescaled to a normal's
    standard deviation)."""
    med = statistics.median(values)
    return med, statistics.median(abs(v - med) for v in values)


def is_binary(values) -> bool:
    x = np.asarray(values, dtype=float)
    return bool(np.all((x == 0.0) | (x == 1.0)))


def mean_interval(values: list[float], *, binary: bool | None = None, n_boot: int = 2000,
                  seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of one evaluation's per-example scores: Wilson for 0/1 scores, otherwise a
    percentile bootstrap of the mean over items (scipy.stats.bootstrap)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("no values")
    if is_binary(x) if binary is None else binary:
        return float(x.mean()), *wilson(int(x.sum()), len(x))
    if np.all(x == x[0]):  # no spread: the bootstrap has nothing to resample
        return float(x[0]), float(x[0]), float(x[0])
    res = _st.bootstrap((x,), np.mean, n_resamples=n_boot, confidence_level=CONFIDENCE, method="percentile",
                        random_state=np.random.default_rng(seed))
    return float(x.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass(frozen=True)
class PairedDiff:
    """System a minus system b on the same items: the difference of their means over items (and seeds), its
    95% interval, and the two-sided p-value of "no difference"."""

    diff: float
    low: float
    high: float
    p_value: float
    n_items: int
    n_seeds_a: int
    n_seeds_b: int
    method: str

    def contains_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    def text(self, digits: int = 3) -> str:
        return f"{self.diff:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def _matrix(by_seed, side: str) -> np.ndarray:
    if not by_seed or not all(len(s) for s in by_seed):
        raise ValueError(f"paired_difference: system {side} has no scores")
    if len({len(s) for s in by_seed}) != 1:
        raise ValueError(f"paired_difference: the seeds of system {side} are not aligned on the same items")
    m = np.asarray(by_seed, dtype=float)
    if not np.all(np.isfinite(m)):
        raise ValueError(f"paired_difference: system {side} has a non-finite score")
    return m


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """How often each of 0..n-1 was drawn, per row of `draws` (a row is one bootstrap replicate)."""
    rows = draws.shape[0]
    flat = draws + n * np.arange(rows)[:, None]
    return np.bincount(flat.ravel(), minlength=rows * n).reshape(rows, n).astype(float)


def _item_level(a: np.ndarray, b: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's mean over the items of each bootstrap replicate (seeds x n_boot, for a and for b): the items
    drawn with replacement, the same draw for both systems."""
    n = a.shape[1]
    # Items with the same scores everywhere are interchangeable: drawing n items among the distinct score
    # columns, weighted by how often each occurs, is the same bootstrap, and far cheaper for 0/1 scores.
    cols, freq = np.unique(np.vstack([a, b]), axis=1, return_counts=True)
    compact = 2 * len(freq) <= n
    if compact:
        a, b = cols[:a.shape[0]], cols[a.shape[0]:]
    step = max(1, 2_000_000 // n)  # replicates per chunk: memory stays bounded on a large eval set
    per_a, per_b = [], []
    for start in range(0, n_boot, step):
        size = min(step, n_boot - start)
        items = (rng.multinomial(n, freq / n, size=size).astype(float) if compact
                 else _counts(rng.integers(0, n, size=(size, n)), n))
        per_a.append(a @ items.T / n)
        per_b.append(b @ items.T / n)
    return np.hstack(per_a), np.hstack(per_b)


def _seed_level(per_seed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One mean per replicate, this side's seeds drawn with replacement (the second level)."""
    n_seeds, n_boot = per_seed.shape
    if n_seeds == 1:
        return per_seed[0]
    picks = _counts(rng.integers(0, n_seeds, size=(n_boot, n_seeds)), n_seeds)  # n_boot x seeds
    return np.einsum("bs,sb->b", picks, per_seed) / n_seeds


def paired_difference(a_by_seed: list[list[float]], b_by_seed: list[list[float]], *, binary: bool | None = None,
                      n_boot: int = 2000, seed: int = 0) -> PairedDiff:
    """a minus b from per-example scores aligned by item (every seed of both systems lists the same items in
    the same order). The interval is a paired percentile bootstrap: each replicate draws the items with
    replacement (the same draw for both systems) and each system's seeds with replacement. The p-value: with
    one seed a side and 0/1 scores, McNemar's exact test (scipy.stats.binomtest on the discordant pairs);
    otherwise the bootstrap's two-sided p, 2 x the smaller share of replicates on either side of 0."""
    a, b = _matrix(a_by_seed, "a"), _matrix(b_by_seed, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired_difference: {a.shape[1]} items against {b.shape[1]}: align them first")
    n = a.shape[1]
    if binary is None:
        binary = is_binary(a) and is_binary(b)
    elif binary and not (is_binary(a) and is_binary(b)):
        raise ValueError("paired_difference: binary=True but a score is not 0 or 1")
    rng = np.random.default_rng(seed)
    per_a, per_b = _item_level(a, b, n_boot, rng)
    boot = _seed_level(per_a, rng) - _seed_level(per_b, rng)
    low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    diff = float(a.mean() - b.mean())
    if binary and a.shape[0] == 1 and b.shape[0] == 1:
        a_only = int(np.sum((a[0] == 1) & (b[0] == 0)))
        b_only = int(np.sum((a[0] == 0) & (b[0] == 1)))
        p = _st.binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
        method = "McNemar exact; paired bootstrap interval"
    else:
        # +1: a replicate count of 0 does not make an exact p of 0 from a finite bootstrap
        below, above = (np.sum(boot <= 0) + 1) / (n_boot + 1), (np.sum(boot >= 0) + 1) / (n_boot + 1)
        p = min(1.0, 2 * min(below, above))
        method = "paired bootstrap (items" + (", seeds)" if max(a.shape[0], b.shape[0]) > 1 else ")")
    return PairedDiff(diff, min(low, diff), max(high, diff), float(p), n, a.shape[0], b.shape[0], method)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest times (m - i + 1), made
    non-decreasing, capped at 1."""
    m = len(p_values)
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def p_text(p: float) -> str:
    """A p-value for a table: four decimals, a small one in scientific notation (never a bare 0)."""
    return f"{p:.1e}" if p < 1e-4 else f"{p:.4f}"


def beats(d: PairedDiff, p_adjusted: float, higher_is_better: bool = True, alpha: float = ALPHA) -> bool:
    """a is better than b: the (adjusted) p is below alpha and the interval lies wholly on the better side."""
    return p_adjusted < alpha and (d.low > 0 if higher_is_better else d.high < 0)


def per_example(generations: str | Path, metric: str) -> dict[str, float]:
    """One evaluation's per-example values of `metric` by example id, from its generations.jsonl, counted as
    its summary counts them: a failed request (an error, no scores) is 0; an example the metric could not
    score (value None or absent) is left out. Empty when no record carries the metric (an aggregate)."""
    out, seen_metric = {}, False
    path = Path(generations)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                rid, err, scores = rec["id"], rec.get("error"), rec.get("scores")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{lineno}: not a generation record ({e})") from None
            if str(rid) in out:
                raise DataError(f"{path}:{lineno}: id {rid!r} appears twice")
            if err is not None or scores is None:
                out[str(rid)] = 0.0
            elif scores.get(metric) is not None:
                seen_metric = True
                out[str(rid)] = float(scores[metric])
    return out if seen_metric else {}


def item_scores(path: str | Path | None, metric: str, cache: dict) -> dict[str, float]:
    """`per_example` of an evaluation's generations file, read once per `cache`; empty when there is no such
    file on disk."""
    if (path, metric) not in cache:
        cache[(path, metric)] = per_example(path, metric) if path and Path(path).is_file() else {}
    return cache[(path, metric)]


def align(a_seeds: list[dict[str, float]], b_seeds: list[dict[str, float]]) -> tuple[list, list, list[str], int]:
    """Per-seed value maps of two systems on the ids every one of them has: (a_by_seed, b_by_seed, ids,
    dropped), ids in the first map's order, `dropped` the ids some map has and another lacks."""
    maps = [*a_seeds, *b_seeds]
    if not maps:
        return [], [], [], 0
    shared = set(maps[0]).intersection(*maps[1:])
    ids = [i for i in maps[0] if i in shared]
    dropped = len(set().union(*maps)) - len(ids)
    return [[m[i] for i in ids] for m in a_seeds], [[m[i] for i in ids] for m in b_seeds], ids, dropped


def cohen_kappa(pairs_of_labels) -> float:
    """Cohen's kappa of two raters over the same items: (p_o - p_e) / (1 - p_e), with p_o the
    observed agreement and p_e = Σ_label p1(label)·p2(label) the agreement expected by chance.
    NaN when undefined (no items, or both raters always gave one and the same label)."""
    pairs = list(pairs_of_labels)
    n = len(pairs)
    if n == 0:
        return math.nan
    po = sum(a == b for a, b in pairs) / n
    c1 = Counter(a for a, _ in pairs)
    c2 = Counter(b for _, b in pairs)
    pe = sum(c1[label] * c2[label] for label in c1) / (n * n)
    if pe == 1:
        return math.nan
    return (po - pe) / (1 - pe)
