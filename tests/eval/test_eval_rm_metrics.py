"""Reward-model metrics against values worked out by hand (derivations in the docstrings)."""
import math

import pytest

from rlxf.eval import rm_metrics as M


def test_pair_accuracy_counts_ties_as_half():
    """margins [2, -1, 0, 0.5]: wins 2 (2, 0.5), tie 1 (0), loss 1 (-1).
    accuracy = (2 + 0.5) / 4 = 0.625; ties wrong: 2/4; without ties: 2/3; tie rate 1/4;
    mean margin = (2 - 1 + 0 + 0.5) / 4 = 0.375."""
    r = M.pair_accuracy([2.0, -1.0, 0.0, 0.5])
    assert (r["n"], r["wins"], r["ties"], r["losses"]) == (4, 2, 1, 1)
    assert r["accuracy"] == pytest.approx(0.625, rel=1e-12)
    assert r["accuracy_ties_wrong"] == pytest.approx(0.5)
    assert r["accuracy_no_ties"] == pytest.approx(2 / 3)
    assert r["tie_rate"] == pytest.approx(0.25)
    assert r["mean_margin"] == pytest.approx(0.375)


def test_pair_accuracy_tie_tolerance_and_empty():
    """tie_tol=0.5 makes 0.5 a tie too: wins 1, ties 2, losses 1 -> accuracy (1 + 1) / 4 = 0.5."""
    r = M.pair_accuracy([2.0, -1.0, 0.0, 0.5], tie_tol=0.5)
    assert (r["wins"], r["ties"], r["losses"]) == (1, 2, 1)
    assert r["accuracy"] == pytest.approx(0.5)
    empty = M.pair_accuracy([])
    assert empty["n"] == 0 and math.isnan(empty["accuracy"])
    all_ties = M.pair_accuracy([0.0, 0.0])
    assert all_ties["accuracy"] == 0.5 and math.isnan(all_ties["accuracy_no_ties"])
    with pytest.raises(ValueError, match="not finite"):
        M.pair_accuracy([1.0, math.nan])


def test_ece_two_bins_by_hand():
    """2 bins of [0, 1]: {0.2, 0.4} (mean conf 0.3, acc 0.5) and {0.7, 0.9} (mean conf 0.8, acc 1).
    ECE = 2/4 * |0.5 - 0.3| + 2/4 * |1 - 0.8| = 0.1 + 0.1 = 0.2."""
    ece = M.expected_calibration_error([0.2, 0.4, 0.7, 0.9], [0, 1, 1, 1], n_bins=2)
    assert ece == pytest.approx(0.2, rel=1e-12)


def test_ece_bins_are_half_open():
    """0.5 falls in the upper of 2 bins: bins {0.25, y=0} and {0.5, y=1}: 1/2*0.25 + 1/2*0.5 = 0.375
    (were 0.5 in the lower bin: 2/2 * |0.5 - 0.375| = 0.125)."""
    assert M.expected_calibration_error([0.5, 0.25], [1, 0], n_bins=2) == pytest.approx(0.375)
    assert M.expected_calibration_error([1.0], [1], n_bins=10) == 0.0  # hi itself goes to the last bin
    with pytest.raises(ValueError, match="outside"):
        M.expected_calibration_error([1.2], [1])
    assert math.isnan(M.expected_calibration_error([], []))


def test_pairwise_ece_by_hand():
    """p = [0.9, 0.2, 0.5, 0.7]: confidence max(p, 1-p) = [0.9, 0.8, 0.5, 0.7], correct [1, 0, 0.5, 1].
    10 bins of [0.5, 1] (width 0.05) put the four in four different bins, so ECE = mean |correct - conf|
    = (0.1 + 0.8 + 0 + 0.3) / 4 = 0.3. With one bin: |mean correct - mean conf| = |0.625 - 0.725| = 0.1."""
    p = [0.9, 0.2, 0.5, 0.7]
    assert M.pairwise_ece(p) == pytest.approx(0.3, rel=1e-9)
    assert M.pairwise_ece(p, n_bins=1) == pytest.approx(0.1, rel=1e-9)


def test_pairwise_ece_is_zero_when_calibrated():
    """Four pairs at p = 0.75 with three right (the fourth is 0.25 on its chosen side, i.e. confident in the
    wrong answer): confidence 0.75 everywhere, accuracy 3/4 -> ECE 0."""
    assert M.pairwise_ece([0.75, 0.75, 0.75, 0.25]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.pairwise_ece([1.5])


def test_ranks_average_ties():
    assert M.ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1]
    assert M.ranks([]) == []


def test_pearson_by_hand():
    """x = [1, 2, 3], y = [2, 4, 7]: dx = [-1, 0, 1], dy = [-7/3, -1/3, 8/3]; sxy = 5, sxx = 2,
    syy = 114/9, r = 5 / sqrt(2 * 114/9) = 15 / sqrt(228)."""
    assert M.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(15 / math.sqrt(228), rel=1e-12)
    assert M.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(M.pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(M.pearson([1], [2]))


def test_spearman_by_hand():
    """y ranks [1, 3, 2, 4] against [1, 2, 3, 4]: sum d^2 = 2, rho = 1 - 6*2 / (4*15) = 0.8.
    With a tie, x = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]; Pearson with [1, 2, 3, 4]:
    sxy = 4.5, sxx = 4.5, syy = 5 -> 4.5 / sqrt(22.5) = 3 / sqrt(10)."""
    assert M.spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8, rel=1e-12)
    assert M.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10), rel=1e-12)


def test_prefers_longer_rate_by_hand():
    """Pair 0 prefers the longer chosen (yes); pair 1 prefers the shorter rejected (no); pair 2 is a tie
    (skipped); pair 3 prefers the shorter chosen (no); pair 4 has equal lengths (skipped) -> 1/3."""
    rate = M.prefers_longer_rate([1, -1, 0, 2, 3], [10, 10, 10, 5, 7], [5, 5, 1, 9, 7])
    assert rate == pytest.approx(1 / 3)
    assert math.isnan(M.prefers_longer_rate([0.0], [1], [2]))


def test_logit_sigmoid_round_trip_and_extremes():
    assert M.sigmoid(M.logit(0.3)) == pytest.approx(0.3, rel=1e-12)
    assert M.logit(0.5) == 0.0
    assert M.logit(1.0) == pytest.approx(math.log((1 - 1e-6) / 1e-6))
    assert M.logit(0.0) == -M.logit(1.0)
    assert M.sigmoid(-1000.0) == 0.0 and M.sigmoid(1000.0) == 1.0
    with pytest.raises(ValueError):
        M.logit(1.5)
