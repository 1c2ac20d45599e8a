"""eval/stats.py: textbook values, the paired comparisons' behaviour under the null and under a real
difference (simulated), the per-example loader, and the experiment summary's intervals and paired section."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats as _st

from ftscale.errors import DataError
from ftscale.eval import stats
from ftscale.eval.latency import latency_of
from ftscale.eval.report import markdown
from ftscale.eval.result_row import Probes, ResultRow
from ftscale.eval.tasks import get_task

# ------------------------------------------------------------------------------------------------ textbook values


def test_wilson_matches_newcombe_1998():
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (score interval without correction)
    for (k, n), (lo, hi) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
                             (1, 29): (0.0061, 0.1718)}.items():
        assert stats.wilson(k, n) == (pytest.approx(lo, abs=5e-5), pytest.approx(hi, abs=5e-5))
    assert stats.wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.wilson(3, 2)


def _pairs(both: int, a_only: int, b_only: int, neither: int) -> tuple[list[float], list[float]]:
    a = [1.0] * both + [1.0] * a_only + [0.0] * b_only + [0.0] * neither
    b = [1.0] * both + [0.0] * a_only + [1.0] * b_only + [0.0] * neither
    return a, b


def test_mcnemar_exact_matches_the_published_example():
    # Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91: airway hyper-responsiveness before and
    # after stem cell transplantation, 1 and 7 discordant pairs of 21: exact conditional p = 0.070 (= 18/256)
    a, b = _pairs(1, 1, 7, 12)
    d = stats.paired_difference([a], [b])
    assert d.p_value == pytest.approx(18 / 256, abs=1e-12)
    assert d.method.startswith("McNemar exact") and d.n_items == 21
    assert d.diff == pytest.approx(-6 / 21)
    assert stats.paired_difference([b], [a]).p_value == pytest.approx(18 / 256)  # symmetric
    # not significant, so never "beats", however the bootstrap interval falls
    assert not stats.beats(stats.paired_difference([b], [a]), 18 / 256)


def test_holm_matches_its_definition():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") -> 0.03 0.06 0.06 0.02
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0] and stats.holm([]) == []
    assert stats.holm([0.2]) == [0.2]


def test_bootstrap_identical_systems_and_a_constant_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 0.2, size=(3, 150)).tolist()
    same = stats.paired_difference(x, x)
    assert same.diff == 0.0 and same.low <= 0.0 <= same.high and same.p_value == pytest.approx(1.0)
    assert same.method == "paired bootstrap (items, seeds)" and same.n_seeds_a == 3
    shifted = stats.paired_difference([[v + 0.25 for v in s] for s in x], x)
    assert shifted.diff == pytest.approx(0.25) and shifted.low < 0.25 < shifted.high  # seed noise remains
    one = stats.paired_difference([[v + 0.25 for v in x[0]]], [x[0]])  # one seed: the shift is exact
    assert (one.low, one.high) == (pytest.approx(0.25), pytest.approx(0.25))
    assert one.p_value == pytest.approx(2 / 2001) and stats.beats(one, one.p_value)
    assert not stats.beats(one, one.p_value, higher_is_better=False)


def test_the_issues_case_is_no_longer_significant():
    # 0.010 against 0.000 on 200 items: 2 discordant pairs, McNemar p = 0.5 (the old report: p = 0.0000)
    a, b = _pairs(0, 2, 0, 198)
    d = stats.paired_difference([a], [b])
    assert d.diff == pytest.approx(0.01) and d.p_value == pytest.approx(0.5) and d.low <= 0.0
    assert not stats.beats(d, d.p_value)
    # the same with the fine-tune's two seeds identical (the old test's zero spread): still not significant
    d2 = stats.paired_difference([a, a], [b])
    assert d2.p_value > 0.05 and d2.low <= 0.0 and not stats.beats(d2, d2.p_value)


def test_paired_difference_bad_input():
    a, b = _pairs(150, 5, 5, 40)
    with pytest.raises(ValueError, match="align"):
        stats.paired_difference([a], [b[:-1]])
    with pytest.raises(ValueError, match="not aligned"):
        stats.paired_difference([a, a[:-1]], [b])
    with pytest.raises(ValueError, match="no scores"):
        stats.paired_difference([], [b])
    with pytest.raises(ValueError, match="not 0 or 1"):
        stats.paired_difference([[0.5] * len(b)], [b], binary=True)
    graded = stats.paired_difference([a], [b], binary=False)  # 0/1 scores, compared as graded on request
    assert graded.method == "paired bootstrap (items)" and graded.diff == 0.0


def test_percentile_and_t_interval():
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert stats.percentile([3.0, 1.0, 2.0], 90) == pytest.approx(2.8)
    assert stats.percentile([5.0], 99) == 5.0
    mean, lo, hi = stats.t_interval([0.8, 0.9, 1.0])
    half = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025) * 0.1 / math.sqrt(3)  # t(0.975, 2) closed form x s/sqrt(n)
    assert mean == pytest.approx(0.9) and (lo, hi) == (pytest.approx(0.9 - half), pytest.approx(0.9 + half))
    assert half == pytest.approx(0.248414, abs=1e-6)
    assert stats.t_interval([0.7]) == (0.7, None, None)


def test_mean_interval():
    assert stats.mean_interval([1.0] * 8 + [0.0] * 2) == (0.8, *stats.wilson(8, 10))
    m, lo, hi = stats.mean_interval(list(np.linspace(0.0, 2.0, 101)))
    assert m == pytest.approx(1.0) and lo < 1.0 < hi and hi - lo == pytest.approx(2 * 1.96 * 0.586 / 10, rel=0.2)
    assert stats.mean_interval([0.5, 0.5]) == (0.5, 0.5, 0.5)


# ------------------------------------------------------------------------------------------------ simulation

N_ITEMS, DRAWS = 200, 240  # the reports' own 2,000 bootstrap replicates in every draw
# `beats` is one-sided: a two-sided p below 0.05 and the 95% interval wholly on a's side. Under the null a
# beats b in at most 2.5% of evaluations (b beats a in as many more).
NOMINAL = 0.025


def _beats_rate(a_prob: np.ndarray, b_prob: np.ndarray, seeds_a: int, seeds_b: int, seed: int,
                draws: int = DRAWS) -> float:
    """The share of draws in which a 'beats' b: each draw samples every seed's 0/1 score per item from the
    systems' per-item success probabilities, both systems sampled."""
    rng = np.random.default_rng(seed)
    wins = 0
    for i in range(draws):
        a = (rng.random((seeds_a, N_ITEMS)) < a_prob).astype(float)
        b = (rng.random((seeds_b, N_ITEMS)) < b_prob).astype(float)
        d = stats.paired_difference(a.tolist(), b.tolist(), seed=i)
        wins += stats.beats(d, d.p_value)
    return wins / draws


def _items(seed: int, a: float) -> np.ndarray:
    # item difficulty varies (as on any eval set, and more so with greedy decoding): Beta(a, a), mean 0.5
    return np.random.default_rng(seed).beta(a, a, size=N_ITEMS)


def _discordant(p: np.ndarray) -> np.ndarray:
    """P[k, m]: the exact probability that a alone solves k items and b alone m, each system solving item i
    on its own with probability p[i] (the null), built up item by item."""
    prob = np.zeros((len(p) + 1, len(p) + 1))
    prob[0, 0] = 1.0
    for r in p * (1 - p):  # a alone, and b alone, each with probability p (1 - p)
        step = prob * (1 - 2 * r)
        step[1:] += prob[:-1] * r
        step[:, 1:] += prob[:, :-1] * r
        prob = step
    return prob


def test_under_the_null_beats_stays_at_the_nominal_rate_exactly_with_one_seed_a_side():
    """One seed a side, 0/1 scores: an evaluation is a table of discordant pairs (a alone k, b alone m), whose
    exact probability is known. `beats` is asked of every table in turn, most probable first, until all but
    1e-4 of the probability is covered (that rest counted as if a beat b there): no simulation error."""
    prob = _discordant(_items(7, 0.5))
    order = np.argsort(prob, axis=None)[::-1]
    covered = np.cumsum(prob.ravel()[order])
    tables = order[:int(np.searchsorted(covered, 1 - 1e-4)) + 1]
    rate = 0.0
    for k, m in zip(*np.unravel_index(tables, prob.shape)):
        rest = N_ITEMS - k - m  # the concordant items, half solved by both: the bootstrap sees only k, m and n
        a = [1.0] * k + [0.0] * m + [1.0] * (rest // 2) + [0.0] * (rest - rest // 2)
        b = [0.0] * k + [1.0] * m + [1.0] * (rest // 2) + [0.0] * (rest - rest // 2)
        d = stats.paired_difference([a], [b])
        rate += prob[k, m] * stats.beats(d, d.p_value)
    assert rate + (1 - covered[len(tables) - 1]) <= NOMINAL
    assert rate > 0.01  # near its bound (McNemar's exact test is conservative on counts): a 5% test would fail


@pytest.mark.parametrize("seeds_a,seeds_b,draws", [(3, 1, 1500), (3, 3, 400)])
def test_under_the_null_beats_stays_at_the_nominal_rate_with_seeds(seeds_a, seeds_b, draws):
    """Seeds make it a bootstrap's p: simulated, the rate's exact (Clopper-Pearson) 95% upper bound must lie at
    or below the nominal rate, which shows the rate itself is. (It lies far below: the seeds are resampled on
    top of the items, whose means already carry the seeds' noise.)"""
    p = _items(7, 0.5)
    wins = round(_beats_rate(p, p, seeds_a, seeds_b, seed=11, draws=draws) * draws)
    assert _st.binomtest(wins, draws).proportion_ci(0.95, method="exact").high <= NOMINAL, (wins, draws)


@pytest.mark.parametrize("seeds_a,seeds_b", [(1, 1), (3, 1)])
def test_a_true_difference_of_one_tenth_is_found(seeds_a, seeds_b):
    # a solves each item with p + 0.2 (1 - p): on average 0.1 more, the gain on items b does not always solve
    p = _items(7, 0.2)
    q = p + 0.2 * (1 - p)
    assert q.mean() - p.mean() == pytest.approx(0.1, abs=0.02)
    assert _beats_rate(q, p, seeds_a, seeds_b, seed=12) >= 0.8


# ------------------------------------------------------------------------------------------------ loading


def _write_generations(path, values: list, metrics=("format_ok",), errors: dict | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = errors or {}
    with open(path, "w") as f:
        for i, v in enumerate(values):
            err = errors.get(i)
            scores = None if err else {m: v for m in metrics}
            f.write(json.dumps({"id": f"ex{i}", "error": err, "scores": scores}) + "\n")
    return path


def test_per_example_and_align(tmp_path):
    path = _write_generations(tmp_path / "a.jsonl", [1.0, None, 0.0, 1.0], errors={3: "timeout"})
    assert stats.per_example(path, "format_ok") == {"ex0": 1.0, "ex2": 0.0, "ex3": 0.0}  # failed: 0; None: left out
    assert stats.per_example(path, "other") == {}  # not a per-example metric
    other = {"ex0": 0.0, "ex1": 1.0, "ex3": 1.0, "ex9": 1.0}
    a, b, ids, dropped = stats.align([stats.per_example(path, "format_ok")], [other])
    assert ids == ["ex0", "ex3"] and a == [[1.0, 0.0]] and b == [[0.0, 1.0]] and dropped == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "error": null, "scores": {}}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not a generation record"):
        stats.per_example(bad, "format_ok")


# ------------------------------------------------------------------------------------------------ the summary


def _row(tmp_path, n, variant, k, seed=42):
    """One evaluation of 200 examples, the first k correct (nested, as with items of graded difficulty)."""
    gen = _write_generations(tmp_path / f"n{n}-{variant}" / "generations.jsonl", [1.0] * k + [0.0] * (200 - k),
                             ("format_ok", "answer_correct"))
    one_second = latency_of([{"error": None, "latency_s": 1.0, "ttft_s": None, "output_tokens": 20,
                              "input_tokens": 60}])
    return ResultRow(system="hf", backend="hf", model="smollm2-135m", num_train_examples=n, seed=seed,
                     prompt_variant=variant, temperature=0.0, n_eval=200,
                     metrics={"format_ok": k / 200, "answer_correct": k / 200, "both": k / 200}, failed=0,
                     not_scorable={}, latency=one_second, mean_output_tokens=20.0, train_wall_time_s=None,
                     train_tokens_per_s=None, generations=str(gen))


def test_summary_shows_intervals_and_paired_differences(tmp_path):
    rows = [_row(tmp_path, 0, "default", 90), _row(tmp_path, 0, "few_shot", 136), _row(tmp_path, 50, "default", 139),
            _row(tmp_path, 100, "default", 170)]
    probes = _write_generations(tmp_path / "probes" / "generations.jsonl", [1.0] * 7 + [0.0] * 3, ("correct",))
    rows[2].probes = Probes({"correct": 0.7}, 10, str(probes))  # probes asked beside the evaluation
    md = markdown(rows, get_task("formatting"), "t", tmp_path)
    lo, hi = stats.wilson(139, 200)
    assert f"| 50 | 42 | hf | default | 200 | 0.695 [{lo:.3f}, {hi:.3f}] |" in md
    lo, hi = stats.wilson(7, 10)
    assert f"| 0.695 | 0.700 [{lo:.3f}, {hi:.3f}] | 0 |" in md and "| 0.450 | – | 0 |" in md
    section = md.split("## Fine-tunes against the untrained base (paired)")[1]
    # 0.695 (50 examples) against 0.680 (the few-shot base): 3 discordant pairs, indistinguishable
    d = stats.paired_difference([[1.0] * 139 + [0.0] * 61], [[1.0] * 136 + [0.0] * 64])
    p = stats.holm([d.p_value, stats.paired_difference([[1.0] * 170 + [0.0] * 30],
                                                       [[1.0] * 136 + [0.0] * 64]).p_value])[0]
    assert (f"| 50 | 42 | hf | default | 0 | format_ok | best prompted base, few_shot prompt | {d.text()} | "
            f"{stats.p_text(p)} | 200 | indistinguishable |") in section
    assert d.text() == "+0.015 [+0.000, +0.035]" and d.p_value == 0.25
    assert "| 100 | 42 | hf | default | 0 | format_ok | best prompted base, few_shot prompt | +0.170 " in section
    # 50 and 100 against the plain base, 100 against few-shot, for both headline metrics; `both` has no
    # per-example scores in these files, so it is not compared
    assert section.count("| better |") == 6 and section.count("| indistinguishable |") == 2
    assert "| both |" not in section and "| 0.0000 |" not in section and "e-" in section


def test_summary_of_a_graded_lower_is_better_metric_with_failures(tmp_path):
    """Words (fewer is better), graded: a bootstrap interval beside the mean, failed requests counted as 0 as
    the mean counts them, and 'better' meaning fewer words."""
    from ftscale.eval.tasks import Metric, Task

    fmt = get_task("formatting")
    task = Task(name="lengthy", metrics=(Metric("words", "output length", higher_is_better=False),),
                prompt_variants=("default",), build_messages=fmt.build_messages, score=fmt.score)
    rng = np.random.default_rng(3)
    base_words = rng.normal(40.0, 6.0, 120).round()
    rows = []
    for n, words, errors in ((0, base_words, {}), (25, base_words - 1.0, {}), (50, base_words - 8.0, {5: "timeout"})):
        gen = _write_generations(tmp_path / f"n{n}" / "generations.jsonl", list(words), ("words",), errors)
        values = list(stats.per_example(gen, "words").values())
        row = _row(tmp_path, n, "default", 0)
        row = replace(row, n_eval=120, metrics=row.metrics | {"words": sum(values) / 120}, generations=str(gen),
                      failed=len(errors))
        rows.append(row)
    md = markdown(rows, task, "t", tmp_path)
    mean, lo, hi = stats.mean_interval(values)
    assert lo < mean < hi and hi - lo > 1.0  # a real spread, from scipy.stats.bootstrap
    assert f"| 50 | 42 | hf | default | 120 | {mean:.3f} [{lo:.3f}, {hi:.3f}] |" in md
    section = md.split("## Fine-tunes against the untrained base (paired)")[1]
    d25 = stats.paired_difference([list(base_words - 1.0)], [list(base_words)])
    assert (d25.low, d25.high) == (pytest.approx(-1.0), pytest.approx(-1.0))  # an exact shift, one seed a side
    assert "| 25 | 42 | hf | default | 0 | words | base, default prompt | -1.000 [-1.000, -1.000] |" in section
    line50 = next(line for line in section.splitlines() if line.startswith("| 50 |"))
    assert line50.endswith("| 120 | better |") and "| -" in line50  # fewer words; the failure's 0 included
    assert section.count("| better |") == 2
