"""The geometric mixture of two policies, token by token: Nash-MD's opponent (Munos et al. 2023, sec. 6 and
App. F.3), pi^alpha propto pi^{1 - alpha} mu^alpha, between the policy pi and a reference mu."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["geometric_mixture_logprobs"]


def geometric_mixture_logprobs(policy_logits: Tensor, ref_logits: Tensor, *, mixture_coef: float) -> Tensor:
    """log pi^alpha(. | context) for one decoding step, pi^alpha propto pi^{1 - alpha} mu^alpha:

        log_softmax( (1 - alpha) log_softmax(policy_logits) + alpha log_softmax(ref_logits) )

    with alpha = `mixture_coef` in [0, 1] (the paper's beta; TRL's ``mixture_coef``): 0 gives the policy,
    1 the reference. Sampling each token from this distribution is how TRL's NashMDTrainer (its
    GeometricMixtureWrapper) draws the opponent's completion.

    Args:
        policy_logits, ref_logits: the two models' logits over the same vocabulary at the same positions,
            `(..., V)` (e.g. `(B, V)` for the next token), any float dtype; -inf marks a token a model cannot
            produce, and then the mixture cannot either (for 0 < alpha < 1).
    Returns:
        float32 `(..., V)` log-probabilities, normalised over the last dimension.

    Deviation: the paper's mixture is over whole sequences, pi^alpha(y|x) propto pi(y|x)^{1-alpha} mu(y|x)^alpha,
    whose normaliser sums over every completion; the product of these per-token mixtures is a different (and
    tractable) distribution, the approximation TRL and Nash-MD-PG implementations sample from.
    """
    if policy_logits.shape != ref_logits.shape:
        raise ValueError(
            "policy_logits and ref_logits must have the same shape (..., V), "
            f"got {tuple(policy_logits.shape)} and {tuple(ref_logits.shape)}"
        )
    if not 0.0 <= mixture_coef <= 1.0:
        raise ValueError(f"mixture_coef must be in [0, 1], got {mixture_coef}")
    policy = F.log_softmax(policy_logits.float(), dim=-1)
    if mixture_coef == 0.0:  # not 1 * policy + 0 * ref: 0 * (-inf) would be NaN
        return policy
    ref = F.log_softmax(ref_logits.float(), dim=-1)
    if mixture_coef == 1.0:
        return ref
    return F.log_softmax((1.0 - mixture_coef) * policy + mixture_coef * ref, dim=-1)
