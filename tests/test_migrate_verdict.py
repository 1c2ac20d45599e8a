"""The migration verdict on constructed per-example scores where the right answer is known:
clearly equal, clearly worse, worse by less than the margin, and too few items to tell."""

from __future__ import annotations

from ftscale.eval.migration_report import size_tests, verdict

N = 800
REF = {f"q{i}": 1.0 for i in range(N)}  # agreement metrics: the fine-tune agrees with itself


def seeds(*wrong_counts: int) -> list[dict]:
    """One {id: score} per seed, wrong on the first `k` items."""
    return [{f"q{i}": float(i >= k) for i in range(N)} for k in wrong_counts]


def test_the_smallest_noninferior_size_is_found():
    local = {8: seeds(400, 392), 16: seeds(4, 5), 24: seeds(0, 0)}  # half wrong; 0.5% wrong; equal
    tests = size_tests(local, REF, margin=0.02)
    assert [t["noninferior"] for t in tests] == [False, True, True]
    assert tests[0]["high"] < -0.4 and -0.02 < tests[1]["low"] < tests[1]["diff"] < 0
    assert tests[2]["diff"] == 0.0 and tests[2]["n_items"] == N and tests[2]["n_seeds"] == 2
    v = verdict("smol LoRA", tests, 0.02, "ft:x")
    assert v["smallest_n"] == 16 and v["line"].startswith("smol LoRA: YES, matches ft:x from n=16")


def test_clearly_worse_says_not_yet():
    tests = size_tests({8: seeds(360), 16: seeds(160)}, REF, margin=0.02)
    v = verdict("smol LoRA", tests, 0.02, "ft:x")
    assert v["smallest_n"] is None
    assert v["line"].startswith("smol LoRA: not yet: add data or a larger model") and "clearly worse" in v["line"]
    assert "n=16" in v["line"]


def test_worse_by_more_than_the_margin_fails_even_when_close():
    tests = size_tests({8: seeds(40)}, REF, margin=0.02)  # 5% worse, a tight interval: outside the margin
    assert tests[0]["noninferior"] is False and tests[0]["high"] < -0.02


def test_too_few_items_is_not_shown_rather_than_claimed():
    ref = {f"q{i}": float(i % 2) for i in range(20)}
    local = {8: [{f"q{i}": float(i % 2 if i > 1 else 1 - i % 2) for i in range(20)}]}  # equal mean, 2 swaps
    tests = size_tests(local, ref, margin=0.02)
    assert tests[0]["diff"] == 0.0 and tests[0]["noninferior"] is False  # the interval is wider than the margin
    v = verdict("smol LoRA", tests, 0.02, "ft:x")
    assert "not yet" in v["line"] and "not shown within the margin (20 items" in v["line"]


def test_items_scored_on_one_side_only_are_left_out():
    ref = {"a": 1.0, "b": 1.0, "c": 1.0}
    tests = size_tests({8: [{"a": 1.0, "b": 1.0}]}, ref, margin=0.02)  # c not scorable for the local side
    assert tests[0]["n_items"] == 2
    assert size_tests({8: [{"z": 1.0}]}, ref, margin=0.02)[0]["n_items"] == 0
