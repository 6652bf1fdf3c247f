"""Policy-gradient losses that change what the importance ratio weighs: GSPO (one length-normalised ratio
per sequence, clipped per sequence) and CISPO (the token ratio clipped as a detached weight, so no token loses
its gradient).

Conventions as in `rlxf.objectives.policy_gradient`: per-token tensors `(B, T)`, bool `mask` `(B, T)`, the
unreduced per-token loss `(B, T)` (0 at masked positions) for `ops.aggregate`, detached metrics; masked
positions are replaced by 0 on entry and log-ratios are clamped to [-20, 20] before `exp`. Both losses take the
optional `sampler_logps` / `tis_cap` of `ppo_clip_loss` (truncated importance sampling between the generator
and the trainer, `rlxf.ops.importance`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.objectives.base import LossOutput, check_token_tensors, expand_advantages, masked_max_metric, masked_metric
from rlxf.objectives.policy_gradient import (
    _MAX_LOG_RATIO,
    _check_clip,
    _clipped_surrogate,
    _importance_ratio,
    _ratio_metrics,
    _sampler_correction,
    _zero_masked,
)
from rlxf.objectives.registry import register
from rlxf.ops import kl_k3, masked_mean

__all__ = ["gspo_loss", "cispo_loss"]


@register("gspo", default_aggregation="seq_mean_token_mean")
def gspo_loss(
    policy_logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    sampler_logps: Tensor | None = None,
    clip_eps: float = 3e-4,
    clip_eps_high: float | None = 4e-4,
    tis_cap: float | None = None,
) -> LossOutput:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", eq. 5, with s_i of eq. 7):

        J_GSPO(theta) = E[ 1/G sum_i min( s_i(theta) A_i, clip(s_i(theta), 1 - eps_low, 1 + eps_high) A_i ) ],
        s_i(theta) = ( pi_theta(y_i | x) / pi_theta_old(y_i | x) )^(1/|y_i|)
                   = exp( 1/|y_i| sum_t log( pi_theta(y_{i,t} | x, y_{i,<t}) / pi_theta_old(y_{i,t} | x, y_{i,<t}) ) ).

    One ratio, one clip and one advantage per sequence. The loss returned is per token: -min(...) of sequence
    i at each of its masked-in tokens, so `ops.aggregate(loss, mask, "seq_mean_token_mean")` (the default) is
    -1/G sum_i min(...), the paper's objective; `token_mean` would weigh each sequence by its length instead.
    Defaults eps_low = 3e-4, eps_high = 4e-4 are the paper's (sec. 5.1; the clip acts on a per-token
    geometric mean, hence ranges two orders of magnitude below PPO's 0.2).

    With `tis_cap = C` each token's loss is multiplied by the TIS weight min(pi_old / mu, C) of that token
    (`rlxf.ops.importance`); under `seq_mean_token_mean` that scales sequence i by the mean weight of its tokens.

    Args:
        policy_logps: `(B, T)` log pi_theta (differentiable).
        old_logps: `(B, T)` log pi_theta_old of the same tokens (constants; the trainer's, before the update).
        advantages: `(B,)` A_i, one per sequence (constants; e.g. `ops.group_zscore`, eq. 6).
        mask: bool `(B, T)`; |y_i| is the number of True tokens of row i.
        sampler_logps: `(B, T)` log mu, the generator's log-probs; required iff `tis_cap` is set, and when
            given the sampler-mismatch metrics are reported.
        clip_eps: eps_low in (0, 1).
        clip_eps_high: eps_high > 0; None means eps_low.
        tis_cap: C > 0 for truncated importance sampling weights, or None for none.
    Returns:
        LossOutput with loss `(B, T)` and metrics `clip_frac` (masked-in tokens of sequences whose gradient the
        clip zeroed; the paper's clipped-token fraction), `ratio_mean`, `ratio_max` (of s_i over non-empty
        sequences), `approx_kl` (token k3 estimate of KL(pi_old || pi_theta)), plus the sampler and TIS metrics
        (`sampler_trainer_kl`, `sampler_trainer_logp_absdiff`; `tis_weight_mean`, `tis_truncated_frac`).
    Deviations: per-token advantages `(B, T)` are refused (the paper's GSPO-token variant is not implemented);
    the mean log-ratio is clamped to [-20, 20] before exp; a row with no tokens gets loss 0; optional TIS.
    """
    check_token_tensors(mask, policy_logps=policy_logps, old_logps=old_logps, sampler_logps=sampler_logps)
    if advantages.shape != mask.shape[:1]:
        raise ValueError(
            f"gspo_loss takes one advantage per sequence, advantages (B,) = ({mask.shape[0]},); got shape "
            f"{tuple(advantages.shape)} (per-token advantages would need GSPO-token, which rlxf does not implement)"
        )
    eps_low, eps_high = _check_clip(clip_eps, clip_eps_high, None)
    tis_weights, sampler_metrics = _sampler_correction(old_logps, sampler_logps, mask, tis_cap)
    rows = mask.any(dim=1)
    adv = torch.where(rows, advantages.detach().float(), 0.0)
    policy, old = _zero_masked(policy_logps, mask), _zero_masked(old_logps.detach(), mask)
    seq_log_ratio = masked_mean(policy - old, mask, dim=1)
    seq_ratio = seq_log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO).exp()
    objective, is_clipped, _ = _clipped_surrogate(seq_ratio, adv, eps_low=eps_low, eps_high=eps_high, dual_clip=None)
    loss = torch.where(mask, -objective.unsqueeze(1), 0.0)
    if tis_weights is not None:
        loss = loss * tis_weights
    metrics = {
        "clip_frac": masked_metric(is_clipped.unsqueeze(1).expand_as(mask).float(), mask),
        "ratio_mean": masked_metric(seq_ratio, rows),
        "ratio_max": masked_max_metric(seq_ratio, rows),
        # k3 estimate of KL(pi_old || pi_theta) per token: the tokens were sampled from pi_old.
        "approx_kl": masked_metric(kl_k3(old, policy.detach()), mask),
    }
    return LossOutput(loss, {**metrics, **sampler_metrics})


def _check_is_clip(clip_eps: float | None, clip_eps_high: float) -> tuple[float | None, float]:
    if clip_eps is not None and not 0.0 < clip_eps <= 1.0:
        raise ValueError(f"clip_eps (eps_low of the IS weight) must be in (0, 1] or None, got {clip_eps}")
    if not 0.0 < clip_eps_high < float("inf"):
        raise ValueError(f"clip_eps_high must be a finite number > 0, got {clip_eps_high}")
    return (None if clip_eps is None else 1.0 - clip_eps), 1.0 + clip_eps_high


@register("cispo", default_aggregation="token_mean")
def cispo_loss(
    policy_logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    sampler_logps: Tensor | None = None,
    clip_eps: float | None = None,
    clip_eps_high: float = 4.0,
    tis_cap: float | None = None,
) -> LossOutput:
    """CISPO (MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention",
    sec. 3.1, eqs. 4-5):

        J_CISPO(theta) = E[ 1/(sum_i |o_i|) sum_i sum_t sg( r^_{i,t}(theta) ) A_{i,t}
                                                         log pi_theta(o_{i,t} | q, o_{i,<t}) ],
        r^_{i,t}(theta) = clip( r_{i,t}(theta), 1 - eps_low^IS, 1 + eps_high^IS ),
        r_{i,t}(theta) = pi_theta(o_{i,t} | .) / pi_theta_old(o_{i,t} | .).

    Per token, loss_t = -sg(r^_t) A_t log pi_theta(o_t). The clip bounds the importance weight, a constant, and
    never the update: unlike PPO's min, every token keeps the gradient -r^_t A_t of its own log-prob. The
    1/sum_i |o_i| normalisation is `ops.aggregate(..., "token_mean")`, the default.

    Clip range: MiniMax leave the weight unbounded below (eps_low^IS set to a large value) and tune only
    eps_high^IS, without publishing its value. Defaults here: no lower bound (`clip_eps=None`) and
    eps_high = 4, i.e. the weight capped at 5, ScaleRL's eps_max = 5 (Khatri et al. 2025), which TRL recommends
    for `loss_type="cispo"` (its `epsilon_high` there is the cap itself, 5.0). SkyRL's defaults are
    eps_low = 0, eps_high = 5 (range [1, 6]); verl's `cispo` reuses the PPO range clip_ratio_low/high = 0.2.

    With `tis_cap = C` each token's loss is also multiplied by the TIS weight min(pi_old / mu, C)
    (`rlxf.ops.importance`).

    Args:
        policy_logps: `(B, T)` log pi_theta (differentiable).
        old_logps: `(B, T)` log pi_theta_old (constants; the trainer's, before the update).
        advantages: `(B,)` or `(B, T)` A_{i,t} (constants).
        mask: bool `(B, T)`.
        sampler_logps: `(B, T)` log mu, the generator's log-probs; required iff `tis_cap` is set, and when
            given the sampler-mismatch metrics are reported.
        clip_eps: eps_low^IS in (0, 1] (1 means a lower bound of 0), or None for no lower bound.
        clip_eps_high: eps_high^IS > 0.
        tis_cap: C > 0 for truncated importance sampling weights, or None for none.
    Returns:
        LossOutput with loss `(B, T)` and metrics `clip_frac` (tokens whose IS weight the clip changed; unlike
        PPO their gradient is kept), `ratio_mean`, `ratio_max`, `approx_kl` (k3 estimate of
        KL(pi_old || pi_theta)), plus the sampler and TIS metrics as in `ppo_clip_loss`.
    Deviations: the log-ratio is clamped to [-20, 20] before exp (within any useful clip range this changes
    nothing); optional TIS weights.
    """
    check_token_tensors(mask, policy_logps=policy_logps, old_logps=old_logps, sampler_logps=sampler_logps)
    low, high = _check_is_clip(clip_eps, clip_eps_high)
    tis_weights, sampler_metrics = _sampler_correction(old_logps, sampler_logps, mask, tis_cap)
    adv = _zero_masked(expand_advantages(advantages, mask).detach(), mask)
    policy, old = _zero_masked(policy_logps, mask), _zero_masked(old_logps.detach(), mask)
    ratio = _importance_ratio(policy, old)
    weight = ratio.detach().clamp(min=low, max=high)
    loss = torch.where(mask, -weight * adv * policy, 0.0)
    if tis_weights is not None:
        loss = loss * tis_weights
    metrics = {"clip_frac": masked_metric((weight != ratio).float(), mask)}
    metrics.update(_ratio_metrics(ratio, policy, old, mask))
    return LossOutput(loss, {**metrics, **sampler_metrics})
