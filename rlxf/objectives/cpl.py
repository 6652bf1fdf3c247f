"""Contrastive Preference Learning: a reference-free preference loss on the policy's segment log-probs.

Registered with ``kind="preference"``; returns the unreduced per-pair loss `(B,)` (the recipe takes the mean).
The maths runs in float32.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rlxf.objectives.base import LossOutput, check_pair_tensors, pair_metrics
from rlxf.objectives.registry import register

__all__ = ["cpl_loss"]


@register("cpl", kind="preference")
def cpl_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor | None = None,
    *,
    alpha: float = 0.1,
    lam: float = 0.5,
    bc_weight: float = 0.0,
) -> LossOutput:
    """CPL (Hejna et al. 2023, "Contrastive Preference Learning: Learning from Human Feedback without RL",
    eq. 5, with the conservative bias lambda of its practical version L_CPL(lambda)):

        L_CPL(lambda) = -log( exp(alpha S+) / (exp(alpha S+) + exp(lambda alpha S-)) )
        S = sum_t gamma^t log pi_theta(a_t | s_t)     over the segment's steps

    computed as ``softplus(lambda * alpha * S- - alpha * S+)`` (= -logsigmoid), finite for any margin. alpha is
    the temperature of the MaxEnt RL problem (the optimal advantage is A* = alpha log pi*), and lambda in (0, 1]
    scales the rejected segment's score: lambda < 1 makes the loss asymmetric, so that the minimiser prefers to
    raise the preferred segment rather than only lower the rejected one (the paper's conservative bias for
    finite offline data). With lambda = 1 and alpha = beta this is reference-free DPO
    (``softplus(-beta (S+ - S-))``).

    Segments and the discount: a segment is a completion, the states are the prefixes and the actions are the
    tokens, with gamma = 1, so S is the completion's summed log-prob ``policy_*_logps``. A discount gamma < 1
    would weight token t by gamma^t and needs per-token log-probs; it is not offered.

    BC regulariser (optional, ``bc_weight`` > 0): adds ``bc_weight * (-S+ / |y+|)``, the token-averaged NLL of
    the preferred completion. The paper's experiments pretrain with BC and its code can add a BC term during CPL
    training (averaged over steps); here it is per pair, on the chosen completion only.

    Args:
        policy_chosen_logps, policy_rejected_logps: `(B,)` summed log-probs S+ and S- (no reference model).
        chosen_lengths: `(B,)` float token counts of the chosen completions; required iff ``bc_weight`` > 0.
        alpha: temperature alpha (> 0).
        lam: conservative bias lambda (0 < lam <= 1).
        bc_weight: weight of the BC term (>= 0).

    Returns `LossOutput` with the per-pair loss `(B,)` and the metrics of `pair_metrics` on the implicit
    advantages alpha S+ and alpha S- (unbiased by lambda), plus ``bc_loss`` (mean token-averaged NLL of the
    chosen completions, 0 without ``chosen_lengths``).
    Deviations: gamma = 1 over tokens (see above); BC term on the chosen completion only.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if not 0 < lam <= 1:
        raise ValueError(f"lam must be in (0, 1], got {lam}")
    if bc_weight < 0:
        raise ValueError(f"bc_weight must be >= 0, got {bc_weight}")
    if bc_weight > 0 and chosen_lengths is None:
        raise ValueError("bc_weight > 0 needs chosen_lengths for the token-averaged BC term")
    check_pair_tensors(
        policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        chosen_lengths=chosen_lengths,
    )
    chosen = alpha * policy_chosen_logps.float()
    rejected = alpha * policy_rejected_logps.float()
    loss = F.softplus(lam * rejected - chosen)

    metrics = pair_metrics(chosen, rejected)
    if chosen_lengths is not None:
        bc = -policy_chosen_logps.float() / chosen_lengths.float().clamp(min=1.0)
        if bc_weight > 0:
            loss = loss + bc_weight * bc
        metrics["bc_loss"] = bc.detach().mean()
    else:
        metrics["bc_loss"] = loss.new_zeros(())
    return LossOutput(loss, metrics)
