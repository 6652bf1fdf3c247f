"""Per-token estimators of KL(pi || ref) from tokens sampled from pi (Schulman 2020, "Approximating KL
divergence", http://joschu.net/blog/kl-approx.html).

With r = ref(x) / pi(x) and x ~ pi:
  k1 = -log r             unbiased, high variance, can be negative per token;
  k2 = (log r)^2 / 2      biased, low variance, >= 0;
  k3 = (r - 1) - log r    unbiased, low variance, >= 0 (the estimator in DeepSeekMath eq. 4).
All take `logps` and `ref_logps` of the same shape (usually `(B, T)`) and return float32 of that shape.
To estimate KL(q || p) from samples of q, pass q's log-probs as `logps` and p's as `ref_logps`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kl_k1", "kl_k2", "kl_k3", "KL_ESTIMATORS"]

# exp(20) ~ 4.9e8 keeps k3 finite in float32 for any log-ratio; beyond that the estimate is saturated anyway.
_MAX_LOG_RATIO = 20.0


def _log_ratio(logps: Tensor, ref_logps: Tensor) -> Tensor:
    if logps.shape != ref_logps.shape:
        raise ValueError(
            "logps and ref_logps must have the same shape, "
            f"got {tuple(logps.shape)} and {tuple(ref_logps.shape)}"
        )
    return ref_logps.float() - logps.float()


def kl_k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k1 = log pi - log ref, per token."""
    return -_log_ratio(logps, ref_logps)


def kl_k2(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k2 = (log pi - log ref)^2 / 2, per token."""
    return 0.5 * _log_ratio(logps, ref_logps).square()


def kl_k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3 = exp(log ref - log pi) - (log ref - log pi) - 1, per token; log-ratio clamped to [-20, 20]."""
    log_ratio = _log_ratio(logps, ref_logps).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
