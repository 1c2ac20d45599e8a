"""The non-inferiority test behind the migration verdict (eval/noninferiority.py): the published example,
the boundary cases the percentile bootstrap got wrong, and its type I error at the null boundary, exact by
enumeration for 0/1 scores and simulated for graded ones."""

from __future__ import annotations

import numpy as np
import pytest

from ftscale.eval import noninferiority as ni
from ftscale.eval import verdict_error as ve


def test_tango_interval_matches_the_published_example():
    """Fagerland, Lydersen & Laake (2017), ch. 8: complete response before and after consolidation therapy
    (Cavo et al. 2012), 161 pairs with discordant counts 6 and 16: estimate -0.0621, Tango's asymptotic
    score interval -0.1240 to -0.0054 (their Wald interval: -0.1184 to -0.0058)."""
    low, high = ni.tango_interval(6, 16, 161)
    assert (round(low, 4), round(high, 4)) == (-0.1240, -0.0054)
    # at the bounds the statistic is exactly the normal quantile: the interval is the score test inverted
    assert float(ni.tango_z(6, 16, 161, low)) == pytest.approx(1.959964, abs=1e-5)


def test_agreement_on_few_items_shows_no_small_margin():
    """The issue's cases: 4 of 4 and 50 of 50 agreeing items passed at margin 0.02 (every bootstrap replicate
    0, an interval [0, 0]). 50 items: the one-sided 97.5% Wilson bound of 50/50 is 0.93, so nothing near 0.02
    can be shown; the exact test agrees and says how many items it takes."""
    for n in (4, 50):
        t = ni.noninferiority([[1.0] * n], [[1.0] * n], 0.02)
        assert t.diff == 0.0 and not t.passes() and t.low < -0.02 and t.p_value > 0.3
    assert ni.smallest_margin(50) == pytest.approx(0.072, abs=0.001)
    assert ni.smallest_margin(4) > 0.6
    assert ni.items_needed(0.02) == 195  # "about 190 items even with no disagreement"
    assert ni.noninferiority([[1.0] * 195], [[1.0] * 195], 0.02).passes()
    assert not ni.noninferiority([[1.0] * 194], [[1.0] * 194], 0.02).passes()
    # graded (two seeds) needs a few more
    assert 195 < ni.items_needed(0.02, seeds=2) < 260


def test_the_interval_and_the_test_say_the_same():
    a = [1.0] * 150 + [1.0] * 5 + [0.0] * 45
    b = [1.0] * 150 + [0.0] * 5 + [1.0] * 5 + [0.0] * 40
    t = ni.noninferiority([a], [b], 0.05)
    assert t.diff == 0.0 and t.low < 0.0 < t.high and t.passes() == (t.low > -0.05)
    lower = -t.low
    assert ni.exact_p(5, 5, 200, -(lower + 0.002)) <= ni.ALPHA < ni.exact_p(5, 5, 200, -(lower - 0.002))
    swapped = ni.noninferiority([b], [a], 0.05)  # the mirror image
    assert (swapped.low, swapped.high) == (pytest.approx(-t.high), pytest.approx(-t.low))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="align"):
        ni.noninferiority([[1.0, 0.0]], [[1.0]], 0.02)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        ni.noninferiority([[2.0, 0.0]], [[1.0, 1.0]], 0.02)
    with pytest.raises(ValueError, match="margin"):
        ni.noninferiority([[1.0]], [[1.0]], -0.1)


@pytest.mark.parametrize("margin", [0.02, 0.1])
def test_exact_type_one_error_is_at_most_alpha_at_every_small_n(margin):
    """Exact, every n from 4 to 60 and every joint distribution on the null boundary (a grid finer than and
    offset from the one the test scans). `ftscale bench verdict-error` runs the same to n = 400 (the figure in
    docs/reliability.md)."""
    worst = max(ve.exact_error(n, margin, points=401)["overall"] for n in range(4, 61))
    assert worst <= ni.ALPHA
    assert worst > 0.015  # the test spends its level: it is not vacuously conservative


def test_the_error_sum_matches_an_enumeration_of_every_outcome():
    """`exact_error` sums the rejection region by discordant count; here every outcome (b, c) is decided by
    the test itself and summed one by one."""
    for n, margin, r in ((10, 0.2, 0.25), (12, 0.1, 0.3), (8, 0.3, 0.5)):
        theta = -margin
        region = ni._first_b(n, theta, ve._decision_z(n, theta) - 1e-9)
        assert ve.enumerated_error(n, margin, r) == pytest.approx(float(ni._tail(region, n, theta, r)[0]), abs=1e-12)


def test_graded_type_one_error_by_simulation():
    """Several seeds make scores graded: the betting test. At the null boundary its error stays under alpha
    (here 400 simulated studies per case, the bound with three standard errors); with no true difference it
    does say yes once the items allow it, so the bound is not met by never saying yes."""
    rng = np.random.default_rng(1)
    for n, rate, swap in ((10, 0.9, 0.5), (100, 0.9, 0.0), (400, 0.8, 0.5), (400, 1.0, 0.0)):
        err = ve.graded_error(n, 0.1, 2, rate, swap, 400, rng)
        assert err <= ni.ALPHA + 3 * (ni.ALPHA * (1 - ni.ALPHA) / 400) ** 0.5, (n, rate, swap, err)
    assert ve.graded_error(400, 0.1, 2, 0.9, 0.0, 100, rng, true_difference=0.0) > 0.9
