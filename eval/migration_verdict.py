"""The migration verdict: from which training size does a local system match the OpenAI fine-tune, with the
error it claims kept at the one-sided level ALPHA across every size and every local system tested.

Per system and training size, a non-inferiority test on the same items (eval/noninferiority.py). Sizes are
tested in a fixed sequence from the largest down, and a system's sequence stops at its first size that
fails: the size chosen is the smallest of an unbroken run of passes from the top (testing every size and
taking the smallest that passes would inflate the error with the number of sizes). Several local systems
(`migrate plan --model` repeated) share the level: each starts with ALPHA / (number of systems); a system
whose every size passed hands its share on to the others (Holm's step-down, extended to sequences: a
graphical procedure of Bretz et al. 2009), so choosing among systems does not inflate the error either.
"""

from __future__ import annotations

from ftscale.eval.noninferiority import ALPHA, NonInferiority, noninferiority, smallest_margin


def paired_lists(local_by_seed: list[dict], reference: dict) -> tuple[list[list[float]], list[list[float]], int]:
    """(local scores per seed, reference scores) over the items every side scored, in one order."""
    ids = [i for i in reference if all(i in s for s in local_by_seed)]
    return [[s[i] for i in ids] for s in local_by_seed], [[reference[i] for i in ids]], len(ids)


def size_tests(local: dict[int, list[dict]], reference: dict, margin: float, higher_is_better: bool = True) -> list[dict]:
    """One non-inferiority test per training size (ascending): `local` maps size -> per-seed {id: score}."""
    out = []
    for n in sorted(local):
        a, b, n_items = paired_lists(local[n], reference)
        if n_items == 0:
            out.append({"n": n, "n_items": 0, "n_seeds": len(local[n]), "p_value": 1.0, "diff": None, "low": None,
                        "high": None, "method": "no item scored on both sides", "showable_margin": 1.0})
            continue
        t: NonInferiority = noninferiority(a, b, margin, higher_is_better=higher_is_better)
        out.append({"n": n, "n_items": n_items, "n_seeds": len(a), "p_value": t.p_value, "diff": t.diff,
                    "low": t.low, "high": t.high, "method": t.method,
                    "showable_margin": smallest_margin(n_items, len(a)),
                    "local_mean": sum(map(sum, a)) / (len(a) * n_items), "reference_mean": sum(b[0]) / n_items})
    return out


def decide(tests_by_system: dict[str, list[dict]], alpha: float = ALPHA) -> dict[str, dict]:
    """The fixed-sequence tests of every system, sharing `alpha` (the module's docstring). Per system: the
    sizes that passed (from the largest down), the size where its sequence stopped (None: it did not), and
    the level of its last test."""
    chains = {s: sorted(tests, key=lambda t: -t["n"]) for s, tests in tests_by_system.items()}
    weight = {s: 1.0 / len(chains) for s in chains} if chains else {}
    head = {s: 0 for s in chains}
    passed: dict[str, list[int]] = {s: [] for s in chains}
    level = {s: alpha * weight[s] for s in chains}
    progress = True
    while progress:
        progress = False
        for s in chains:
            if head[s] < len(chains[s]) and chains[s][head[s]]["p_value"] <= alpha * weight[s]:
                passed[s].append(chains[s][head[s]]["n"])
                level[s], head[s], progress = alpha * weight[s], head[s] + 1, True
                if head[s] == len(chains[s]):  # every size passed: the share goes to the others still testing
                    others = [o for o in chains if head[o] < len(chains[o])]
                    for o in others:
                        weight[o] += weight[s] / len(others)
                    weight[s] = 0.0
                break
    return {s: {"passed": passed[s], "stopped_at": chains[s][head[s]]["n"] if head[s] < len(chains[s]) else None,
                "level": level[s] if passed[s] else alpha * weight[s], "systems": len(chains)} for s in chains}


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def _ci(t: dict) -> str:
    return f"{_signed(t['diff'])} (95% CI {_signed(t['low'])} to {_signed(t['high'])})"


def _level_text(level: float, systems: int) -> str:
    return f"one-sided level {level:.4g}" + (f", the {ALPHA} shared by {systems} local systems" if systems > 1 else "")


def verdict(system: str, tests: list[dict], decision: dict, margin: float, reference: str,
            higher_is_better: bool = True) -> dict:
    """One line a product manager can act on: YES from a size, no verdict (too little evidence), or not yet."""
    by_n = {t["n"]: t for t in tests}
    worse = f"worse by {margin} or more" if higher_is_better else f"higher (worse) by {margin} or more"
    if decision["passed"]:
        n = decision["passed"][-1]
        t = by_n[n]
        down = ", ".join(str(x) for x in decision["passed"])
        return {"system": system, "smallest_n": n, "test": t, "kind": "yes",
                "line": (f"{system}: YES, matches {reference} from n={n} training examples: difference {_ci(t)} on "
                         f"{t['n_items']} paired items; the chance it is really {worse} is p = {t['p_value']:.2g} "
                         f"({_level_text(decision['level'], decision['systems'])}; sizes passed from the largest "
                         f"down: {down})")}
    scored = [t for t in tests if t["n_items"]]
    if not scored:
        return {"system": system, "smallest_n": None, "test": None, "kind": "none",
                "line": f"{system}: no verdict: no evaluation of it and {reference} scored the same items"}
    t = max(scored, key=lambda x: x["n"])
    if t["showable_margin"] >= margin:
        return {"system": system, "smallest_n": None, "test": t, "kind": "too little evidence",
                "line": (f"{system}: no verdict: too little evidence. {t['n_items']} paired items can show a margin "
                         f"of {t['showable_margin']:.3f} at best, even with every answer agreeing, and the margin is "
                         f"{margin}: capture more prompts (`ftscale migrate capture --from stored`) or accept a "
                         f"larger --margin. At n={t['n']} the difference is {_ci(t)}")}
    clearly = (t["high"] < -margin) if higher_is_better else (t["low"] > margin)
    why = ("clearly worse" if clearly else f"not shown within the margin (p = {t['p_value']:.2g} > "
                                           f"{decision['level']:.4g}; more eval prompts narrow the interval)")
    stop = decision["stopped_at"]
    return {"system": system, "smallest_n": None, "test": t, "kind": "not yet",
            "line": (f"{system}: not yet: add data or a larger model. At its largest size n={t['n']} the difference "
                     f"is {_ci(t)}, {why}; margin {margin}"
                     + (f" (the sequence from the largest size stopped at n={stop})" if stop not in (None, t["n"]) else ""))}
