"""Evaluation statistics (rlxf.eval.stats): Wilson intervals by hand, pass@k by enumerating subsets."""
from __future__ import annotations

import itertools
import math

import pytest

from rlxf.eval.stats import pass_at_k, wilson_interval

Z = 1.959964


def test_wilson_26_of_200_by_hand():
    """26/200, z = 1.959964 (the anchor's held-out set before training, reported as 13.0% [9.0, 18.4]).

    p = 0.13, z² = 3.841458881296, z²/n = 0.01920729440648, denominator 1 + z²/n = 1.01920729440648.
    centre = (p + z²/2n) / denominator = (0.13 + 0.00960364720324) / 1.01920729440648 = 0.1369727708675
    half = z·sqrt(p(1-p)/n + z²/4n²) / denominator
         = 1.959964 · sqrt(0.0005655 + 0.0000240091472) / 1.01920729440648 = 0.0466907483323
    interval = (0.0902820225352, 0.1836635191998), i.e. [9.0%, 18.4%] to one decimal place.
    """
    lo, hi = wilson_interval(26, 200)
    assert lo == pytest.approx(0.0902820225352, abs=1e-12)
    assert hi == pytest.approx(0.1836635191998, abs=1e-12)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (9.0, 18.4)


def test_wilson_edges_in_closed_form():
    """At 0 successes p = 0, so centre = half = (z²/2n) / (1 + z²/n) and the interval is [0, z²/(n + z²)];
    at n successes it mirrors to [n/(n + z²), 1]. For n = 10: z²/(10 + z²) = 3.841458881296 / 13.841458881296
    = 0.2775328030261. 1 of 2 is symmetric around 1/2: centre 1/2, half-width
    z·sqrt(1/8 + z²/16) / (1 + z²/2) = 0.4054687953608."""
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775328030261, abs=1e-12)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(1 - 0.2775328030261, abs=1e-12) and hi == pytest.approx(1.0, abs=1e-12)
    lo, hi = wilson_interval(1, 2)
    assert lo == pytest.approx(0.5 - 0.4054687953608, abs=1e-12)
    assert hi == pytest.approx(0.5 + 0.4054687953608, abs=1e-12)


@pytest.mark.parametrize(("s", "n"), [(3, 17), (50, 100), (199, 200), (1, 1000)])
def test_wilson_contains_p_symmetric_and_z_scales(s, n):
    lo, hi = wilson_interval(s, n)
    assert 0.0 <= lo < s / n < hi <= 1.0
    mirror_lo, mirror_hi = wilson_interval(n - s, n)
    assert (lo, hi) == pytest.approx((1 - mirror_hi, 1 - mirror_lo), abs=1e-12)
    narrow = wilson_interval(s, n, z=1.0)
    assert lo < narrow[0] and narrow[1] < hi


def test_wilson_empty_is_nan():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def _pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    """Fraction of the C(n, k) equally likely k-subsets of n samples (first c correct) with a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_enumeration_of_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = _pass_at_k_by_enumeration(n, c, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_hand_values_and_errors():
    """pass@1 is c/n; 2 of 4 correct, k = 2: 1 - C(2,2)/C(4,2) = 1 - 1/6."""
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6, abs=1e-15)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    for k in (0, 5):
        with pytest.raises(ValueError, match="0 < k <= n"):
            pass_at_k(4, 1, k)
