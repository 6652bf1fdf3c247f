"""CPL (rlxf.objectives.cpl_loss): hand values, the DPO limit, the conservative bias, BC term, extremes."""

import math

import pytest
import torch

from rlxf.objectives import cpl_loss, dpo_loss, get_objective


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), rtol=rtol, atol=atol
    )


def _softplus(x):
    return math.log1p(math.exp(x))


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_cpl_by_hand():
    """alpha = 0.5, lambda = 0.5, S+ = (-2, -4, -1), S- = (-3, -2, -6).
    loss = -log(e^{a S+} / (e^{a S+} + e^{l a S-})) = softplus(z), z = l a S- - a S+ = 0.25 S- - 0.5 S+:
    z = (-0.75 + 1, -0.5 + 2, -1.5 + 0.5) = (0.25, 1.5, -1).
    d loss / d S+ = -a sigma(z); d loss / d S- = l a sigma(z) (lambda times smaller: the conservative bias).
    Metrics use the advantages a S: chosen (-1, -2, -0.5), rejected (-1.5, -1, -3); margins (0.5, -1, 2.5)."""
    chosen = torch.tensor([-2.0, -4.0, -1.0], requires_grad=True)
    rejected = torch.tensor([-3.0, -2.0, -6.0], requires_grad=True)
    out = cpl_loss(chosen, rejected, alpha=0.5, lam=0.5)
    z = [0.25, 1.5, -1.0]
    _close(out.loss, [_softplus(v) for v in z])
    grad_w, grad_l = torch.autograd.grad(out.loss.sum(), [chosen, rejected])
    _close(grad_w, [-0.5 * _sigmoid(v) for v in z])
    _close(grad_l, [0.25 * _sigmoid(v) for v in z])
    _close(out.metrics["chosen_reward"], -3.5 / 3)
    _close(out.metrics["rejected_reward"], -5.5 / 3)
    _close(out.metrics["reward_margin"], 2.0 / 3)
    _close(out.metrics["reward_accuracy"], 2.0 / 3)
    _close(out.metrics["bc_loss"], 0.0)


def test_bc_regulariser():
    """bc_weight = 0.1 and chosen lengths (2, 4, 1): -S+ / |y+| = (1, 1, 1), so every pair costs 0.1 more and
    d loss / d S+ gains -0.1 / |y+| = (-0.05, -0.025, -0.1)."""
    chosen = torch.tensor([-2.0, -4.0, -1.0], requires_grad=True)
    rejected = torch.tensor([-3.0, -2.0, -6.0])
    lengths = torch.tensor([2.0, 4.0, 1.0])
    base = cpl_loss(chosen, rejected, alpha=0.5, lam=0.5)
    out = cpl_loss(chosen, rejected, lengths, alpha=0.5, lam=0.5, bc_weight=0.1)
    _close(out.loss, base.loss + 0.1)
    _close(out.metrics["bc_loss"], 1.0)
    (g_base,) = torch.autograd.grad(base.loss.sum(), chosen)
    (g_bc,) = torch.autograd.grad(out.loss.sum(), chosen)
    _close(g_bc - g_base, [-0.05, -0.025, -0.1])


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_lambda_one_is_reference_free_dpo(beta):
    """With lambda = 1 and alpha = beta, CPL is DPO with pi_ref = 1 (reference log-probs 0)."""
    g = torch.Generator().manual_seed(1)
    chosen, rejected = -5 * torch.rand(6, generator=g), -5 * torch.rand(6, generator=g)
    zeros = torch.zeros(6)
    _close(cpl_loss(chosen, rejected, alpha=beta, lam=1.0).loss,
           dpo_loss(chosen, rejected, zeros, zeros, beta=beta).loss)


def test_conservative_bias_breaks_shift_invariance():
    """With lambda = 1 the loss depends only on S+ - S-; with lambda < 1 lowering both segments by the same
    amount raises it (the rejected term is damped), so the loss prefers likelier preferred segments."""
    chosen, rejected = torch.tensor([-2.0]), torch.tensor([-3.0])
    def loss(shift, lam):
        return cpl_loss(chosen + shift, rejected + shift, alpha=1.0, lam=lam).loss

    _close(loss(-5.0, 1.0), loss(0.0, 1.0))
    assert loss(-5.0, 0.5) > loss(0.0, 0.5)


@pytest.mark.parametrize("margin", [100.0, -100.0])
def test_extreme_margins_are_finite(margin):
    chosen = torch.tensor([margin, 0.0], requires_grad=True)
    rejected = torch.tensor([-margin, -margin], requires_grad=True)
    out = cpl_loss(chosen, rejected, torch.ones(2), alpha=1.0, lam=0.5, bc_weight=1.0)
    grads = torch.autograd.grad(out.loss.sum(), [chosen, rejected])
    assert torch.isfinite(out.loss).all() and all(torch.isfinite(g).all() for g in grads)


def test_bad_inputs():
    v = torch.zeros(3)
    for bad in ({"lam": 0.0}, {"lam": 1.5}, {"alpha": 0.0}, {"bc_weight": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            cpl_loss(v, v, **bad)
    with pytest.raises(ValueError, match="needs chosen_lengths"):
        cpl_loss(v, v, bc_weight=0.5)
    with pytest.raises(ValueError, match="policy_rejected_logps has 2 rows"):
        cpl_loss(v, torch.zeros(2))
    with pytest.raises(ValueError, match="chosen_lengths has 2 rows"):
        cpl_loss(v, v, torch.ones(2))
    with pytest.raises(ValueError, match="float"):
        cpl_loss(v, torch.zeros(3, dtype=torch.long))


def test_registered_as_preference():
    assert get_objective("cpl", kind="preference") is cpl_loss
