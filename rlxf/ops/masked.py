"""Masked reductions over per-token tensors.

Every function takes `x` and a bool `mask` of the same shape (usually `(B, T)`), True where a value counts.
Masked-out entries are selected away with `torch.where` rather than multiplied by zero, so a NaN or inf
sitting in padding cannot leak into the result or its gradient. All results are float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["masked_sum", "masked_mean", "masked_var", "masked_whiten"]


def _check(x: Tensor, mask: Tensor) -> None:
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if x.shape != mask.shape:
        raise ValueError(f"x and mask must have the same shape, got {tuple(x.shape)} and {tuple(mask.shape)}")


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` where `mask` is True: a scalar (`dim=None`) or reduced over `dim`. float32."""
    _check(x, mask)
    selected = torch.where(mask, x.float(), 0.0)
    return selected.sum() if dim is None else selected.sum(dim)


def _count(mask: Tensor, dim: int | None) -> Tensor:
    return (mask.sum() if dim is None else mask.sum(dim)).float()


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the True entries of `mask`; 0 (never NaN) where there are none. float32."""
    return masked_sum(x, mask, dim) / _count(mask, dim).clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, dim: int | None = None, *, unbiased: bool = False) -> Tensor:
    """Variance of `x` over the True entries of `mask`. float32.

    Population variance (divide by n) by default; `unbiased=True` divides by n - 1 (Bessel). Fewer entries
    than the divisor needs gives 0, never NaN.
    """
    mean = masked_mean(x, mask, dim)
    centred = x.float() - (mean if dim is None else mean.unsqueeze(dim))
    n = _count(mask, dim)
    divisor = (n - 1.0) if unbiased else n
    return masked_sum(centred.square(), mask, dim) / divisor.clamp(min=1.0)


def masked_whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Whiten `x` with the mean and population variance of its masked entries (one statistic for the batch).

    Returns `(x - mean) / sqrt(var + eps)` (plus `mean` back when `shift_mean=False`, which rescales only),
    with masked-out positions set to 0. Same shape as `x`, float32. The population variance (not TRL's
    unbiased one) is used so that the whitened masked entries have unit variance up to `eps`.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x.float() - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0.0)
