"""The critic's clipped value loss (rlxf.objectives.value): hand values, gradients, metrics, padding."""
import pytest
import torch

from rlxf.objectives.value import clipped_value_loss


def _close(actual, expected, rtol=1e-5, atol=1e-7):
    torch.testing.assert_close(torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), rtol=rtol,
                               atol=atol)


def _case():
    values = torch.tensor([[1.0, 2.0, 0.5, float("nan")]], requires_grad=True)
    old = torch.tensor([[0.7, 1.0, 0.6, float("inf")]])
    returns = torch.tensor([[1.5, 1.0, 0.0, 100.0]])
    mask = torch.tensor([[True, True, True, False]])
    return values, old, returns, mask


def test_clipped_value_loss_by_hand():
    """eps = 0.2, loss = 1/2 max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2).
    Token 1: V = 1.0, V_old = 0.7, R = 1.5: unclipped 0.25; V - V_old = 0.3 is clipped to 0.2, V_clip = 0.9,
    (0.9 - 1.5)^2 = 0.36 is larger: loss 0.18, and its gradient is 0 (the clamp is flat there).
    Token 2: V = 2.0, V_old = 1.0, R = 1.0: unclipped 1.0; V_clip = 1.2 gives 0.04: loss 0.5, gradient V - R = 1.
    Token 3: V = 0.5, V_old = 0.6, R = 0: inside the clip range both terms are 0.25: loss 0.125, gradient 0.5.
    Token 4 is padding (V = NaN, V_old = inf): loss 0, gradient 0. value_clip_frac = 1/3, value_mean = 3.5 / 3,
    value_error (unclipped squared error) = (0.25 + 1 + 0.25) / 3 = 0.5."""
    values, old, returns, mask = _case()
    out = clipped_value_loss(values, old, returns, mask, clip_range=0.2)
    _close(out.loss, [[0.18, 0.5, 0.125, 0.0]])
    (grad,) = torch.autograd.grad(out.loss.sum(), values)
    _close(grad, [[0.0, 1.0, 0.5, 0.0]])
    _close(out.metrics["value_clip_frac"], 1 / 3)
    _close(out.metrics["value_mean"], 3.5 / 3)
    _close(out.metrics["value_error"], 0.5)


def test_unclipped_value_loss_is_half_the_squared_error():
    """clip_range=None: loss = 1/2 (V - R)^2 = (0.125, 0.5, 0.125), gradient V - R = (-0.5, 1, 0.5)."""
    values, old, returns, mask = _case()
    out = clipped_value_loss(values, old, returns, mask, clip_range=None)
    _close(out.loss, [[0.125, 0.5, 0.125, 0.0]])
    (grad,) = torch.autograd.grad(out.loss.sum(), values)
    _close(grad, [[-0.5, 1.0, 0.5, 0.0]])
    _close(out.metrics["value_clip_frac"], 0.0)


def test_value_loss_refuses_bad_input():
    values, old, returns, mask = _case()
    with pytest.raises(ValueError, match="clip_range"):
        clipped_value_loss(values, old, returns, mask, clip_range=0.0)
    with pytest.raises(ValueError, match="returns"):
        clipped_value_loss(values, old, returns[:, :2], mask)
