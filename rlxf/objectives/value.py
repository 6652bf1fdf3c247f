"""The critic's loss in actor-critic PPO: regress V(s_t) onto the GAE returns, optionally clipped.

Per-token tensors are `(B, T)` over completion tokens with a bool `mask`; the loss is returned unreduced (0 at
masked positions) and reduced by the recipe with `rlxf.ops.aggregate` (token_mean, as OpenRLHF and TRL do).
"""
from __future__ import annotations

import torch
from torch import Tensor

from rlxf.objectives.base import LossOutput, check_token_tensors, masked_metric

__all__ = ["clipped_value_loss"]


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, clip_range: float | None = 0.2,
) -> LossOutput:
    """Value loss of PPO (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 9, the squared-error
    term L^VF = (V_theta(s_t) - V_t^targ)^2), with the value clipping of OpenAI's PPO implementation that
    InstructGPT-style RLHF keeps (Engstrom et al. 2020, "Implementation Matters in Deep Policy Gradients", sec. 3,
    "Value function clipping"):

        V_clip = V_old + clip(V_theta - V_old, -eps, eps)
        loss_t = 1/2 max( (V_theta(s_t) - R_t)^2, (V_clip - R_t)^2 )

    with R_t the GAE return (`ops.gae`) and V_old the critic's values when the batch was sampled. `clip_range=None`
    is the plain 1/2 (V - R)^2.

    Args:
        values: `(B, T)` V_theta(s_t) (differentiable).
        old_values: `(B, T)` V_old (constants).
        returns: `(B, T)` R_t (constants).
        mask: bool `(B, T)`.
        clip_range: eps > 0, or None for no clipping.
    Returns:
        LossOutput with loss `(B, T)` and metrics `value_clip_frac` (tokens where the clipped term is the larger,
        so the gradient is 0), `value_mean`, `value_error` (mean squared V - R, unclipped).
    Deviations: the 1/2 factor (OpenAI baselines, TRL, OpenRLHF), so the gradient is V - R; masked positions
    are replaced by 0 on entry so padding cannot reach the loss or its gradient.
    """
    check_token_tensors(mask, values=values, old_values=old_values, returns=returns)
    if clip_range is not None and not clip_range > 0:
        raise ValueError(f"clip_range must be > 0 or None, got {clip_range}")
    v = torch.where(mask, values.float(), 0.0)
    v_old = torch.where(mask, old_values.detach().float(), 0.0)
    target = torch.where(mask, returns.detach().float(), 0.0)
    unclipped = (v - target).square()
    if clip_range is None:
        loss, clipped_frac = 0.5 * unclipped, torch.zeros_like(mask, dtype=torch.float32)
    else:
        clipped = (v_old + (v - v_old).clamp(-clip_range, clip_range) - target).square()
        loss = 0.5 * torch.maximum(unclipped, clipped)
        clipped_frac = (clipped > unclipped).float()
    metrics = {"value_clip_frac": masked_metric(clipped_frac, mask), "value_mean": masked_metric(v, mask),
               "value_error": masked_metric(unclipped, mask)}
    return LossOutput(torch.where(mask, loss, 0.0), metrics)
