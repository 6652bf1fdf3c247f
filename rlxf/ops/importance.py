"""Sampler-trainer mismatch: truncated importance sampling (TIS) weights and the metrics that measure the gap.

A fast generator (the sampler, mu) and the training forward (the trainer, pi_old) hold the same weights but
compute different log-probs for the same tokens (kernels, precision, batch shapes), so "on-policy" training
is in fact off-policy (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
Training", https://fengyao.notion.site/off-policy-rl). Their fix, truncated importance sampling, weighs each
token's policy-gradient term by

    w_t = min( pi_old(y_t | x, y_<t) / mu(y_t | x, y_<t), C ),

a constant (no gradient) that corrects the expectation E_{y ~ mu} back towards E_{y ~ pi_old}; truncating at C
bounds its variance at the price of some bias.

`old_logps` are the trainer's log-probs of the sampled tokens before the update, `sampler_logps` the
generator's; both `(B, T)`, with a bool `mask` `(B, T)` True where a token counts. Everything here is a detached
float32 constant. Masked positions are replaced by 0 before any arithmetic, so NaN or -inf in padding reaches
neither the weights nor the metrics, and the log-ratio is clamped to [-20, 20] before `exp`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.ops.kl import kl_k3
from rlxf.ops.masked import masked_mean

__all__ = ["sampler_mismatch_metrics", "truncated_importance_weights"]

_MAX_LOG_RATIO = 20.0


def _check(old_logps: Tensor, sampler_logps: Tensor, mask: Tensor) -> None:
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be a bool (B, T) tensor, got {mask.dtype} {tuple(mask.shape)}")
    for name, tensor in (("old_logps", old_logps), ("sampler_logps", sampler_logps)):
        if tensor.shape != mask.shape:
            raise ValueError(f"{name} must be (B, T) = {tuple(mask.shape)} like mask, got {tuple(tensor.shape)}")
        if not tensor.dtype.is_floating_point:
            raise ValueError(f"{name} must be a float tensor, got dtype {tensor.dtype}")


def _masked_log_ratios(old_logps: Tensor, sampler_logps: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(old, sampler, log pi_old - log mu) as detached float32, 0 at masked positions."""
    old = torch.where(mask, old_logps.detach().float(), 0.0)
    sampler = torch.where(mask, sampler_logps.detach().float(), 0.0)
    return old, sampler, old - sampler


@torch.no_grad()
def sampler_mismatch_metrics(old_logps: Tensor, sampler_logps: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """How far the sampler's log-probs are from the trainer's, averaged over the masked-in tokens.

    Args:
        old_logps: `(B, T)` log pi_old of the sampled tokens (the trainer's forward, before the update).
        sampler_logps: `(B, T)` log mu of the same tokens (the generator's).
        mask: bool `(B, T)`.
    Returns:
        Detached float32 scalars (0 when no token is masked in):
        `sampler_trainer_kl`: k3 estimate of KL(mu || pi_old), per token (pi_old/mu - 1 - log(pi_old/mu));
        the tokens were sampled from mu, which makes k3 an unbiased, non-negative estimate of that direction;
        `sampler_trainer_logp_absdiff`: mean |log pi_old - log mu|.
    """
    _check(old_logps, sampler_logps, mask)
    old, sampler, log_ratio = _masked_log_ratios(old_logps, sampler_logps, mask)
    return {
        "sampler_trainer_kl": masked_mean(kl_k3(sampler, old), mask),
        "sampler_trainer_logp_absdiff": masked_mean(log_ratio.abs(), mask),
    }


@torch.no_grad()
def truncated_importance_weights(
    old_logps: Tensor, sampler_logps: Tensor, mask: Tensor, *, cap: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """TIS weights w_t = min(exp(log pi_old - log mu), C) (Yao et al. 2025; C = `cap`).

    Args:
        old_logps: `(B, T)` log pi_old (trainer, before the update).
        sampler_logps: `(B, T)` log mu (generator).
        mask: bool `(B, T)`.
        cap: C > 0 (Yao et al. and verl's examples use 2).
    Returns:
        `(weights, metrics)`: detached float32 `(B, T)` weights, 0 at masked positions; metrics are detached
        scalars over masked-in tokens: `tis_weight_mean` (mean of w_t), `tis_truncated_frac` (tokens whose
        ratio exceeded C), and those of `sampler_mismatch_metrics`.
    Deviations: the log-ratio is clamped to [-20, 20] before exp (no effect on w_t unless C > e^20).
    """
    _check(old_logps, sampler_logps, mask)
    if not 0.0 < cap < float("inf"):
        raise ValueError(f"cap must be a finite number > 0 (Yao et al. use 2), got {cap}")
    _, _, log_ratio = _masked_log_ratios(old_logps, sampler_logps, mask)
    ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO).exp()
    weights = torch.where(mask, ratio.clamp(max=cap), 0.0)
    metrics = {
        "tis_weight_mean": masked_mean(weights, mask),
        "tis_truncated_frac": masked_mean((ratio > cap).float(), mask),
        **sampler_mismatch_metrics(old_logps, sampler_logps, mask),
    }
    return weights, metrics
