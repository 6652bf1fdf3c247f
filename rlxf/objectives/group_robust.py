"""Group robust DPO: the DPO loss of each pair weighted by the adversarial weight of its group.

`group_robust_dpo_loss` is pure: the group weights alpha are state that the recipe keeps and updates with
`group_mean_losses` and `update_group_weights` (exponentiated-gradient / mirror ascent on the simplex).
The intended loop, one optimizer step per batch (Ramesh et al. 2024, Algorithm 1, with a batch in place of
its single sample):

    weights = torch.full((G,), 1 / G)                             # alpha^(0), uniform
    for batch in data:
        pair_loss = dpo_loss(...).loss.detach()                   # l_i under the current policy
        weights = update_group_weights(weights, group_mean_losses(pair_loss, batch.group_ids, G),
                                       step_size=eta_alpha)       # alpha^(t), updated first
        out = group_robust_dpo_loss(..., batch.group_ids, weights, beta=beta)
        out.loss.mean().backward(); optimizer.step()              # theta^(t) with the new alpha

(The first line of the loop may reuse the forward pass of the loss: `dpo_loss` on the same log-probs.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.objectives.base import LossOutput
from rlxf.objectives.preference import dpo_loss
from rlxf.objectives.registry import register

__all__ = ["group_mean_losses", "group_robust_dpo_loss", "update_group_weights"]


def _check_group_ids(group_ids: Tensor, num_groups: int, batch: int) -> None:
    if group_ids.dtype != torch.long or group_ids.shape != (batch,):
        raise ValueError(
            f"group_ids must be a long (B,) = ({batch},) tensor, got shape {tuple(group_ids.shape)} "
            f"dtype {group_ids.dtype}"
        )
    if group_ids.numel() and (int(group_ids.min()) < 0 or int(group_ids.max()) >= num_groups):
        raise ValueError(f"group_ids must lie in [0, G = {num_groups})")


def _check_group_vector(name: str, values: Tensor, *, positive_sum: bool = True) -> None:
    if values.dim() != 1 or not values.dtype.is_floating_point or values.numel() == 0:
        raise ValueError(f"{name} must be a non-empty float (G,) tensor, got shape {tuple(values.shape)} "
                         f"dtype {values.dtype}")
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError(f"{name} must be finite and >= 0")
    if positive_sum and not bool(values.sum() > 0):
        raise ValueError(f"{name} must have a positive sum")


@register("group_robust_dpo", kind="preference", recipe="group-robust-dpo")
def group_robust_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    group_ids: Tensor,
    group_weights: Tensor,
    *,
    beta: float = 0.1,
    group_sizes: Tensor | None = None,
) -> LossOutput:
    """Group robust DPO (Ramesh et al. 2024, "Group Robust Preference Optimization in Reward-free RLHF", the
    GR-DPO objective and Algorithm 1):

        min_theta max_{alpha in simplex_G} sum_g alpha_g L_DPO(pi_theta; D_g)

    Per pair i of group g_i the loss is ``alpha_{g_i} * l_i`` with l_i = -log sigma(beta h_w - beta h_l) the DPO
    loss (`dpo_loss`, Rafailov et al. 2023 eq. 7). The recipe's mean over the batch then estimates
    sum_g alpha_g (N_g/N) L_g for batches drawn uniformly from the data.

    Normalisation: Algorithm 1 samples a group with probability N_g/N and scales both the theta step and the
    alpha step by N/N_g, which makes the estimate of sum_g alpha_g L_g unbiased (each group counts by its mean
    loss, not by its size). Pass ``group_sizes`` `(G,)` (the dataset counts N_g) to get that scaling: the loss
    becomes ``alpha_{g_i} * (N / N_{g_i}) * l_i`` with N = sum_g N_g. Passing the in-batch counts instead gives
    the batch-normalised group-DRO form sum_g alpha_g mean_{i in g} l_i (after the recipe's mean).

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: `(B,)` summed
            log-probs, as for `dpo_loss`.
        group_ids: long `(B,)`, the group g_i in [0, G) of each pair.
        group_weights: `(G,)` the current alpha (>= 0; normally on the simplex). Treated as a constant.
        beta: DPO's beta.
        group_sizes: optional `(G,)` counts N_g (> 0 for every group that occurs) for the N/N_g scaling.

    Returns `LossOutput` with the per-pair loss `(B,)` and the metrics of `dpo_loss` (`pair_metrics`), plus
    ``unweighted_loss`` (mean DPO loss) and ``worst_group_loss`` (largest per-group mean DPO loss among the
    groups in the batch). Deviations: a batch of pairs per step instead of one sample; the projection
    P_Theta of Algorithm 1 (a bounded parameter set in the theory) is not applied.
    """
    dpo = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)
    batch = dpo.loss.shape[0]
    _check_group_vector("group_weights", group_weights, positive_sum=False)
    num_groups = group_weights.shape[0]
    _check_group_ids(group_ids, num_groups, batch)

    scale = group_weights.detach().float()
    if group_sizes is not None:
        _check_group_vector("group_sizes", group_sizes)
        if group_sizes.shape != group_weights.shape:
            raise ValueError(f"group_sizes must be (G,) = ({num_groups},) like group_weights, "
                             f"got shape {tuple(group_sizes.shape)}")
        sizes = group_sizes.float()
        if bool((sizes[group_ids] <= 0).any()):
            raise ValueError("group_sizes must be > 0 for every group in group_ids")
        scale = scale * sizes.sum() / sizes.clamp(min=1e-12)
    loss = scale[group_ids] * dpo.loss

    metrics = dict(dpo.metrics)
    with torch.no_grad():
        present = torch.bincount(group_ids, minlength=num_groups) > 0
        per_group = group_mean_losses(dpo.loss, group_ids, num_groups)
        metrics["unweighted_loss"] = dpo.loss.detach().mean()
        metrics["worst_group_loss"] = torch.where(present, per_group, float("-inf")).amax().clamp(min=0.0)
    return LossOutput(loss, metrics)


@torch.no_grad()
def group_mean_losses(per_pair_loss: Tensor, group_ids: Tensor, num_groups: int) -> Tensor:
    """Mean loss of each group's pairs in the batch, detached float32 `(G,)`; 0 for a group with no pairs, so
    that `update_group_weights` multiplies its weight by exp(0) = 1 (it keeps its unnormalised weight, as a
    group that is not sampled does in Algorithm 1; only the renormalisation moves it).

    Shapes: `per_pair_loss` float `(B,)`, `group_ids` long `(B,)` in [0, num_groups)."""
    if per_pair_loss.dim() != 1 or not per_pair_loss.dtype.is_floating_point:
        raise ValueError(f"per_pair_loss must be a float (B,) tensor, got shape {tuple(per_pair_loss.shape)}")
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    _check_group_ids(group_ids, num_groups, per_pair_loss.shape[0])
    values = per_pair_loss.detach().float()
    sums = torch.zeros(num_groups, dtype=torch.float32, device=values.device).index_add_(0, group_ids, values)
    counts = torch.bincount(group_ids, minlength=num_groups).float()
    return sums / counts.clamp(min=1.0)


@torch.no_grad()
def update_group_weights(group_weights: Tensor, group_losses: Tensor, *, step_size: float) -> Tensor:
    """One exponentiated-gradient (mirror ascent) step of the group weights (Ramesh et al. 2024, Algorithm 1):

        alpha'_g = alpha_g * exp(eta_alpha * L_g),    alpha <- alpha' / sum_g' alpha'_g'

    computed in log space (log alpha + eta L, then softmax) so that large eta L cannot overflow; a zero weight
    stays zero. Algorithm 1 feeds it N l / N_g for the one sampled pair (0 for the other groups); with a batch,
    `group_mean_losses` gives each group's mean loss and 0 for absent groups.

    Shapes: `group_weights (G,)` >= 0 with a positive sum, `group_losses (G,)`; returns float32 `(G,)` summing
    to 1. ``step_size`` is eta_alpha (>= 0)."""
    _check_group_vector("group_weights", group_weights)
    if group_losses.shape != group_weights.shape or not group_losses.dtype.is_floating_point:
        raise ValueError(f"group_losses must be a float (G,) = {tuple(group_weights.shape)} tensor, "
                         f"got shape {tuple(group_losses.shape)} dtype {group_losses.dtype}")
    if not bool(torch.isfinite(group_losses).all()):
        raise ValueError("group_losses must be finite")
    if step_size < 0:
        raise ValueError(f"step_size must be >= 0, got {step_size}")
    logits = group_weights.float().log() + step_size * group_losses.float()
    return torch.softmax(logits, dim=0)
