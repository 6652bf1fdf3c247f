"""Pairwise online policy-gradient losses: REBEL, P3O, CoPG.

Each learns from two completions of one prompt through their reward difference r(y) - r(y') only, so adding a
constant to both rewards of a pair changes neither the loss nor its gradient.

Conventions as in `rlxf.objectives.policy_gradient`: per-token `(B, T)` log-probs, bool `mask` `(B, T)`,
float `rewards` `(B,)` (one scalar per completion). B is even and rows 2k and 2k+1 form pair k (the recipe
samples an even number of completions per prompt, groups contiguous). A completion's log-prob is the sum of
its masked-in token log-probs. Each loss computes one scalar L_k per pair and returns it spread over the pair's
masked-in tokens,

    loss[b, t] = 2 L_k mask[b, t] / (n_2k + n_2k+1),    n_b = number of masked-in tokens of row b,

so that `ops.aggregate(loss, mask, "seq_mean_token_sum")` (sum / B, each loss's default aggregation) is the
mean of L_k over the pairs; a pair without tokens contributes 0 (whatever its rewards). Masked positions are
replaced by 0 on entry and the spreading selects with `torch.where`, so garbage there (-inf, NaN) reaches
neither the loss nor, through `0 * nan`, the gradient. Sequence log-ratios are clamped to [-20, 20] before
`exp`. Metrics are detached means over the pairs (or completions) that have at least one token.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from rlxf.objectives.base import LossOutput, check_token_tensors, masked_metric
from rlxf.objectives.policy_gradient import _MAX_LOG_RATIO, _check_clip, _clipped_surrogate, _zero_masked
from rlxf.objectives.registry import register
from rlxf.ops import kl_k3

__all__ = ["rebel_loss", "p3o_loss", "copg_loss"]


def _check_pairs(mask: Tensor, rewards: Tensor, **tensors: Tensor | None) -> None:
    check_token_tensors(mask, **tensors)
    batch = mask.shape[0]
    if rewards.shape != (batch,):
        raise ValueError(f"rewards must be (B,) = ({batch},), one per completion; got shape {tuple(rewards.shape)}")
    if not rewards.dtype.is_floating_point:
        raise ValueError(f"rewards must be a float tensor, got dtype {rewards.dtype}")
    if batch % 2:
        raise ValueError(f"pairwise losses need an even B (rows 2k and 2k+1 are two completions of one prompt), "
                         f"got B = {batch}")


def _check_kl(name: str, beta: float, ref_logps: Tensor | None) -> None:
    if not beta >= 0.0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0.0 and ref_logps is None:
        raise ValueError(f"{name} with beta={beta} > 0 needs ref_logps (or set beta=0)")


def _seq(logps: Tensor, mask: Tensor) -> Tensor:
    """`(B,)` float32 sum of the masked-in entries of a row (the sequence log-prob)."""
    return _zero_masked(logps, mask).sum(dim=1)


def _split(x: Tensor) -> tuple[Tensor, Tensor]:
    """`(B,)` -> the first and the second completion of each pair, `(K,)` each."""
    return x.reshape(-1, 2).unbind(dim=1)


def _exp(log_ratio: Tensor) -> Tensor:
    return log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO).exp()


def _active_pairs(mask: Tensor) -> Tensor:
    return mask.any(dim=1).reshape(-1, 2).any(dim=1)


def _reward_gap(rewards: Tensor) -> Tensor:
    """r(y_2k) - r(y_2k+1) `(K,)`, constants."""
    first, second = _split(rewards.detach().float())
    return first - second


def _spread(pair_loss: Tensor, mask: Tensor) -> Tensor:
    """Pair k's loss `(K,)` as the per-token `(B, T)` loss 2 L_k mask / (n_2k + n_2k+1)."""
    first, second = _split(mask.sum(dim=1).float())
    per_token = (2.0 * pair_loss / (first + second).clamp(min=1.0)).repeat_interleave(2)
    return torch.where(mask, per_token.unsqueeze(1), 0.0)


def _kl_shaped(rewards: Tensor, old: Tensor, ref_logps: Tensor | None, mask: Tensor, beta: float):
    """r - beta (log pi_old(y) - log pi_ref(y)) `(B,)` (constants), and the `seq_kl` metric when ref is given."""
    rewards = rewards.detach().float()
    if ref_logps is None:
        return rewards, {}
    seq_kl = old.sum(dim=1) - _seq(ref_logps.detach(), mask)
    shaped = rewards - beta * seq_kl if beta > 0.0 else rewards
    return shaped, {"seq_kl": masked_metric(seq_kl, mask.any(dim=1))}


@register("rebel", default_aggregation="seq_mean_token_sum")
def rebel_loss(
    policy_logps: Tensor,
    old_logps: Tensor,
    rewards: Tensor,
    mask: Tensor,
    *,
    ref_logps: Tensor | None = None,
    eta: float = 1.0,
    beta: float = 0.0,
) -> LossOutput:
    """REBEL (Gao et al. 2024, "REBEL: Reinforcement Learning via Regressing Relative Rewards", Algorithm 1, its
    least-squares regression step):

        theta_{t+1} = argmin_theta sum_{(x, y, y') in D_t} ( 1/eta ( ln pi_theta(y|x) / pi_theta_t(y|x)
                                                                   - ln pi_theta(y'|x) / pi_theta_t(y'|x) )
                                                             - ( r(x, y) - r(x, y') ) )^2,

    pi_theta_t the policy that sampled the pair (`old_logps`). Per pair k, with y = row 2k and y' = row 2k+1:
    L_k = ( (rho_2k - rho_2k+1) / eta - (r_2k - r_2k+1) )^2, rho_b = sum_t (log pi_theta - log pi_old) of row b.
    At the minimiser pi_theta(y) / pi_theta_t(y) is proportional to exp(eta r(y)): a mirror-descent step with
    step size eta (1/eta weighs KL(pi || pi_t)). The default aggregation `seq_mean_token_sum` gives the mean of
    L_k over pairs. No ratio is exponentiated, so no clamp is needed.

    With `beta > 0` the reward is KL-shaped, r(y) - beta ln pi_old(y) / pi_ref(y), as in the authors' runs (their
    `kl_coef`, 0.05 on TL;DR); it is a constant of the regression.

    Args:
        policy_logps: `(B, T)` log pi_theta (differentiable).
        old_logps: `(B, T)` log pi_theta_t, the sampling policy's log-probs of the same tokens (constants).
        rewards: `(B,)` r of each completion (constants); rows 2k, 2k+1 answer the same prompt.
        mask: bool `(B, T)`; B must be even.
        ref_logps: `(B, T)` log pi_ref, required iff beta > 0 (if given with beta = 0, only `seq_kl` is logged).
        eta: step size eta > 0; 1.0 is the default of the authors' TL;DR training script.
        beta: coefficient >= 0 of the KL shaping of the reward.
    Returns:
        LossOutput with loss `(B, T)` and metrics `reward_diff_abs` (mean |r_2k - r_2k+1|, shaped), `residual_abs`
        (mean |regression residual| (rho_2k - rho_2k+1)/eta - (r_2k - r_2k+1)), `approx_kl` (k3 estimate of
        KL(pi_old || pi_theta) per token) and, with `ref_logps`, `seq_kl` (mean log pi_old(y) / pi_ref(y)).
    Deviations: the mean over pairs replaces the paper's sum (a constant scale). The authors' code regresses
    the log-ratio gap onto eta (r - r'), which is eta^2 times this loss (same minimiser, gradient scaled by
    eta^2); this follows the paper's form.
    """
    _check_pairs(mask, rewards, policy_logps=policy_logps, old_logps=old_logps, ref_logps=ref_logps)
    if not 0.0 < eta < float("inf"):
        raise ValueError(f"eta must be a finite number > 0, got {eta}")
    _check_kl("rebel_loss", beta, ref_logps)
    policy, old = _zero_masked(policy_logps, mask), _zero_masked(old_logps.detach(), mask)
    shaped, kl_metrics = _kl_shaped(rewards, old, ref_logps, mask, beta)
    active, gap = _active_pairs(mask), _reward_gap(shaped)
    rho_first, rho_second = _split(policy.sum(dim=1) - old.sum(dim=1))
    residual = (rho_first - rho_second) / eta - gap
    metrics = {
        "reward_diff_abs": masked_metric(gap.abs(), active),
        "residual_abs": masked_metric(residual.abs(), active),
        "approx_kl": masked_metric(kl_k3(old, policy.detach()), mask),
    }
    return LossOutput(_spread(residual.square(), mask), {**metrics, **kl_metrics})


def _p3o_joint(log_r1: Tensor, log_r2: Tensor, gap: Tensor, *, eps: float, cap: float) -> tuple[Tensor, Tensor]:
    """P3O-V2 per pair `(K,)`: sg(clip(r_1 r_2, 1/c, c)) min(D d, D clip(d, -eps, eps)) / 2, d = ln r_1 - ln r_2;
    and whether the clip zeroed the pair's gradient."""
    weight = _exp(log_r1 + log_r2).detach().clamp(1.0 / cap, cap)
    d = log_r1 - log_r2
    unclipped, clipped = gap * d, gap * d.clamp(-eps, eps)
    return weight * torch.minimum(unclipped, clipped) / 2.0, (clipped < unclipped).float()


def _p3o_separate(log_r1: Tensor, log_r2: Tensor, gap: Tensor, *, eps: float, cap: float) -> tuple[Tensor, Tensor]:
    """P3O-V1 per pair `(K,)`: each completion's PPO-clipped term (advantage D, resp. -D) weighted by the other's
    clamped stop-gradient ratio, halved; and the fraction of the two terms whose gradient the clip zeroed."""
    r1, r2 = _exp(log_r1), _exp(log_r2)
    obj1, clipped1, _ = _clipped_surrogate(r1, gap, eps_low=eps, eps_high=eps, dual_clip=None)
    obj2, clipped2, _ = _clipped_surrogate(r2, -gap, eps_low=eps, eps_high=eps, dual_clip=None)
    w1, w2 = r1.detach().clamp(1.0 / cap, cap), r2.detach().clamp(1.0 / cap, cap)
    return (w2 * obj1 + w1 * obj2) / 2.0, (clipped1.float() + clipped2.float()) / 2.0


@register("p3o", default_aggregation="seq_mean_token_sum")
def p3o_loss(
    policy_logps: Tensor,
    old_logps: Tensor,
    rewards: Tensor,
    mask: Tensor,
    *,
    ref_logps: Tensor | None = None,
    clipping: Literal["joint", "separate"] = "joint",
    clip_eps: float = 0.2,
    weight_cap: float = 10.0,
    beta: float = 0.0,
) -> LossOutput:
    """P3O (Wu et al. 2023, "Pairwise Proximal Policy Optimization: Harnessing Relative Feedback for LLM
    Alignment"): the pairwise policy gradient of Theorem 1,

        grad L^PPG = E_{y1, y2 ~ pi_theta}[ (r(y1|x) - r(y2|x)) grad( ln pi_theta(y1|x) - ln pi_theta(y2|x) ) / 2 ],

    on pairs sampled by pi_old, importance weighted by w = r_1 r_2, r_i = pi_theta(y_i|x) / pi_old(y_i|x), and
    clipped in one of the two ways of sec. 4.2. With D = r(y1) - r(y2) and sg the stop-gradient:

      joint (P3O-V2, the default; the paper finds it the more stable, with the better KL-reward trade-off):
        J = sg(clip(w, 1/c, c)) min( D d, D clip(d, -eps, eps) ) / 2,   d = ln r_1 - ln r_2,
        the log of the joint ratio pi_theta(y1) pi_old(y2) / (pi_old(y1) pi_theta(y2));
      separate (P3O-V1):
        J = [ sg(clip(r_2, 1/c, c)) min(r_1 D, clip(r_1, 1 - eps, 1 + eps) D)
              + sg(clip(r_1, 1/c, c)) min(-r_2 D, -clip(r_2, 1 - eps, 1 + eps) D) ] / 2.

    L_k = -J for pair k (y1 = row 2k, y2 = row 2k+1). On-policy (r_1 = r_2 = 1) both give the gradient of
    -D (ln pi_theta(y1) - ln pi_theta(y2)) / 2, the PPG, which depends on the rewards only through D: P3O is
    invariant to a per-prompt shift of the reward. Its default aggregation `seq_mean_token_sum` gives the mean
    of L_k over pairs (the authors' `mean() / 2`).

    With `beta > 0` the reward is KL-shaped, r(y) - beta ln pi_old(y) / pi_ref(y), the paper's r_final (the
    authors use beta = 0.05).

    Args:
        policy_logps: `(B, T)` log pi_theta (differentiable).
        old_logps: `(B, T)` log pi_old of the same tokens (constants).
        rewards: `(B,)` r of each completion (constants); rows 2k, 2k+1 answer the same prompt.
        mask: bool `(B, T)`; B must be even.
        ref_logps: `(B, T)` log pi_ref, required iff beta > 0 (if given with beta = 0, only `seq_kl` is logged).
        clipping: "joint" (P3O-V2) or "separate" (P3O-V1).
        clip_eps: eps in (0, 1): the log-ratio bound (joint) or the ratio clip (separate); authors' 0.2.
        weight_cap: c >= 1, the stop-gradient importance weights are clamped to [1/c, c]; authors' 10.
        beta: coefficient >= 0 of the KL shaping of the reward.
    Returns:
        LossOutput with loss `(B, T)` and metrics `clip_frac` (fraction of pairs, of completions for "separate",
        whose gradient the clip zeroed), `weight_mean` (importance weight w = r_1 r_2 before its clamp),
        `reward_diff_abs` (mean |D|, shaped), `approx_kl` (k3 estimate of KL(pi_old || pi_theta) per token)
        and, with `ref_logps`, `seq_kl` (mean log pi_old(y) / pi_ref(y)).
    Deviations: the two clipped objectives are written as in the authors' code (thwu1/trlx `p3o_loss`, joint
    clipping; the separate form in its earlier `P3OConfig.loss`), not checked symbol by symbol against the
    paper's sec. 4.2; sequence log-ratios are clamped to [-20, 20] before exp.
    """
    _check_pairs(mask, rewards, policy_logps=policy_logps, old_logps=old_logps, ref_logps=ref_logps)
    if clipping not in ("joint", "separate"):
        raise ValueError(f"clipping must be 'joint' (P3O-V2) or 'separate' (P3O-V1), got {clipping!r}")
    eps, _ = _check_clip(clip_eps, None, None)
    if not 1.0 <= weight_cap < float("inf"):
        raise ValueError(f"weight_cap must be a finite number >= 1, got {weight_cap}")
    _check_kl("p3o_loss", beta, ref_logps)
    policy, old = _zero_masked(policy_logps, mask), _zero_masked(old_logps.detach(), mask)
    shaped, kl_metrics = _kl_shaped(rewards, old, ref_logps, mask, beta)
    active, gap = _active_pairs(mask), _reward_gap(shaped)
    log_r1, log_r2 = _split(policy.sum(dim=1) - old.sum(dim=1))
    weight = _exp(log_r1 + log_r2).detach()
    clipped_surrogate = _p3o_joint if clipping == "joint" else _p3o_separate
    surrogate, clip_frac = clipped_surrogate(log_r1, log_r2, gap, eps=eps, cap=weight_cap)
    metrics = {
        "clip_frac": masked_metric(clip_frac, active),
        "weight_mean": masked_metric(weight, active),
        "reward_diff_abs": masked_metric(gap.abs(), active),
        "approx_kl": masked_metric(kl_k3(old, policy.detach()), mask),
    }
    return LossOutput(_spread(-surrogate, mask), {**metrics, **kl_metrics})


@register("copg", default_aggregation="seq_mean_token_sum")
def copg_loss(
    policy_logps: Tensor,
    rewards: Tensor,
    mask: Tensor,
    *,
    ref_logps: Tensor | None = None,
    beta: float = 0.06,
) -> LossOutput:
    """CoPG (Flet-Berliac et al. 2024, "Contrastive Policy Gradient: Aligning LLMs on Sequence-Level Scores in a
    Supervised-Friendly Fashion", eqs. 7-9, maximised in eqs. 10 and 17):

        l_CoPG(y, y'; pi) = ( R^pi_{beta/2}(y) - R^pi_{beta/2}(y') ) ln pi(y) / pi_ref(y)
                          + ( R^pi_{beta/2}(y') - R^pi_{beta/2}(y) ) ln pi(y') / pi_ref(y'),
        R^pi_beta(y) = R(y) - beta ln pi(y) / pi_ref(y)                                          (eq. 1),

    for two independent completions y, y' of one prompt from any sampling distribution. The penalty in
    R^pi_{beta/2} is differentiated too; the gradient (eqs. 18-19) is

        grad l_CoPG = ( R^pi_beta(y) - R^pi_beta(y') ) grad( ln pi(y) - ln pi(y') ),

    a policy gradient whose baseline is the other completion's KL-regularised reward. It needs no importance
    ratio (so no `old_logps`): for any sampling distributions with the support of pi_ref, the unique maximiser
    is pi_*(y) ~ pi_ref(y) exp(R(y) / beta) (Theorem 1), so pairs may be off-policy (replayed, or reused over
    `ppo_epochs`). Per pair k (y = row 2k, y' = row 2k+1), with u = ln pi(y)/pi_ref(y) - ln pi(y')/pi_ref(y')
    and D = R(y) - R(y'): L_k = -l_CoPG = -(D - beta u / 2) u; the default aggregation `seq_mean_token_sum`
    gives the mean of L_k over pairs (eq. 17). On-policy with beta = 0 its gradient is twice that of RLOO with
    k = 2 under the same aggregation (Property 2, up to RLOO's 1/k).

    Args:
        policy_logps: `(B, T)` log pi (differentiable).
        rewards: `(B,)` R of each completion (constants); rows 2k, 2k+1 answer the same prompt.
        mask: bool `(B, T)`; B must be even.
        ref_logps: `(B, T)` log pi_ref (constants), required iff beta > 0.
        beta: KL coefficient >= 0; 0.06 gave the highest reward in the paper's TL;DR sweep over
            {0.01, 0.03, 0.06, 0.1, 0.3, 1} (stable for 0.03 to 0.1).
    Returns:
        LossOutput with loss `(B, T)` and metrics `reward_diff_abs` (mean |R(y) - R(y')|),
        `reg_reward_diff_abs` (mean |R^pi_beta(y) - R^pi_beta(y')|, the weight of the gradient) and, with
        `ref_logps`, `seq_kl` (mean ln pi(y) / pi_ref(y)).
    Deviations: none in the loss (the mean over pairs is eq. 17). Without `ref_logps` (beta = 0) u is
    ln pi(y) - ln pi(y'): the loss value moves by a constant of the pair, the gradient is the same.
    """
    _check_pairs(mask, rewards, policy_logps=policy_logps, ref_logps=ref_logps)
    _check_kl("copg_loss", beta, ref_logps)
    log_ratio = _seq(policy_logps, mask)
    if ref_logps is not None:
        log_ratio = log_ratio - _seq(ref_logps.detach(), mask)
    active, gap = _active_pairs(mask), _reward_gap(rewards)
    first, second = _split(log_ratio)
    u = first - second
    metrics = {
        "reward_diff_abs": masked_metric(gap.abs(), active),
        "reg_reward_diff_abs": masked_metric((gap - beta * u).abs(), active),
    }
    if ref_logps is not None:
        metrics["seq_kl"] = masked_metric(log_ratio, mask.any(dim=1))
    return LossOutput(_spread(-(gap - beta / 2.0 * u) * u, mask), metrics)
