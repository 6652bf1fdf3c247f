"""KTO (rlxf.objectives.kto_loss): hand values, the reference point z0, one-class batches, extremes, errors."""

import math

import pytest
import torch

from rlxf.objectives import LossOutput, get_objective, kto_loss


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), rtol=rtol, atol=atol
    )


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _three_rows():
    """r = policy - ref = (1, 0, -2); mismatched-pair log-ratios (0.6, 0, 0.3), mean 0.3 = z0."""
    policy = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    ref = torch.tensor([-2.0, -2.0, -1.0])
    policy_kl = torch.tensor([-3.0, -4.0, -5.0], requires_grad=True)
    ref_kl = torch.tensor([-3.6, -4.0, -5.3])
    desirable = torch.tensor([True, False, True])
    return policy, ref, policy_kl, ref_kl, desirable


def test_kto_by_hand():
    """beta = 0.5, lambda_D = 1, lambda_U = 1.5, z0 = 0.3, r = (1, 0, -2), labels (D, U, D):
    row 0: 1 - sigma(0.5 (1 - 0.3)) = sigma(-0.35); row 1: 1.5 (1 - sigma(0.5 (0.3 - 0))) = 1.5 sigma(-0.15);
    row 2: 1 - sigma(0.5 (-2 - 0.3)) = sigma(1.15).
    d/dr: desirable -lambda_D beta s (1 - s) with s = sigma(-beta (r - z0)); undesirable +lambda_U beta s (1 - s)
    with s = sigma(-beta (z0 - r)). Rewards beta r = (0.5, 0, -1): desirable mean -0.25, undesirable 0."""
    policy, ref, policy_kl, ref_kl, desirable = _three_rows()
    out = kto_loss(policy, ref, policy_kl, ref_kl, desirable, beta=0.5, desirable_weight=1.0, undesirable_weight=1.5)
    assert isinstance(out, LossOutput) and out.loss.dtype == torch.float32 and out.loss.shape == (3,)
    s0, s1, s2 = _sigmoid(-0.35), _sigmoid(-0.15), _sigmoid(1.15)
    _close(out.loss, [s0, 1.5 * s1, s2])
    grad_policy, grad_kl = torch.autograd.grad(out.loss.sum(), [policy, policy_kl], allow_unused=True)
    _close(grad_policy, [-0.5 * s0 * (1 - s0), 1.5 * 0.5 * s1 * (1 - s1), -0.5 * s2 * (1 - s2)])
    assert grad_kl is None  # z0 carries no gradient
    _close(out.metrics["kl"], 0.3)
    _close(out.metrics["desirable_reward"], -0.25)
    _close(out.metrics["undesirable_reward"], 0.0)
    _close(out.metrics["desirable_count"], 2.0)
    _close(out.metrics["undesirable_count"], 1.0)
    assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values())


def test_gradient_signs():
    """Desirable rows are pushed up (d loss / d log pi < 0), undesirable rows down (> 0)."""
    g = torch.Generator().manual_seed(0)
    policy = torch.randn(8, generator=g).requires_grad_()
    ref, kl_p, kl_r = torch.randn(8, generator=g), torch.randn(8, generator=g), torch.randn(8, generator=g)
    desirable = torch.arange(8) % 2 == 0
    (grad,) = torch.autograd.grad(kto_loss(policy, ref, kl_p, kl_r, desirable).loss.sum(), policy)
    assert (grad[desirable] < 0).all() and (grad[~desirable] > 0).all()


def test_z0_is_clamped_at_zero():
    """A negative mean log-ratio on the mismatched pairs gives z0 = 0: a desirable row with r = 0 then
    costs 1 - sigma(0) = 0.5."""
    out = kto_loss(
        torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([-5.0, -5.0]), torch.tensor([-4.0, -3.0]),
        torch.tensor([True]), beta=0.1,
    )
    _close(out.metrics["kl"], 0.0)
    _close(out.loss, [0.5])


def test_only_desirable_rows():
    """No undesirable row: no NaN anywhere; the undesirable metrics report 0 and a count of 0."""
    policy = torch.tensor([-1.0, -2.0], requires_grad=True)
    out = kto_loss(policy, torch.tensor([-1.5, -1.0]), torch.tensor([-1.0, -1.0]), torch.tensor([-1.0, -1.0]),
                   torch.tensor([True, True]), beta=1.0)
    _close(out.loss, [_sigmoid(-0.5), _sigmoid(1.0)])
    _close(out.metrics["undesirable_reward"], 0.0)
    _close(out.metrics["undesirable_count"], 0.0)
    _close(out.metrics["desirable_reward"], (0.5 - 1.0) / 2)
    assert all(torch.isfinite(v) for v in out.metrics.values())
    (grad,) = torch.autograd.grad(out.loss.sum(), policy)
    assert torch.isfinite(grad).all()


def test_only_undesirable_rows():
    out = kto_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]),
                   torch.tensor([False]), beta=0.1, undesirable_weight=2.0)
    _close(out.loss, [1.0])  # 2 * (1 - sigma(0))
    _close(out.metrics["desirable_reward"], 0.0)
    _close(out.metrics["desirable_count"], 0.0)


@pytest.mark.parametrize("margin", [100.0, -100.0])
def test_extreme_margins_are_finite(margin):
    """Rewards of +-100 / beta and a z0 of 100: finite loss and gradient, loss in [0, lambda]."""
    policy = torch.tensor([margin, margin, -margin], requires_grad=True)
    zeros = torch.zeros(3)
    out = kto_loss(policy, zeros, torch.full((3,), 100.0), zeros, torch.tensor([True, False, True]), beta=1.0)
    (grad,) = torch.autograd.grad(out.loss.sum(), policy)
    assert torch.isfinite(out.loss).all() and torch.isfinite(grad).all()
    assert ((out.loss >= 0) & (out.loss <= 1)).all()


def test_bad_inputs():
    v = torch.zeros(3)
    with pytest.raises(ValueError, match="desirable must be a bool"):
        kto_loss(v, v, v, v, torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match=r"desirable must be \(B,\)"):
        kto_loss(v, v, v, v, torch.tensor([True, False]))
    with pytest.raises(ValueError, match="ref_logps has 2 rows"):
        kto_loss(v, torch.zeros(2), v, v, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="ref_kl_logps has 2 rows"):
        kto_loss(v, v, v, torch.zeros(2), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"policy_logps must be \(B,\)"):
        kto_loss(torch.zeros(3, 1), v, v, v, torch.ones(3, dtype=torch.bool))


def test_registered_as_unpaired():
    assert get_objective("kto", kind="unpaired") is kto_loss
    assert kto_loss.kind == "unpaired" and kto_loss.default_aggregation is None
