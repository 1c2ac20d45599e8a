"""Did a trained cell of a sweep converge: the rule, one cell's verdict, and the verdicts of a sweep's cells."""

from __future__ import annotations

import math

from ftscale.eval.result_row import ResultRow
from ftscale.eval.stats import median_and_mad
from ftscale.eval.sweep_rows import sort_key

FINAL_WINDOW = 3
DROP_FACTOR = 0.9
MAD_K = 3.0
MAD_FLOOR = 0.05
MIN_SEEDS_FOR_OUTLIER = 3

CONVERGENCE_RULE = (
    f"A trained cell did not converge if (a) its final loss (the mean of its last {FINAL_WINDOW} logged values, "
    f"of all of them when fewer are logged) is not below {DROP_FACTOR} x its first logged loss, or (b) when its "
    f"(system, training size) has >= {MIN_SEEDS_FOR_OUTLIER} seeds with a loss curve, its final loss is above the "
    f"median final loss of the other seeds by more than {MAD_K:g} x their median absolute deviation (MAD, not "
    f"rescaled, floored at {MAD_FLOOR}). A loss curve with a non-finite value did not converge.")


def final_loss(loss: list[float]) -> float:
    tail = list(loss[-FINAL_WINDOW:])
    return sum(tail) / len(tail)


def convergence_verdict(loss: list[float], other_finals: list[float]) -> list[str]:
    """Why a cell did not converge (empty list: it converged), by CONVERGENCE_RULE. `other_finals` are the
    final losses of the other seeds of the same (system, training size)."""
    if not loss:
        raise ValueError("empty loss curve")
    if not all(math.isfinite(v) for v in loss):
        return ["the loss curve has a non-finite value"]
    reasons = []
    first, final = loss[0], final_loss(loss)
    if not final < DROP_FACTOR * first:
        reasons.append(f"final loss {final:.3f} is not below {DROP_FACTOR} x first loss {first:.3f}")
    others = [v for v in other_finals if math.isfinite(v)]
    if len(others) + 1 >= MIN_SEEDS_FOR_OUTLIER:
        med, mad = median_and_mad(others)
        mad = max(mad, MAD_FLOOR)
        if final > med + MAD_K * mad:
            reasons.append(f"final loss {final:.3f} is above the other seeds' median {med:.3f} by more than "
                           f"{MAD_K:g} x MAD {mad:.3f}")
    return reasons


def convergence_table(rows: list[ResultRow]) -> list[dict]:
    """One entry per trained cell (system, size, seed) with a loss curve: first/final loss and the verdict."""
    cells: dict[tuple, ResultRow] = {}
    for r in rows:
        if r.is_reference or not r.loss:
            continue
        key = (r.system, r.num_train_examples, r.seed)
        cells.setdefault(key, r)  # one training run, evaluated at several prompts and temperatures
    finals = {k: final_loss(r.loss) if all(math.isfinite(v) for v in r.loss) else math.nan
              for k, r in cells.items()}
    out = []
    for key, r in sorted(cells.items(), key=lambda kv: sort_key(kv[0])):
        others = [finals[k] for k in cells if k[:2] == key[:2] and k != key]
        reasons = convergence_verdict(list(r.loss), others)
        out.append({"system": key[0], "num_train_examples": key[1], "seed": key[2], "first": r.loss[0],
                    "final": finals[key], "n_logged": len(r.loss), "n_other_seeds": len(others),
                    "converged": not reasons, "reasons": reasons, "run_dir": r.run_dir})
    return out
