"""How often the migration verdict says "not worse" when the local model IS worse by the margin: the type I
error of eval/noninferiority.py at the null boundary (true difference = -margin), `ftscale bench
verdict-error`.

- 0/1 scores (one seed a side): exact, by enumeration. For each n the test's rejection region is found
  from the test itself (the outcomes whose p-value is at most ALPHA), and its probability is summed exactly
  over every outcome at each nuisance value of a grid finer than, and offset from, the one the test scans:
  the largest such probability is the worst case. The nuisance is the joint distribution of the two
  systems' scores on the boundary; the agreement rate (the share of items the two score alike) runs over
  `agreement_from`..1.
- Graded scores (several seeds): by simulation, at small n and on the boundary, for 0/1 metrics averaged
  over 2 and 3 seeds.
"""

from __future__ import annotations

import numpy as np

from ftscale.eval import noninferiority as ni


def _decision_z(n: int, theta: float) -> float:
    """The smallest attainable Tango Z that the exact test rejects at (inf: none is). The p-value falls as
    Z rises, so the rejection region is every outcome at or above it."""
    b, c = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    ok = b + c <= n
    zs = np.unique(ni.tango_z(b[ok], c[ok], n, theta))
    zs = zs[np.isfinite(zs) | (zs > 0)]
    rejects = lambda z: _p_at(z, n, theta) <= ni.ALPHA  # noqa: E731
    if not rejects(zs[-1]):
        return np.inf
    lo, hi = 0, len(zs) - 1  # find the first z that rejects; all above it reject too
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if rejects(zs[mid]) else (mid + 1, hi)
    return float(zs[lo])


def _p_at(z: float, n: int, theta: float) -> float:
    """The test's p-value for an outcome whose Tango Z is z (found through one outcome that has it)."""
    b, c = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    ok = (b + c <= n) & (ni.tango_z(b, c, n, theta) == z)
    i, j = np.argwhere(ok)[0]
    return ni.exact_p(int(i), int(j), n, theta, ni.ALPHA)


def exact_error(n: int, margin: float, agreement_from: float = 0.80, points: int = 2001) -> dict:
    """The largest type I error over a grid of nuisance values: among agreement rates agreement_from..1 (the
    range the issue names) and over every joint distribution on the boundary, each with where it is reached."""
    theta = -margin
    z_star = _decision_z(n, theta)
    # p21 = r, p12 = r - margin; agreement = 1 - p12 - p21 = 1 + margin - 2r
    step = (1.0 - margin) / 2.0 / (points - 1)
    grid = np.clip(np.linspace(margin, (1.0 + margin) / 2.0, points) + 0.37 * step, margin, (1.0 + margin) / 2.0)
    agreement = 1.0 + margin - 2 * grid
    errors = (np.zeros(points) if not np.isfinite(z_star)
              else ni._tail(ni._first_b(n, theta, z_star - 1e-9), n, theta, grid))
    within = agreement >= agreement_from
    k_in, k_all = int(np.argmax(np.where(within, errors, -1.0))), int(np.argmax(errors))
    return {"in_range": float(errors[k_in]) if within.any() else 0.0, "agreement": float(agreement[k_in]),
            "overall": float(errors[k_all]), "overall_agreement": float(agreement[k_all])}


def enumerated_error(n: int, margin: float, r: float) -> float:
    """The error at one nuisance value r = p21, summed over every outcome (b, c) with the test's own decision
    on each: a check of `exact_error` that assumes nothing about the region's shape (small n only)."""
    from scipy.special import gammaln

    theta, total = -margin, 0.0
    p12, p21 = r + theta, r
    for b in range(n + 1):
        for c in range(n + 1 - b):
            if ni.exact_p(b, c, n, theta, ni.ALPHA) > ni.ALPHA:
                continue
            rest = n - b - c
            log = gammaln(n + 1) - gammaln(b + 1) - gammaln(c + 1) - gammaln(rest + 1)
            for k, p in ((b, p12), (c, p21), (rest, 1 - p12 - p21)):
                if k:
                    log += k * np.log(p) if p > 0 else -np.inf
            total += float(np.exp(log))
    return total


def graded_error(n: int, margin: float, seeds: int, reference_rate: float, swap: float, draws: int, rng,
                 true_difference: float | None = None) -> float:
    """The share of simulated studies the graded test calls non-inferior. The reference scores 0/1 at
    `reference_rate`; each local seed scores an item 1 with probability `swap` where the reference failed,
    and 0 with probability f where the reference succeeded, f set so that the local mean is reference_rate -
    margin (the null boundary; `true_difference` instead: the local model worse by that, e.g. 0 for power)."""
    worse = margin if true_difference is None else -true_difference
    fail = (worse + (1 - reference_rate) * swap) / reference_rate if reference_rate > 0 else 0.0
    wins = 0
    for _ in range(draws):
        b = (rng.random(n) < reference_rate).astype(float)
        u = rng.random((seeds, n))
        a = np.where(b[None, :] == 1.0, (u >= fail).astype(float), (u < swap).astype(float))
        wins += ni.noninferiority_p(a, b[None, :], margin) <= ni.ALPHA
    return wins / draws


def run(n_max: int, margins: list[float], agreement_from: float, graded_draws: int, graded_margins=(0.02, 0.1),
        log=print) -> dict:
    """The whole check: the worst exact error per margin over n = 4..n_max, and the graded simulation."""
    from tqdm.auto import tqdm

    out = {"alpha": ni.ALPHA, "n": [4, n_max], "agreement_from": agreement_from, "exact": {}, "graded": []}
    for margin in margins:
        worst = {"in_range": (-1.0,), "overall": (-1.0,)}
        for n in tqdm(range(4, n_max + 1), desc=f"0/1 scores, margin {margin}", leave=False):
            e = exact_error(n, margin, agreement_from)
            for key, agree in (("in_range", "agreement"), ("overall", "overall_agreement")):
                if e[key] > worst[key][0]:
                    worst[key] = (e[key], n, round(e[agree], 4))
        out["exact"][str(margin)] = {k: dict(zip(("error", "n", "agreement"), v)) for k, v in worst.items()}
        (e1, n1, a1), (e2, n2, a2) = worst["in_range"], worst["overall"]
        log(f"0/1 scores, margin {margin}, n = 4..{n_max}: largest type I error {e1:.5f} with agreement "
            f"{agreement_from}..1 (n={n1}, agreement {a1}); {e2:.5f} over every agreement (n={n2}, agreement {a2})")
    rng = np.random.default_rng(0)
    cases = [(m, k, n, rate, swap) for m in graded_margins for k in (2, 3) for n in (4, 10, 30, 100, 400)
             for rate in (0.8, 0.9, 1.0) for swap in ((0.0,) if rate == 1.0 else (0.0, 0.5))]
    for m, k, n, rate, swap in tqdm(cases, desc="graded scores", leave=False):
        err = graded_error(n, m, k, rate, swap, graded_draws, rng)
        power = graded_error(n, m, k, rate, swap, graded_draws, rng, true_difference=0.0)
        out["graded"].append({"margin": m, "seeds": k, "n": n, "reference_rate": rate, "swap": swap, "error": err,
                              "power_at_no_difference": power, "draws": graded_draws})
    worst = max(out["graded"], key=lambda g: g["error"])
    log(f"graded scores (2 and 3 seeds, n = 4..400, margins {graded_margins}): largest simulated type I error "
        f"{worst['error']:.4f} ({graded_draws} draws each; at n={worst['n']}, {worst['seeds']} seeds, margin "
        f"{worst['margin']}, reference rate {worst['reference_rate']})")
    return out
