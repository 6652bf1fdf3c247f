"""Policy-gradient losses on sampled completions: REINFORCE, PPO-clip, GRPO, RLOO.

Shared conventions (see DESIGN.md): every per-token tensor is `(B, T)` over completion tokens, `mask` is
bool `(B, T)`, True where the loss applies; `advantages` are `(B,)` (one per completion, broadcast over its
tokens) or `(B, T)`. Each loss returns `LossOutput(loss, metrics)` with `loss` the unreduced per-token loss
(0 at masked positions) and `metrics` detached scalars averaged over masked-in tokens; the recipe reduces
`loss` with `rlxf.ops.aggregate` (each loss's `default_aggregation` matches its paper's normalisation).

Masked positions are replaced by 0 on entry, so garbage there (-inf log-probs, NaN advantages of padding)
cannot reach the loss or, through `0 * nan`, the gradient. Importance ratios are formed in log space with
the log-ratio clamped to [-20, 20] before `exp`: beyond that the ratio is saturated (and its gradient 0),
which keeps the loss finite in float32 for any input.

`ppo_clip_loss` and `grpo_loss` optionally take the generator's log-probs `sampler_logps` and a cap `tis_cap`:
truncated importance sampling between sampler and trainer (Yao et al. 2025, `rlxf.ops.importance`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.objectives.base import (
    LossOutput,
    check_token_tensors,
    expand_advantages,
    masked_max_metric,
    masked_metric,
)
from rlxf.objectives.registry import register
from rlxf.ops import kl_k3
from rlxf.ops.importance import sampler_mismatch_metrics, truncated_importance_weights

__all__ = ["reinforce_loss", "ppo_clip_loss", "grpo_loss", "rloo_loss"]

_MAX_LOG_RATIO = 20.0


def _zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, x.float(), 0.0)


def _importance_ratio(policy_logps: Tensor, old_logps: Tensor) -> Tensor:
    log_ratio = (policy_logps - old_logps).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return log_ratio.exp()


def _check_clip(clip_eps: float, clip_eps_high: float | None, dual_clip: float | None) -> tuple[float, float]:
    if not 0.0 < clip_eps < 1.0:
        raise ValueError(f"clip_eps must be in (0, 1), got {clip_eps}")
    if clip_eps_high is not None and not clip_eps_high > 0.0:
        raise ValueError(f"clip_eps_high must be > 0, got {clip_eps_high}")
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (Ye et al. use 3), got {dual_clip}")
    return clip_eps, clip_eps if clip_eps_high is None else clip_eps_high


def _clipped_surrogate(
    ratio: Tensor, advantages: Tensor, *, eps_low: float, eps_high: float, dual_clip: float | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), floored at dual_clip * A where A < 0.

    Returns (objective, clipped, dual_clipped): the `(B, T)` objective to maximise and bool masks of the
    tokens whose gradient the clip (resp. the dual clip) has zeroed.
    """
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    objective = torch.minimum(unclipped, clipped)
    is_clipped = clipped < unclipped
    is_dual_clipped = None
    if dual_clip is not None:
        floor = dual_clip * advantages
        is_dual_clipped = (advantages < 0) & (objective < floor)
        objective = torch.where(is_dual_clipped, floor, objective)
    return objective, is_clipped, is_dual_clipped


def _sampler_correction(
    old_logps: Tensor, sampler_logps: Tensor | None, mask: Tensor, tis_cap: float | None
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """The TIS weights `(B, T)` (None when `tis_cap` is None) and the sampler-mismatch metrics (none without
    `sampler_logps`); see `rlxf.ops.importance`."""
    if tis_cap is None:
        if sampler_logps is None:
            return None, {}
        return None, sampler_mismatch_metrics(old_logps, sampler_logps, mask)
    if sampler_logps is None:
        raise ValueError(f"tis_cap={tis_cap} needs sampler_logps (the generator's log-probs), or set tis_cap=None")
    return truncated_importance_weights(old_logps, sampler_logps, mask, cap=tis_cap)


def _ratio_metrics(ratio: Tensor, policy_logps: Tensor, old_logps: Tensor, mask: Tensor) -> dict[str, Tensor]:
    return {
        "ratio_mean": masked_metric(ratio, mask),
        "ratio_max": masked_max_metric(ratio, mask),
        # k3 estimate of KL(pi_old || pi_theta): the tokens were sampled from pi_old.
        "approx_kl": masked_metric(kl_k3(old_logps.detach(), policy_logps.detach()), mask),
    }


@register("reinforce", default_aggregation="seq_mean_token_sum")
def reinforce_loss(policy_logps: Tensor, advantages: Tensor, mask: Tensor) -> LossOutput:
    """REINFORCE with a baseline (Williams 1992; Sutton & Barto 2018, "Reinforcement Learning", eq. 13.11):

        theta_{t+1} = theta_t + alpha (G_t - b(S_t)) grad pi(A_t | S_t, theta) / pi(A_t | S_t, theta),

    with the completion y as the action A_t, grad pi / pi = grad log pi_theta(y | x), and A = G - b.
    Per token: loss_t = -A log pi_theta(y_t | x, y_<t).

    Summed over a completion's tokens this is -A log pi_theta(y | x), whose gradient is the REINFORCE
    estimate, so the default aggregation is `seq_mean_token_sum`. The baseline is whatever produced the
    advantages (e.g. `ops.leave_one_out`, `ops.group_center`).

    Args:
        policy_logps: `(B, T)` log pi_theta of the sampled tokens (differentiable).
        advantages: `(B,)` or `(B, T)`, treated as constants (G - b).
        mask: bool `(B, T)`.
    Returns:
        LossOutput with loss `(B, T)` and metrics `advantage_mean`, `logp_mean`.
    Deviations: none beyond the per-token form; purely on-policy (no importance ratio: use `rloo_loss`).
    """
    check_token_tensors(mask, policy_logps=policy_logps)
    adv = _zero_masked(expand_advantages(advantages, mask).detach(), mask)
    logps = _zero_masked(policy_logps, mask)
    loss = -adv * logps
    metrics = {"advantage_mean": masked_metric(adv, mask), "logp_mean": masked_metric(logps, mask)}
    return LossOutput(loss, metrics)


@register("ppo_clip", default_aggregation="token_mean")
def ppo_clip_loss(
    policy_logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    sampler_logps: Tensor | None = None,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    tis_cap: float | None = None,
) -> LossOutput:
    """PPO clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7):

        L^CLIP(theta) = E_t[ min( r_t(theta) A_t, clip(r_t(theta), 1 - eps, 1 + eps) A_t ) ],
        r_t(theta) = pi_theta(a_t | s_t) / pi_theta_old(a_t | s_t);   loss_t = -L^CLIP_t.

    With `dual_clip = c > 1` (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep
    Reinforcement Learning", sec. "Dual-clip PPO"), tokens with A_t < 0 use
    max( min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t), c A_t ), bounding the loss of a bad action whose
    ratio has run away (off-policy data); tokens with A_t >= 0 are unchanged.

    With `tis_cap = C` (truncated importance sampling, Yao et al. 2025, see `rlxf.ops.importance`) each token's
    loss is multiplied by the constant w_t = min(pi_old(a_t | s_t) / mu(a_t | s_t), C), mu the sampler that
    generated the tokens, correcting for the gap between the generator's and the trainer's log-probs.

    Args:
        policy_logps: `(B, T)` log pi_theta (differentiable).
        old_logps: `(B, T)` log pi_theta_old of the same tokens (constants; the trainer's, before the update).
        advantages: `(B,)` or `(B, T)` A_t (constants).
        mask: bool `(B, T)`.
        sampler_logps: `(B, T)` log mu, the generator's log-probs of the same tokens (constants); required
            iff `tis_cap` is set; when given, the sampler-mismatch metrics are reported.
        clip_eps: eps, or eps_low when `clip_eps_high` is given.
        clip_eps_high: upper clip eps_high (DAPO's "clip-higher", Yu et al. 2025); None means eps.
        dual_clip: c > 1, or None for no dual clip.
        tis_cap: C > 0 for TIS weights (Yao et al. use 2), or None for none.
    Returns:
        LossOutput with loss `(B, T)` and metrics `clip_frac` (tokens whose gradient the clip zeroed),
        `ratio_mean`, `ratio_max`, `approx_kl` (k3 estimate of KL(pi_old || pi_theta)), plus
        `dual_clip_frac` when `dual_clip` is set, `sampler_trainer_kl` and `sampler_trainer_logp_absdiff`
        when `sampler_logps` is given, and `tis_weight_mean`, `tis_truncated_frac` when `tis_cap` is set.
    Deviations: optional asymmetric clip range; optional TIS weights; the log-ratio is clamped to [-20, 20]
    before exp; the expectation E_t is left to `ops.aggregate` (default `token_mean`).
    """
    check_token_tensors(mask, policy_logps=policy_logps, old_logps=old_logps, sampler_logps=sampler_logps)
    eps_low, eps_high = _check_clip(clip_eps, clip_eps_high, dual_clip)
    tis_weights, sampler_metrics = _sampler_correction(old_logps, sampler_logps, mask, tis_cap)
    adv = _zero_masked(expand_advantages(advantages, mask).detach(), mask)
    policy, old = _zero_masked(policy_logps, mask), _zero_masked(old_logps.detach(), mask)
    ratio = _importance_ratio(policy, old)
    objective, is_clipped, is_dual = _clipped_surrogate(
        ratio, adv, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip
    )
    loss = torch.where(mask, -objective, 0.0)
    if tis_weights is not None:
        loss = loss * tis_weights
    metrics = {"clip_frac": masked_metric(is_clipped.float(), mask)}
    metrics.update(_ratio_metrics(ratio, policy, old, mask))
    if is_dual is not None:
        metrics["dual_clip_frac"] = masked_metric(is_dual.float(), mask)
    return LossOutput(loss, {**metrics, **sampler_metrics})


@register("grpo", default_aggregation="seq_mean_token_mean")
def grpo_loss(
    policy_logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logps: Tensor | None = None,
    sampler_logps: Tensor | None = None,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.04,
    tis_cap: float | None = None,
) -> LossOutput:
    """GRPO (Shao et al. 2024, "DeepSeekMath", eq. 3), with the KL estimator of eq. 4:

        J_GRPO(theta) = E[ 1/G sum_i 1/|o_i| sum_t { min( r_{i,t} A_{i,t},
                                                         clip(r_{i,t}, 1 - eps, 1 + eps) A_{i,t} )
                                                    - beta D_KL[pi_theta || pi_ref] } ],
        r_{i,t} = pi_theta(o_{i,t} | q, o_{i,<t}) / pi_theta_old(o_{i,t} | q, o_{i,<t}),
        D_KL = pi_ref(o_{i,t} | .) / pi_theta(o_{i,t} | .) - log(pi_ref / pi_theta) - 1  (all at o_{i,t}).

    Per token, loss_{i,t} = -min(...) + beta * D_KL. The 1/G sum_i 1/|o_i| sum_t normalisation is
    `ops.aggregate(..., "seq_mean_token_mean")`, the default aggregation. With beta = 0 this is exactly
    `ppo_clip_loss`. Outcome supervision sets A_{i,t} = (r_i - mean(r)) / std(r) for every token of o_i
    (`ops.group_zscore`, sec. 4.1.2), passed here as `(B,)`.

    Args:
        policy_logps, old_logps: `(B, T)` log pi_theta (differentiable) and log pi_theta_old (constants).
        advantages: `(B,)` or `(B, T)` A_{i,t} (constants); B = n_prompts * G, groups contiguous.
        mask: bool `(B, T)`.
        ref_logps: `(B, T)` log pi_ref, required iff beta > 0 (if given with beta = 0, only logged).
        sampler_logps, tis_cap: the generator's log-probs and the truncated-importance-sampling cap C, passed
            to `ppo_clip_loss` (the TIS weights multiply the clipped term, not the KL term).
        clip_eps, clip_eps_high: eps (eps_low) and the optional upper eps_high (DAPO clip-higher).
        beta: KL coefficient >= 0.
    Returns:
        LossOutput with loss `(B, T)` and metrics `clip_frac`, `ratio_mean`, `ratio_max`, `approx_kl`, and
        `kl` (the k3 estimate of KL(pi_theta || pi_ref)) when `ref_logps` is given, plus the sampler and TIS
        metrics of `ppo_clip_loss`.
    Deviations: advantages come from the population std (see `ops.group_zscore`); optional asymmetric clip;
    optional TIS weights; log-ratios clamped to [-20, 20] before exp (also inside D_KL).
    """
    check_token_tensors(mask, policy_logps=policy_logps, old_logps=old_logps, ref_logps=ref_logps)
    if not beta >= 0.0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0.0 and ref_logps is None:
        raise ValueError(f"grpo_loss with beta={beta} > 0 needs ref_logps (or set beta=0)")
    out = ppo_clip_loss(
        policy_logps, old_logps, advantages, mask, sampler_logps=sampler_logps, clip_eps=clip_eps,
        clip_eps_high=clip_eps_high, tis_cap=tis_cap,
    )
    if ref_logps is None:
        return out
    kl = kl_k3(_zero_masked(policy_logps, mask), _zero_masked(ref_logps.detach(), mask))
    loss = out.loss + beta * kl if beta > 0.0 else out.loss
    return LossOutput(loss, {**out.metrics, "kl": masked_metric(kl, mask)})


@register("rloo", default_aggregation="seq_mean_token_sum")
def rloo_loss(
    policy_logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float | None = None,
) -> LossOutput:
    """RLOO (Ahmadian et al. 2024, "Back to Basics", sec. 3.3, eq. 6): REINFORCE, leave-one-out baseline.

    Paper: "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in
    LLMs". For k samples y_(1..k) ~ pi_theta(. | x) the gradient estimate is

        grad J = 1/k sum_i [ R(y_(i), x) - 1/(k-1) sum_{j != i} R(y_(j), x) ] grad log pi_theta(y_(i) | x).

    The bracket is the advantage A_i (`ops.leave_one_out`, passed as `(B,)`). Per token,
    loss_{i,t} = -rho_{i,t} A_i with rho_{i,t} = exp(log pi_theta - log pi_old) of token t. On-policy
    rho = 1 in value and grad rho = grad log pi_theta, so the `seq_mean_token_sum` aggregation (the default)
    gives -1/B sum_i A_i grad log pi_theta(y_(i) | x): the paper's estimator averaged over prompts.

    Args:
        policy_logps, old_logps: `(B, T)` log pi_theta (differentiable) and log pi_old (constants; the
            sampler's or the pre-update policy's; pass `policy_logps.detach()` when strictly on-policy).
        advantages: `(B,)` or `(B, T)` (constants); B = n_prompts * k, groups contiguous.
        mask: bool `(B, T)`.
        clip_eps: None (plain ratio, the paper's on-policy REINFORCE) or eps for a PPO-style clip
            min(rho A, clip(rho, 1 - eps, 1 + eps) A) when a batch is reused off-policy.
    Returns:
        LossOutput with loss `(B, T)` and metrics `clip_frac` (0 without clipping), `ratio_mean`,
        `ratio_max`, `approx_kl`.
    Deviations: the paper is on-policy and treats the whole completion as one action; we weight each token by
    its own ratio rho_{i,t} (value 1 on-policy, same gradient) so that reused batches are importance
    weighted, with optional clipping. The KL penalty, which the paper folds into the reward
    (R = r - beta log pi/pi_ref), is the recipe's job. Log-ratio clamped to [-20, 20] before exp.
    """
    check_token_tensors(mask, policy_logps=policy_logps, old_logps=old_logps)
    adv = _zero_masked(expand_advantages(advantages, mask).detach(), mask)
    policy, old = _zero_masked(policy_logps, mask), _zero_masked(old_logps.detach(), mask)
    ratio = _importance_ratio(policy, old)
    if clip_eps is None:
        objective, is_clipped = ratio * adv, torch.zeros_like(mask)
    else:
        eps, _ = _check_clip(clip_eps, None, None)
        objective, is_clipped, _ = _clipped_surrogate(ratio, adv, eps_low=eps, eps_high=eps, dual_clip=None)
    loss = torch.where(mask, -objective, 0.0)
    metrics = {"clip_frac": masked_metric(is_clipped.float(), mask)}
    metrics.update(_ratio_metrics(ratio, policy, old, mask))
    return LossOutput(loss, metrics)
