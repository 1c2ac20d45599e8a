"""Is system a not worse than system b by more than a margin, on the same items? With the error it claims.

    H0: mean(a) - mean(b) <= -margin        H1: mean(a) - mean(b) > -margin

A one-sided test at level ALPHA (2.5%, the bound of a two-sided 95% interval). Its type I error (saying
"not worse" when a is worse by the margin) stays at or below ALPHA at every sample size, including tiny ones
and perfect agreement, where the percentile bootstrap it replaces said yes from 4 agreeing items:

- **0/1 scores, one seed a side**: an exact unconditional test on the paired 2x2 table. Outcomes are ordered
  by Tango's (1998) score statistic; the p-value is the largest probability, over every joint distribution
  of the two systems' scores on the null boundary (the nuisance parameter), of an outcome at least as
  favourable to a as the one observed. Its error is therefore at most ALPHA by construction, and
  `ftscale bench verdict-error` checks it by exact enumeration (docs/reliability.md). Tango's asymptotic
  score interval alone is not enough: its error reaches 2.9% at n = 54 and a margin of 0.02.
- **Graded scores in [0, 1]** (several seeds make a 0/1 metric graded: an item's score is its mean over the
  seeds): a test by betting (Waudby-Smith & Ramdas, JRSS-B 2024) on the per-item differences. Its error is
  at most ALPHA for every distribution of bounded scores and every n (Ville's inequality); the orders the
  items are bet in are averaged over a fixed set of permutations, which keeps that bound and makes the
  result independent of the file's order.

Intervals are the tests inverted: the lower bound is the smallest difference the test cannot reject, so
"the lower bound is above -margin" and "p <= ALPHA" say the same thing. A metric where lower is better is
tested on 1 - score.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import special as _sp
from scipy import stats as _st

ALPHA = 0.025
_NUISANCE_GRID = 101  # nuisance values scanned for the supremum, then refined around the largest
_ORDERS = 64  # permutations the betting test averages over
_BET_CAP = 0.9  # the largest bet, as a share of what the null allows without risking the whole capital


def tango_z(b, c, n: int, theta: float):
    """Tango's score statistic for H0: p12 - p21 = theta on a paired 2x2 table with discordant counts b (a=1,
    b=0) and c (a=0, b=1) of n pairs; vectorised over b and c. +-inf where the null variance is 0."""
    b, c = np.asarray(b, dtype=float), np.asarray(c, dtype=float)
    A = 2.0 * n
    B = -b - c + (2.0 * n - b + c) * theta
    C = -c * theta * (1.0 - theta)
    q21 = (np.sqrt(np.maximum(B * B - 4.0 * A * C, 0.0)) - B) / (2.0 * A)  # restricted MLE of p21
    var = n * (2.0 * q21 + theta * (1.0 - theta))
    num = b - c - n * theta
    with np.errstate(divide="ignore", invalid="ignore"):
        z = num / np.sqrt(var)
    return np.where(var > 1e-15, z, np.where(num > 0, np.inf, np.where(num < 0, -np.inf, 0.0)))


def tango_interval(b: int, c: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Tango's (1998) asymptotic score interval for p12 - p21 (the difference of the paired proportions)."""
    z = _st.norm.ppf(1 - (1 - confidence) / 2)
    est, eps = (b - c) / n, 1e-12

    def root(target: float, lo: float, hi: float) -> float:
        f = lambda t: float(tango_z(b, c, n, t)) - target  # noqa: E731 (decreasing in t)
        if f(lo) * f(hi) > 0:
            return lo if target > 0 else hi
        return float(optimize.brentq(f, lo, hi, xtol=1e-12))

    return root(z, -1 + eps, est), root(-z, est, 1 - eps)


def _first_b(n: int, theta: float, z_obs: float) -> np.ndarray:
    """For each count D of discordant pairs, the smallest b (of D) whose outcome (b, D - b) has Tango's Z at
    least z_obs; D + 1 when none has. Z rises with b for a fixed D, so a binary search per D suffices."""
    d = np.arange(n + 1)
    lo, hi = np.zeros(n + 1, dtype=int), d + 1
    while np.any(lo < hi):
        mid = (lo + hi) // 2
        ok = (mid <= d) & (tango_z(np.minimum(mid, d), d - np.minimum(mid, d), n, theta) >= z_obs)
        hi, lo = np.where(ok & (lo < hi), mid, hi), np.where(~ok & (lo < hi), mid + 1, lo)
    return lo


def _tail(first_b: np.ndarray, n: int, theta: float, r: np.ndarray) -> np.ndarray:
    """P(Z >= z_obs) for each nuisance value r = p21 (p12 = r + theta): the discordant count D is binomial
    (n, 2r + theta), and b given D binomial (D, p12 / (2r + theta)); summed over D exactly. (scipy.special's
    functions: scipy.stats' argument checks cost more than the sums here.)"""
    r = np.atleast_1d(r)[:, None]
    d = np.arange(n + 1)[None, :]
    disc = np.clip(2 * r + theta, 0.0, 1.0)
    share = np.clip(np.divide(r + theta, disc, out=np.zeros_like(disc), where=disc > 0), 0.0, 1.0)
    log_pd = (_sp.gammaln(n + 1) - _sp.gammaln(d + 1) - _sp.gammaln(n - d + 1)
              + _sp.xlogy(d, disc) + _sp.xlog1py(n - d, -disc))
    pd = np.exp(log_pd)
    live = pd > 1e-18 * pd.max(axis=1, keepdims=True)  # the binomial tails only where D has any weight
    rows, cols = np.nonzero(live)
    pb = np.zeros_like(pd)
    pb[rows, cols] = _sp.bdtrc(first_b[cols] - 1, cols, share[rows, 0])  # P(b >= first_b | D)
    return np.sum(pd * pb, axis=1)


def exact_p(b: int, c: int, n: int, theta: float, decide: float | None = None) -> float:
    """The exact unconditional p-value of H0: p12 - p21 <= theta against p12 - p21 > theta. With `decide`
    (a level), a p-value above it may be returned unrefined: only whether p <= decide is then exact."""
    if not -1.0 < theta < 1.0:
        return 0.0 if theta <= -1.0 else 1.0
    z_obs = float(tango_z(b, c, n, theta)) - 1e-9  # outcomes tied with the observed one count as extreme
    first = _first_b(n, theta, z_obs)
    lo, hi = max(0.0, -theta), (1.0 - theta) / 2.0
    grid = np.linspace(lo, hi, _NUISANCE_GRID)
    tails = _tail(first, n, theta, grid)
    best = float(tails.max())
    if decide is not None and best > decide:
        return min(1.0, best)
    for i in np.argsort(tails)[-3:]:  # the supremum lies near the grid's largest values: refine there
        a, z = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        res = optimize.minimize_scalar(lambda r: -float(_tail(first, n, theta, r)[0]), bounds=(a, z),
                                       method="bounded", options={"xatol": 1e-7})
        best = max(best, -float(res.fun))
    return min(1.0, best)


def _orders(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.vstack([np.arange(n)] + [rng.permutation(n) for _ in range(_ORDERS - 1)])


def betting_p(d: np.ndarray, theta: float, orders: np.ndarray | None = None) -> float:
    """A p-value of H0: E[d] <= theta for differences d in [-1, 1] (betting against H0, averaged over
    orders; valid for any bounded distribution and any n)."""
    if theta <= -1.0:
        return 0.0
    if theta >= 1.0:
        return 1.0
    d = np.asarray(d, dtype=float)
    n = len(d)
    x = (d[orders if orders is not None else _orders(n)] + 1.0) / 2.0  # orders x n, in [0, 1]
    m = (theta + 1.0) / 2.0
    t = np.arange(1, n + 1)
    # the predictable plug-in bet (WSR 2024, eq. 26): sized by the variance of what came before
    mu = (0.5 + np.cumsum(x, axis=1)) / (t + 1)
    var = (0.25 + np.cumsum((x - mu) ** 2, axis=1)) / (t + 1)
    prev_var = np.hstack([np.full((x.shape[0], 1), 0.25), var[:, :-1]])
    lam = np.minimum(np.sqrt(2 * math.log(1 / ALPHA) / (prev_var * t * np.log(t + 1))), _BET_CAP / m)
    log_capital = np.sum(np.log1p(lam * (x - m)), axis=1)
    e_value = float(np.mean(np.exp(np.minimum(log_capital, 700.0))))
    return min(1.0, 1.0 / e_value) if e_value > 0 else 1.0


def _invert(rejects, est: float) -> float:
    """The smallest theta the test does not reject (`rejects(theta)`: H0 difference <= theta rejected), to
    1e-4 (reports show three decimals): the bound a one-sided interval reports."""
    lo, hi = -1.0, est
    if not rejects(lo + 1e-9):
        return -1.0
    if rejects(hi):
        return hi
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rejects(mid) else (lo, mid)
    return hi


@dataclass(frozen=True)
class NonInferiority:
    """a against b on the same items: the difference of the means in the metric's own direction, its
    95% interval (each bound a one-sided 97.5% bound), and the one-sided p-value of "a is worse by the margin
    or more"."""

    diff: float
    low: float
    high: float
    p_value: float
    margin: float
    higher_is_better: bool
    n_items: int
    n_seeds: int
    method: str

    def passes(self, level: float = ALPHA) -> bool:
        return self.p_value <= level

    def text(self) -> str:
        return f"{self.diff:+.3f} (95% CI {self.low:+.3f} to {self.high:+.3f})"


def _scores(by_seed, side: str) -> np.ndarray:
    m = np.asarray(by_seed, dtype=float)
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError(f"noninferiority: system {side} has no scores")
    if not np.all(np.isfinite(m)) or m.min() < 0.0 or m.max() > 1.0:
        raise ValueError(f"noninferiority: system {side} has a score outside [0, 1]; a non-inferiority verdict "
                         "needs a metric scored in [0, 1] (a rate, an agreement, a 0-1 judge score)")
    return m


def is_exact_case(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape[0] == 1 and b.shape[0] == 1 and bool(np.all((a == 0) | (a == 1)) and np.all((b == 0) | (b == 1)))


def _oriented(a_by_seed, b_by_seed, margin: float, higher_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"noninferiority: margin {margin} is not within [0, 1)")
    a, b = _scores(a_by_seed, "a"), _scores(b_by_seed, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"noninferiority: {a.shape[1]} items against {b.shape[1]}: align them first")
    return (a, b) if higher_is_better else (1.0 - a, 1.0 - b)  # lower is better: tested on 1 - score


def noninferiority_p(a_by_seed, b_by_seed, margin: float, higher_is_better: bool = True) -> float:
    """The test's one-sided p-value alone (no interval): what a simulation of its error needs."""
    a, b = _oriented(a_by_seed, b_by_seed, margin, higher_is_better)
    if is_exact_case(a, b):
        bb, cc = int(np.sum((a[0] == 1) & (b[0] == 0))), int(np.sum((a[0] == 0) & (b[0] == 1)))
        return exact_p(bb, cc, a.shape[1], -margin)
    return betting_p(a.mean(axis=0) - b.mean(axis=0), -margin)


def noninferiority(a_by_seed, b_by_seed, margin: float, higher_is_better: bool = True) -> NonInferiority:
    """The test of the module's docstring on per-item scores aligned by item (each seed of a and of b lists
    the same items in the same order)."""
    a, b = _oriented(a_by_seed, b_by_seed, margin, higher_is_better)
    n = a.shape[1]
    if is_exact_case(a, b):
        bb, cc = int(np.sum((a[0] == 1) & (b[0] == 0))), int(np.sum((a[0] == 0) & (b[0] == 1)))
        est = (bb - cc) / n
        p_of = lambda t, decide=None: exact_p(bb, cc, n, t, decide)  # noqa: E731
        mirrored = lambda t: exact_p(cc, bb, n, t, ALPHA) <= ALPHA  # noqa: E731 (a and b swapped)
        method = "exact unconditional (Tango score order)"
    else:
        d = a.mean(axis=0) - b.mean(axis=0)
        est, orders = float(d.mean()), _orders(n)
        p_of = lambda t, decide=None: betting_p(d, t, orders)  # noqa: E731
        mirrored = lambda t: betting_p(-d, t, orders) <= ALPHA  # noqa: E731
        method = "betting (graded scores" + (f", {a.shape[0]} seeds)" if a.shape[0] > 1 else ")")
    lower = _invert(lambda t: p_of(t, ALPHA) <= ALPHA, est)
    upper, p = -_invert(mirrored, -est), p_of(-margin)
    if not higher_is_better:
        est, lower, upper = -est, -upper, -lower
    return NonInferiority(est, lower, upper, p, margin, higher_is_better, n, a.shape[0], method)


def _agreeing_shows(n: int, margin: float, seeds: int) -> bool:
    """Whether n items on which a and b agree everywhere (the best a local model can do) show `margin`."""
    if n <= 0:
        return False
    if seeds == 1:
        return exact_p(0, 0, n, -margin, ALPHA) <= ALPHA
    return betting_p(np.zeros(n), -margin, _orders(n)) <= ALPHA


@functools.lru_cache(maxsize=256)
def smallest_margin(n: int, seeds: int = 1) -> float:
    """The smallest margin n items can show even when the two systems agree on every item (with `seeds`
    seeds of the local side, the graded test)."""
    return -_invert(lambda t: _agreeing_shows(n, -t, seeds), 0.0) if n > 0 else 1.0


def items_needed(margin: float, seeds: int = 1, limit: int = 1_000_000) -> int | None:
    """The fewest items on which perfect agreement shows `margin` (None: more than `limit`)."""
    hi = 1
    while not _agreeing_shows(hi, margin, seeds):
        if hi >= limit:
            return None
        hi = min(hi * 2, limit)
    lo = hi // 2 + 1
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _agreeing_shows(mid, margin, seeds) else (mid + 1, hi)
    return hi
