"""Held-out preference metrics (rlxf.eval.preference.preference_metrics) on values worked out by hand."""
import pytest
import torch

from rlxf.eval.preference import TIE_RTOL, preference_metrics


def test_preference_metrics_by_hand_with_last_bit_ties():
    """Four pairs, summed log-probs (policy chosen c, ref chosen rc, policy rejected r, ref rejected rr) and the
    log-ratio difference d = (c - rc) - (r - rr):

    1. c = -10, rc = -10 - 1e-9, r = rr = -20: d = 1e-9, far inside float32 rounding of sums near 60
       (tolerance TIE_RTOL * 60 = 6e-5): a tie, counted wrong although d > 0;
    2. c = -10, rc = -10.5, r = rr = -20: d = 0.5, a win;
    3. c = -10, rc = -10.0001, r = rr = -20: d = 1e-4 > 6.00001e-5, a win;
    4. c = -10, rc = -9.5, r = rr = -20: d = -0.5, a loss.
    accuracy = 2/4, ties = 1; with beta = 0.1 the margins are 0.1 d: mean = 0.1 (1e-9 + 0.5 + 1e-4 - 0.5) / 4;
    ranking accuracy (c > r) = 1; chosen reward = 0.1 mean(c - rc) = 0.1 (1e-9 + 0.5 + 1e-4 - 0.5) / 4."""
    c = torch.tensor([-10.0, -10.0, -10.0, -10.0], dtype=torch.float64)
    rc = torch.tensor([-10.0 - 1e-9, -10.5, -10.0001, -9.5], dtype=torch.float64)
    r = rr = torch.full((4,), -20.0, dtype=torch.float64)
    lengths = torch.tensor([4.0, 4.0, 4.0, 4.0], dtype=torch.float64)
    m = preference_metrics(c, r, rc, rr, lengths, lengths, beta=0.1)
    assert TIE_RTOL == 1e-6
    assert m["accuracy"] == 0.5 and m["ties"] == 1 and m["n"] == 4
    expected_margin = 0.1 * (1e-9 + 0.5 + 1e-4 - 0.5) / 4
    assert m["margin"] == pytest.approx(expected_margin, rel=1e-5)
    assert m["chosen_reward"] == pytest.approx(expected_margin, rel=1e-5)
    assert m["rejected_reward"] == 0.0
    assert m["ranking_accuracy"] == 1.0
    assert m["chosen_token_logps"] == pytest.approx(-2.5, rel=1e-5)


def test_exactly_equal_policy_and_reference_score_zero():
    """pi = pi_ref: every margin is 0 and every pair a tie, so accuracy is 0 (ties count wrong)."""
    x = torch.tensor([-3.0, -7.5, -12.25])
    lengths = torch.ones(3)
    m = preference_metrics(x, x - 1, x, x - 1, lengths, lengths, beta=0.5)
    assert (m["accuracy"], m["ties"], m["margin"]) == (0.0, 3, 0.0)
