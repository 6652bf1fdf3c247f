"""The token-level geometric mixture (rlxf.ops.geometric_mixture_logprobs) against a slow float64 reference."""

import pytest
import torch

from rlxf.ops import geometric_mixture_logprobs


def _mixture_reference(policy_logits, ref_logits, alpha):
    """Slow reference in float64 probabilities: p = softmax(policy), q = softmax(ref),
    m = p^(1 - alpha) q^alpha / sum_v p_v^(1 - alpha) q_v^alpha, one row at a time."""
    rows = []
    for a, b in zip(policy_logits.double().reshape(-1, policy_logits.shape[-1]),
                    ref_logits.double().reshape(-1, ref_logits.shape[-1]), strict=True):
        p, q = a.exp() / a.exp().sum(), b.exp() / b.exp().sum()
        unnormalised = p ** (1 - alpha) * q**alpha
        rows.append(unnormalised / unnormalised.sum())
    return torch.stack(rows).reshape(policy_logits.shape)


def test_mixture_by_hand():
    """Policy probabilities (0.5, 0.5, 0), reference (0.25, 0.25, 0.5) as logits; alpha = 1/2:
    sqrt(p q) = (sqrt(0.125), sqrt(0.125), 0) -> normalised (1/2, 1/2, 0): the zero of the policy survives."""
    policy = torch.tensor([[0.0, 0.0, float("-inf")]])
    ref = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    out = geometric_mixture_logprobs(policy, ref, mixture_coef=0.5)
    torch.testing.assert_close(out.exp(), torch.tensor([[0.5, 0.5, 0.0]]))


@pytest.mark.parametrize("alpha", [0.1, 0.25, 0.5, 0.9])
def test_mixture_matches_slow_reference(alpha):
    gen = torch.Generator().manual_seed(int(alpha * 100))
    policy, ref = torch.randn(2, 3, 11, generator=gen) * 3, torch.randn(2, 3, 11, generator=gen) * 3 + 50.0
    out = geometric_mixture_logprobs(policy, ref, mixture_coef=alpha)
    assert out.shape == (2, 3, 11) and out.dtype == torch.float32
    torch.testing.assert_close(out.double().exp(), _mixture_reference(policy, ref, alpha), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2, 3))
    # TRL mixes raw logits: the same distribution, since log_softmax only shifts each row by a constant
    raw = torch.log_softmax((1 - alpha) * policy + alpha * ref, dim=-1)
    torch.testing.assert_close(out, raw, rtol=1e-5, atol=1e-5)


def test_endpoints_are_the_two_models_even_with_forbidden_tokens():
    """alpha = 0 is the policy, alpha = 1 the reference, exactly, even where the other model has -inf (no 0 * -inf)."""
    policy = torch.tensor([[1.0, 2.0, float("-inf")], [0.5, -0.5, 0.0]], dtype=torch.bfloat16)
    ref = torch.tensor([[float("-inf"), 0.0, 1.0], [2.0, 0.0, -2.0]], dtype=torch.bfloat16)
    at_zero = geometric_mixture_logprobs(policy, ref, mixture_coef=0.0)
    at_one = geometric_mixture_logprobs(policy, ref, mixture_coef=1.0)
    torch.testing.assert_close(at_zero, torch.log_softmax(policy.float(), dim=-1))
    torch.testing.assert_close(at_one, torch.log_softmax(ref.float(), dim=-1))
    assert at_zero.dtype == at_one.dtype == torch.float32
    inner = geometric_mixture_logprobs(policy, ref, mixture_coef=0.3)
    assert torch.isneginf(inner[0, 0]) and torch.isneginf(inner[0, 2]) and inner[0, 1] == 0.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same shape"):
        geometric_mixture_logprobs(torch.zeros(2, 5), torch.zeros(2, 4), mixture_coef=0.5)
    with pytest.raises(ValueError, match=r"mixture_coef must be in \[0, 1\]"):
        geometric_mixture_logprobs(torch.zeros(2, 5), torch.zeros(2, 5), mixture_coef=1.5)
