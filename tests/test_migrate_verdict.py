"""The migration verdict on constructed per-example scores where the right answer is known: clearly equal,
clearly worse, worse by less than the margin, too few items to tell, sizes tested from the largest down, the
level shared among local systems, and a lower-is-better metric."""

from __future__ import annotations

from ftscale.eval.migration_verdict import decide, size_tests, verdict

N = 800
REF = {f"q{i}": 1.0 for i in range(N)}  # agreement metrics: the fine-tune agrees with itself


def seeds(*wrong_counts: int, n: int = N) -> list[dict]:
    """One {id: score} per seed, wrong on the first `k` items."""
    return [{f"q{i}": float(i >= k) for i in range(n)} for k in wrong_counts]


def _verdict(local: dict, ref=REF, margin=0.02, higher=True, name="smol LoRA") -> tuple[list[dict], dict]:
    tests = size_tests(local, ref, margin, higher)
    decision = decide({name: tests})[name]
    return tests, verdict(name, tests, decision, margin, "ft:x", higher)


def test_the_smallest_noninferior_size_is_found():
    local = {8: seeds(400, 392), 16: seeds(4, 5), 24: seeds(0, 0)}  # half wrong; 0.5% wrong; equal
    tests, v = _verdict(local)
    assert [t["p_value"] <= 0.025 for t in tests] == [False, True, True]
    assert tests[0]["high"] < -0.4 and -0.02 < tests[1]["low"] < tests[1]["diff"] < 0
    assert tests[2]["diff"] == 0.0 and tests[2]["n_items"] == N and tests[2]["n_seeds"] == 2
    assert v["smallest_n"] == 16 and v["line"].startswith("smol LoRA: YES, matches ft:x from n=16")
    assert "sizes passed from the largest down: 24, 16" in v["line"]


def test_only_a_middle_size_passing_is_no_yes():
    """Testing every size and taking the smallest that passes would say YES at 16: the sequence from the
    largest size stops at 24, which fails, so nothing is claimed."""
    local = {8: seeds(400), 16: seeds(0), 24: seeds(100)}
    tests, v = _verdict(local)
    assert tests[1]["p_value"] <= 0.025  # 16 alone would pass
    assert v["smallest_n"] is None and v["kind"] == "not yet" and "n=24" in v["line"]


def test_clearly_worse_says_not_yet():
    _, v = _verdict({8: seeds(360), 16: seeds(160)})
    assert v["smallest_n"] is None
    assert v["line"].startswith("smol LoRA: not yet: add data or a larger model") and "clearly worse" in v["line"]
    assert "n=16" in v["line"]


def test_worse_by_more_than_the_margin_fails_even_when_close():
    tests, v = _verdict({8: seeds(40)})  # 5% worse, a tight interval: outside the margin
    assert tests[0]["p_value"] > 0.5 and tests[0]["high"] < -0.02 and v["kind"] == "not yet"


def test_perfect_agreement_on_few_items_is_no_verdict():
    """The issue's case: 4 of 4 (and 50 of 50) agreeing items said YES at margin 0.02; they cannot show it."""
    for n in (4, 50):
        tests, v = _verdict({8: seeds(0, n=n)}, ref={f"q{i}": 1.0 for i in range(n)})
        assert tests[0]["diff"] == 0.0 and tests[0]["p_value"] > 0.025 and tests[0]["low"] < -0.02
        assert v["kind"] == "too little evidence" and v["smallest_n"] is None
        assert f"{n} paired items can show a margin of {tests[0]['showable_margin']:.3f} at best" in v["line"]
    assert tests[0]["showable_margin"] > 0.07  # 50 items: about 0.072
    tests, v = _verdict({8: seeds(0, n=200)}, ref={f"q{i}": 1.0 for i in range(200)})
    assert v["kind"] == "yes"  # 200 agreeing items do show 0.02 (195 are needed)


def test_too_few_items_is_not_shown_rather_than_claimed():
    ref = {f"q{i}": float(i % 2) for i in range(20)}
    local = {8: [{f"q{i}": float(i % 2 if i > 1 else 1 - i % 2) for i in range(20)}]}  # equal mean, 2 swaps
    tests, v = _verdict(local, ref=ref)
    assert tests[0]["diff"] == 0.0 and tests[0]["p_value"] > 0.025
    assert v["kind"] == "too little evidence" and "20 paired items" in v["line"]


def test_lower_is_better_refuses_a_clearly_larger_local_score():
    """An error rate (lower is better) where the local model errs far more often: refused, and the words say
    which way is worse. With the direction flipped the same scores would be a clear YES."""
    ref = {f"q{i}": 0.0 for i in range(N)}  # the fine-tune never errs
    local = {16: [{f"q{i}": float(i < 200) for i in range(N)}]}  # the local model errs on a quarter
    tests, v = _verdict(local, ref=ref, higher=False)
    assert tests[0]["diff"] == 0.25 and tests[0]["low"] > 0.02 and tests[0]["p_value"] > 0.5
    assert v["kind"] == "not yet" and "clearly worse" in v["line"]
    flipped, yes = _verdict(local, ref=ref, higher=True)
    assert yes["kind"] == "yes" and flipped[0]["p_value"] < 1e-6
    better = {16: [{f"q{i}": 0.0 for i in range(N)}]}
    _, v = _verdict(better, ref={f"q{i}": float(i < 4) for i in range(N)}, higher=False)
    assert v["kind"] == "yes" and "higher (worse) by 0.02 or more" in v["line"]


def test_several_local_systems_share_the_level():
    """Two systems whose every test has p between 0.0125 and 0.025: each would pass alone at 0.025, but
    choosing the better of two must not: each gets 0.0125 and neither passes. A system whose tests all pass
    at its share hands the share on."""
    n = 220  # 220 agreeing items: p about 0.017 at margin 0.02
    ref = {f"q{i}": 1.0 for i in range(n)}
    tests = {s: size_tests({8: seeds(0, n=n)}, ref, 0.02) for s in ("a", "b")}
    assert 0.0125 < tests["a"][0]["p_value"] < 0.025
    assert decide({"a": tests["a"]})["a"]["passed"] == [8]
    both = decide(tests)
    assert both["a"]["passed"] == [] and both["b"]["passed"] == [] and both["a"]["level"] == 0.0125
    strong = size_tests({8: seeds(0, n=N)}, REF, 0.02)  # p far below 0.0125: passes, then a gets 0.025
    d = decide({"strong": strong, "a": tests["a"]})
    assert d["strong"]["passed"] == [8] and d["a"]["passed"] == [8] and d["a"]["level"] == 0.025


def test_items_scored_on_one_side_only_are_left_out():
    ref = {"a": 1.0, "b": 1.0, "c": 1.0}
    assert size_tests({8: [{"a": 1.0, "b": 1.0}]}, ref, margin=0.02)[0]["n_items"] == 2  # c not scorable locally
    empty = size_tests({8: [{"z": 1.0}]}, ref, margin=0.02)
    assert empty[0]["n_items"] == 0 and empty[0]["p_value"] == 1.0
    assert verdict("s", empty, decide({"s": empty})["s"], 0.02, "ft:x")["kind"] == "none"
