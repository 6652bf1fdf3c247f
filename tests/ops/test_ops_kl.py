"""KL estimators k1, k2, k3 (rlxf.ops.kl)."""

import math

import torch

from rlxf.ops import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3


def _close(actual, expected, rtol=1e-5, atol=1e-7):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), rtol=rtol, atol=atol
    )


def test_hand_values():
    """pi = 1/2, ref = 1/4 at the sampled token, so log r = log(ref/pi) = -ln 2:
    k1 = ln 2; k2 = (ln 2)^2 / 2; k3 = r - 1 - log r = 1/2 - 1 + ln 2."""
    logps, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    _close(kl_k1(logps, ref), [math.log(2.0)])
    _close(kl_k2(logps, ref), [0.5 * math.log(2.0) ** 2])
    _close(kl_k3(logps, ref), [0.5 - 1.0 + math.log(2.0)])
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


def test_k1_and_k3_are_unbiased_in_exact_expectation():
    """Sum_x pi(x) k(x) over a categorical equals KL(pi || ref) exactly for k1 and k3 (no sampling)."""
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(7, generator=g), 0)
    ref = torch.log_softmax(torch.randn(7, generator=g), 0)
    kl = (logp.exp() * (logp - ref)).sum()
    _close((logp.exp() * kl_k1(logp, ref)).sum(), kl)
    _close((logp.exp() * kl_k3(logp, ref)).sum(), kl)
    assert (logp.exp() * kl_k2(logp, ref)).sum() > 0


def test_k3_nonnegative_and_finite_at_extremes():
    """Log-ratios of +-100 are clamped to +-20 before exp: finite value and gradient."""
    logps = torch.tensor([0.0, -100.0, 0.0, -3.0], requires_grad=True)
    ref = torch.tensor([-100.0, 0.0, 0.0, -3.0])
    k3 = kl_k3(logps, ref)
    k3.sum().backward()
    assert torch.isfinite(k3).all() and torch.isfinite(logps.grad).all()
    assert (k3 >= 0).all()
    _close(k3[2:], [0.0, 0.0])
    _close(k3[1], math.exp(20.0) - 20.0 - 1.0)
    assert kl_k1(logps, ref).dtype == torch.float32 and kl_k1(logps.bfloat16(), ref).dtype == torch.float32
