"""Reward-model losses against values worked out by hand, extremes, gradient signs and shape checks."""
import math

import pytest
import torch

from rlxf.objectives import get_objective, list_objectives
from rlxf.objectives.reward_model import (
    bradley_terry_loss,
    pinball_loss,
    quantile_bt_loss,
    quantile_levels,
    reward_centering_penalty,
    soft_bt_loss,
)


def _sp(x: float) -> float:
    """softplus in float64 as the hand reference: log(1 + e^x)."""
    return math.log1p(math.exp(x))


def test_registered_as_reward_model_kind():
    names = list_objectives(kind="reward_model")
    assert {"bradley_terry", "soft_bt", "quantile_bt"} <= set(names)
    assert get_objective("bradley_terry", kind="reward_model") is bradley_terry_loss
    with pytest.raises(KeyError):
        get_objective("bradley_terry", kind="preference")


def test_bradley_terry_hand_values():
    """-log sigma(d) = softplus(-d) = log(1 + e^-d). d = 2 - 1 = 1 -> log(1 + e^-1) = 0.3132617;
    d = 0 -> log 2 = 0.6931472; d = -3 -> log(1 + e^3) = 3.0485874. With margin m = (0.5, 1, -1) the logits
    are d - m = (0.5, -1, -2) -> log(1+e^-0.5) = 0.4740770, log(1+e) = 1.3132617, log(1+e^2) = 2.1269280."""
    chosen = torch.tensor([2.0, 0.0, -1.0])
    rejected = torch.tensor([1.0, 0.0, 2.0])
    out = bradley_terry_loss(chosen, rejected)
    torch.testing.assert_close(out.loss, torch.tensor([0.3132617, 0.6931472, 3.0485874]), rtol=1e-5, atol=0)
    assert out.loss.dtype == torch.float32
    assert out.metrics["reward_accuracy"].item() == pytest.approx(1 / 3)
    torch.testing.assert_close(out.metrics["reward_margin"], torch.tensor(-2 / 3))
    with_margin = bradley_terry_loss(chosen, rejected, margin=torch.tensor([0.5, 1.0, -1.0]))
    torch.testing.assert_close(with_margin.loss, torch.tensor([0.4740770, 1.3132617, 2.1269280]), rtol=1e-5, atol=0)


def test_bradley_terry_gradient_signs_and_extremes():
    """The loss pushes r_w up and r_l down; a margin raises the loss. At +-100 the loss is finite:
    d = +100 -> ~e^-100 (tiny), d = -100 -> 100 + log(1 + e^-100) = 100."""
    chosen = torch.tensor([100.0, -100.0, 0.3], requires_grad=True)
    rejected = torch.tensor([-0.0, 0.0, 0.1], requires_grad=True)
    out = bradley_terry_loss(chosen, rejected, margin=torch.tensor([0.0, 0.0, 0.0]))
    out.loss.sum().backward()
    assert torch.isfinite(out.loss).all() and torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    assert out.loss[1].item() == pytest.approx(100.0, rel=1e-6)
    assert (chosen.grad[1:] < 0).all() and (rejected.grad[1:] > 0).all()
    plain = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0])).loss
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=torch.tensor([0.5])).loss > plain


def test_soft_bt_hand_values():
    """p* = sigma(gamma (s_w - s_l)); L = p* sp(-d) + (1 - p*) sp(d), d = r_w - r_l.
    Row 1: gamma = 0.5, s_w - s_l = 2 -> p* = sigma(1) = 0.7310586; d = 1 -> 0.7310586 * 0.3132617
    + 0.2689414 * 1.3132617 = 0.5822031. Row 2: equal scores -> p* = 1/2, d = 0 -> log 2 = 0.6931472."""
    out = soft_bt_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 3.0]), torch.tensor([4.0, 1.0]),
                       torch.tensor([2.0, 1.0]), gamma=0.5)
    p = 1 / (1 + math.exp(-1.0))
    expected = [p * _sp(-1.0) + (1 - p) * _sp(1.0), math.log(2)]
    torch.testing.assert_close(out.loss, torch.tensor(expected), rtol=1e-5, atol=0)
    assert expected[0] == pytest.approx(0.5822031, rel=1e-6)
    torch.testing.assert_close(out.metrics["target_prob"], torch.tensor((p + 0.5) / 2))


def test_soft_bt_minimum_at_matched_margin_and_extremes():
    """dL/dd = sigma(d) - p*: zero where d = gamma (s_w - s_l) = 0.5 * 2 = 1; negative below, positive above.
    Extremes (d = +-100, score gaps of 1e4) stay finite."""
    for d, sign in ((0.5, -1), (1.0, 0), (2.0, 1)):
        chosen = torch.tensor([d], requires_grad=True)
        out = soft_bt_loss(chosen, torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([0.0]), gamma=0.5)
        out.loss.sum().backward()
        if sign == 0:
            assert abs(chosen.grad.item()) < 1e-6
        else:
            assert math.copysign(1, chosen.grad.item()) == sign
    chosen = torch.tensor([100.0, -100.0], requires_grad=True)
    out = soft_bt_loss(chosen, torch.zeros(2), torch.tensor([1e4, -1e4]), torch.zeros(2), gamma=1.0)
    out.loss.sum().backward()
    assert torch.isfinite(out.loss).all() and torch.isfinite(chosen.grad).all()
    with pytest.raises(ValueError, match="gamma"):
        soft_bt_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), gamma=-1.0)


def test_reward_centering_hand_values_and_gradient():
    """eta (r_w + r_l)^2 with eta = 0.1: (1 + 2)^2 = 9 -> 0.9; (-1 + 0.5)^2 = 0.25 -> 0.025.
    Gradient wrt r_w is 2 eta (r_w + r_l): 0.6 and -0.1 (pulls the pair's sum to 0)."""
    chosen = torch.tensor([1.0, -1.0], requires_grad=True)
    out = reward_centering_penalty(chosen, torch.tensor([2.0, 0.5]), coef=0.1)
    torch.testing.assert_close(out.loss, torch.tensor([0.9, 0.025]), rtol=1e-5, atol=0)
    torch.testing.assert_close(out.metrics["center_mean"], torch.tensor((1.5 - 0.25) / 2))
    out.loss.sum().backward()
    torch.testing.assert_close(chosen.grad, torch.tensor([0.6, -0.1]), rtol=1e-5, atol=0)
    big = reward_centering_penalty(torch.tensor([100.0]), torch.tensor([100.0]), coef=1.0)
    assert torch.isfinite(big.loss).all() and big.loss.item() == pytest.approx(40000.0)


def test_quantile_bt_reduces_to_bt_for_one_quantile():
    chosen, rejected = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([1.0, 2.0, 0.0])
    torch.testing.assert_close(quantile_bt_loss(chosen[:, None], rejected[:, None]).loss,
                               bradley_terry_loss(chosen, rejected).loss, rtol=1e-6, atol=0)


def test_quantile_bt_hand_values():
    """K = 2, q_w = (0, 2), q_l = (1, 1): the four atom differences are -1, -1, 1, 1, so
    P = (2 sigma(-1) + 2 sigma(1)) / 4 = 1/2 (sigma(1) + sigma(-1) = 1) and L = log 2 = 0.6931472.
    q_w = (1, 3), q_l = (0, 0): differences 1, 1, 3, 3 -> P = (sigma(1) + sigma(3)) / 2
    = (0.7310586 + 0.9525741) / 2 = 0.8418164, L = -log P = 0.1721934."""
    out = quantile_bt_loss(torch.tensor([[0.0, 2.0], [1.0, 3.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    s1, s3 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-3))
    torch.testing.assert_close(out.loss, torch.tensor([math.log(2), -math.log((s1 + s3) / 2)]), rtol=1e-5, atol=0)
    assert -math.log((s1 + s3) / 2) == pytest.approx(0.1721934, rel=1e-6)
    # metrics from the mean rewards: (1, 2) vs (1, 0) -> margins 0, 2
    torch.testing.assert_close(out.metrics["reward_margin"], torch.tensor(1.0))
    torch.testing.assert_close(out.metrics["quantile_spread"], torch.tensor((1 + 0 + 1 + 0) / 4))


def test_quantile_bt_extremes_gradients_and_shapes():
    qw = torch.tensor([[100.0, 100.0, 100.0], [-100.0, -100.0, -100.0]], requires_grad=True)
    ql = torch.tensor([[-100.0, 0.0, 100.0], [100.0, 100.0, 100.0]], requires_grad=True)
    out = quantile_bt_loss(qw, ql)
    out.loss.sum().backward()
    assert torch.isfinite(out.loss).all() and torch.isfinite(qw.grad).all() and torch.isfinite(ql.grad).all()
    assert out.loss[1].item() == pytest.approx(200.0, rel=1e-5)  # -log sigma(-200)
    assert (qw.grad <= 0).all() and (ql.grad >= 0).all()
    assert qw.grad[1].lt(0).all()
    with pytest.raises(ValueError, match="same"):
        quantile_bt_loss(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        quantile_bt_loss(torch.zeros(2), torch.zeros(2))


def test_quantile_levels_and_pinball_hand_values():
    """tau = (1/4, 3/4) for K = 2. Target y = 1, q = (0, 2): u = (1, -1); rho_1/4(1) = 1/4, rho_3/4(-1) =
    (3/4 - 1)(-1) = 1/4 -> mean 0.25. y = 5, q = (0, 2): u = (5, 3) -> (1.25 + 2.25) / 2 = 1.75."""
    torch.testing.assert_close(quantile_levels(2), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(quantile_levels(4), torch.tensor([0.125, 0.375, 0.625, 0.875]))
    q = torch.tensor([[0.0, 2.0], [0.0, 2.0]], requires_grad=True)
    out = pinball_loss(q, torch.tensor([1.0, 5.0]))
    torch.testing.assert_close(out.loss, torch.tensor([0.25, 1.75]), rtol=1e-6, atol=0)
    out.loss.sum().backward()
    # d rho / d q = -(tau - 1[u < 0]): row 1: (-1/4, +1/4), /K -> (-0.125, 0.125); row 2: (-1/8, -3/8)
    torch.testing.assert_close(q.grad, torch.tensor([[-0.125, 0.125], [-0.125, -0.375]]))
    with pytest.raises(ValueError, match="taus"):
        pinball_loss(q.detach(), torch.tensor([1.0, 5.0]), taus=torch.tensor([0.0, 0.5]))


@pytest.mark.parametrize("bad", [torch.zeros(2, 1), torch.zeros(3)])
def test_pair_shapes_checked(bad):
    with pytest.raises(ValueError):
        bradley_terry_loss(torch.zeros(2), bad)
