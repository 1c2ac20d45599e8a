"""Unblinding a study: its votes counted by system, the raters' agreement, and the LLM judge against them.

Per pair of systems, win / tie / loss rates over all votes and the win rate over decided (non-tie)
votes, each with a 95% Wilson score interval; agreement between raters (percent agreement and
Cohen's kappa per pair of raters over the pairs both rated); and, when `llm_judge.json` exists,
agreement and Cohen's kappa between the judge and the majority human vote of each pair."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

from ftscale.eval.stats import cohen_kappa, wilson

from .judge import load_judge_verdicts
from .study import load_study
from .votes import read_votes


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": (k / n) if n else None, "lo": lo if n else None, "hi": hi if n else None}


def _majority(labels: list[str]) -> str | None:
    """The most frequent label; None when the top count is shared (no majority)."""
    top = Counter(labels).most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        return None
    return top[0][0]


def _comparisons(systems: list[str], pairs: dict[str, dict], votes: list[tuple[str, str, str]]) -> list[dict]:
    """Per pair of systems [x, y], every vote counted once: x preferred, y preferred, or a tie."""
    comparisons = []
    for x, y in itertools.combinations(systems, 2):
        in_pair = {pid for pid, p in pairs.items() if {p["a"]["system"], p["b"]["system"]} == {x, y}}
        wins = losses = ties = 0
        for pid, _, choice in votes:
            if pid not in in_pair:
                continue
            if choice == "tie":
                ties += 1
            elif pairs[pid]["a" if choice == "A" else "b"]["system"] == x:
                wins += 1
            else:
                losses += 1
        n = wins + losses + ties
        comparisons.append({
            "systems": [x, y], "pairs": len(in_pair), "votes": n, "wins": wins, "losses": losses, "ties": ties,
            "decided": wins + losses,
            "win_rate": _rate(wins, n), "tie_rate": _rate(ties, n), "loss_rate": _rate(losses, n),
            "win_rate_decided": _rate(wins, wins + losses),
        })
    return comparisons


def _rater_agreement(pairs: dict[str, dict], by_rater: dict[str, dict[str, str]]) -> dict:
    """Per pair of raters over the pairs both rated, and pooled over all those comparisons."""
    rater_pairs = []
    pooled_agree = pooled_n = 0
    for r1, r2 in itertools.combinations(sorted(by_rater), 2):
        both = [pid for pid in pairs if pid in by_rater[r1] and pid in by_rater[r2]]
        if not both:
            continue
        labels = [(by_rater[r1][pid], by_rater[r2][pid]) for pid in both]
        agree = sum(a == b for a, b in labels)
        pooled_agree += agree
        pooled_n += len(labels)
        rater_pairs.append({"raters": [r1, r2], "n": len(labels), "percent_agreement": 100 * agree / len(labels),
                            "kappa": _num(cohen_kappa(labels))})
    kappas = [rp["kappa"] for rp in rater_pairs if rp["kappa"] is not None]
    return {
        "rater_pairs": rater_pairs,
        "n": pooled_n,
        "percent_agreement": (100 * pooled_agree / pooled_n) if pooled_n else None,
        "mean_kappa": (sum(kappas) / len(kappas)) if kappas else None,
    }


def _judge_agreement(pairs: dict[str, dict], votes: list[tuple[str, str, str]], judge: dict[str, str]) -> dict:
    """The judge's verdict against the majority human vote of each pair both rated."""
    human: dict[str, list[str]] = {}
    for pid, _, choice in votes:
        human.setdefault(pid, []).append(choice)
    labels, no_majority = [], 0
    for pid in pairs:
        if pid not in judge or pid not in human:
            continue
        m = _majority(human[pid])
        if m is None:
            no_majority += 1
        else:
            labels.append((m, judge[pid]))
    agree = sum(a == b for a, b in labels)
    return {"judged": len(judge), "n": len(labels), "no_majority": no_majority, "agree": agree,
            "percent_agreement": (100 * agree / len(labels)) if labels else None,
            "kappa": _num(cohen_kappa(labels))}


def unblind(study_dir: str | Path) -> dict:
    """The study's results by system: the numbers `/report` shows.

    - `comparisons`: one per pair of systems [x, y] (the study's system order). Every vote counts
      once: `wins` (x preferred), `losses` (y preferred), `ties`; `win_rate`, `tie_rate` and
      `loss_rate` over all `votes`, `win_rate_decided` over the `decided` (non-tie) votes, each
      {"k", "n", "rate", "lo", "hi"} with the 95% Wilson interval (rate/lo/hi None when n = 0).
    - `agreement`: per pair of raters, over the pairs both rated, `percent_agreement` (0-100) and
      Cohen's `kappa` (None when undefined); overall, the pooled percent agreement over all those
      comparisons and `mean_kappa`, the mean of the defined pairwise kappas (Light's kappa).
    - `llm_judge` (None without llm_judge.json): the judge's verdict against the majority human
      vote of each pair rated by humans and by the judge (pairs whose top human choice is shared
      are left out and counted in `no_majority`): `percent_agreement`, `kappa`, `n`.
    """
    study_dir = Path(study_dir)
    study = load_study(study_dir)
    systems = study["systems"]
    pairs = {p["id"]: p for p in study["pairs"]}
    votes = read_votes(study_dir, study)
    comparisons = _comparisons(systems, pairs, votes)
    by_rater: dict[str, dict[str, str]] = {}
    for pid, rater, choice in votes:
        by_rater.setdefault(rater, {})[pid] = choice
    agreement = _rater_agreement(pairs, by_rater)
    judge = load_judge_verdicts(study_dir, study)
    return {
        "study": study["name"],
        "systems": systems,
        "n_pairs": len(pairs),
        "n_votes": len(votes),
        "raters": {r: len(v) for r, v in sorted(by_rater.items())},
        "comparisons": comparisons,
        "agreement": agreement,
        "llm_judge": None if judge is None else _judge_agreement(pairs, votes, judge),
    }
