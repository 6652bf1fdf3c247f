"""Kahneman-Tversky Optimization: an unpaired loss on completions labelled desirable or undesirable.

Registered with ``kind="unpaired"``: one completion per row, a bool label per row, and the log-probs of
mismatched (prompt, completion) pairs from the same batch for the reference point z0. Returns the unreduced
per-row loss `(B,)` (the recipe takes the mean). The maths runs in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.objectives.base import LossOutput, check_pair_tensors
from rlxf.objectives.registry import register

__all__ = ["kto_loss"]


def _check_kto_inputs(policy_logps, ref_logps, policy_kl_logps, ref_kl_logps, desirable) -> None:
    batch = check_pair_tensors(policy_logps=policy_logps, ref_logps=ref_logps)
    check_pair_tensors(policy_kl_logps=policy_kl_logps, ref_kl_logps=ref_kl_logps)
    if desirable.dtype != torch.bool:
        raise ValueError(f"desirable must be a bool tensor, got dtype {desirable.dtype}")
    if desirable.shape != (batch,):
        raise ValueError(f"desirable must be (B,) = ({batch},) like policy_logps, got shape {tuple(desirable.shape)}")


@torch.no_grad()
def _class_mean(values: Tensor, selected: Tensor) -> Tensor:
    """Mean of `values` over the selected rows; 0 (not NaN) when none is selected."""
    return torch.where(selected, values, 0.0).sum() / selected.sum().clamp(min=1)


@register("kto", kind="unpaired")
def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    policy_kl_logps: Tensor,
    ref_kl_logps: Tensor,
    desirable: Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 8):

        L_KTO = E_{x,y ~ D}[ lambda_y - v(x, y) ]
        r_theta(x, y) = log pi_theta(y|x) / pi_ref(y|x)
        z0 = KL(pi_theta(y'|x) || pi_ref(y'|x))
        v(x, y) = lambda_D sigma(beta (r_theta(x, y) - z0))   if y is desirable given x
                  lambda_U sigma(beta (z0 - r_theta(x, y)))   if y is undesirable given x

    so a desirable row costs lambda_D (1 - sigma(beta (r - z0))) and an undesirable row
    lambda_U (1 - sigma(beta (z0 - r))); ``1 - sigma(u)`` is computed as ``sigmoid(-u)``, finite for any u.

    z0 is estimated as the paper describes after eq. 8: from mismatched pairs (x_i, y_j), j != i, of the same batch,
    z0 = max(0, mean_j (log pi_theta(y_j|x_i) - log pi_ref(y_j|x_i))), with no gradient through it.

    Args:
        policy_logps, ref_logps: `(B,)` log-probs of each row's own completion, summed over its tokens, under
            the policy and the frozen reference.
        policy_kl_logps, ref_kl_logps: `(M,)` (usually M = B) summed log-probs of the mismatched pairs that
            estimate z0. Detached here.
        desirable: bool `(B,)`, True for desirable completions, False for undesirable ones.
        beta: the paper's beta (weight of the implicit reward).
        desirable_weight, undesirable_weight: lambda_D and lambda_U. The paper recommends
            lambda_D n_D / (lambda_U n_U) in [1, 4/3] (n_D, n_U: desirable / undesirable counts).

    Returns `LossOutput` with the per-row loss `(B,)` float32 and metrics: ``kl`` (z0), ``desirable_reward``
    and ``undesirable_reward`` (means of beta * r over each class, 0 when a class is absent),
    ``desirable_count`` and ``undesirable_count`` (rows of each class in the batch).

    Deviations: the recipe averages the per-row loss over the batch (the paper's expectation over D); z0 is a
    per-batch estimate, so unlike the pairwise losses the loss of a row depends on the rest of its batch and
    gradient accumulation changes z0's sample. The paper's z0 has no clamp inside the KL; max(0, .) follows
    the paper's practical estimate (and TRL).
    """
    _check_kto_inputs(policy_logps, ref_logps, policy_kl_logps, ref_kl_logps, desirable)
    with torch.no_grad():
        kl_terms = policy_kl_logps.float() - ref_kl_logps.float()
        z0 = (kl_terms.sum() / max(kl_terms.numel(), 1)).clamp(min=0.0)
    rewards = policy_logps.float() - ref_logps.float()
    desirable_loss = desirable_weight * torch.sigmoid(-beta * (rewards - z0))
    undesirable_loss = undesirable_weight * torch.sigmoid(-beta * (z0 - rewards))
    loss = torch.where(desirable, desirable_loss, undesirable_loss)

    implicit = beta * rewards.detach()
    metrics = {
        "kl": z0,
        "desirable_reward": _class_mean(implicit, desirable),
        "undesirable_reward": _class_mean(implicit, ~desirable),
        "desirable_count": desirable.sum().float(),
        "undesirable_count": (~desirable).sum().float(),
    }
    return LossOutput(loss, metrics)
