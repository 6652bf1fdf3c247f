"""The one reduction from per-token losses to a scalar.

Each mode is named after what it divides by, and the divisor can be supplied from outside (`denominator`),
so that micro-batches of one big batch, each reduced with the big batch's divisor, sum exactly to the big
batch's value. That makes gradient accumulation and data-parallel sharding leave the loss unchanged:

    total = aggregate_denominator(full_mask, mode)
    sum(aggregate(v_k, m_k, mode, denominator=total) for v_k, m_k in micro_batches)
        == aggregate(full_values, full_mask, mode)

(for data parallelism with averaged gradients, pass `total / world_size`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.ops.masked import masked_sum

__all__ = ["AGGREGATION_MODES", "aggregate", "aggregate_denominator"]

AGGREGATION_MODES: tuple[str, ...] = (
    "token_mean",  # sum over tokens / number of tokens
    "seq_mean_token_mean",  # mean over non-empty rows of (row sum / row tokens)
    "seq_mean_token_sum",  # sum over rows of row sums / number of rows
    "token_sum_norm",  # sum over tokens / a fixed constant (Dr. GRPO: max_len * num_seqs)
)


def _check(values: Tensor, mask: Tensor, mode: str) -> None:
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {', '.join(AGGREGATION_MODES)}")
    if values.dim() != 2:
        raise ValueError(f"values must be (B, T), got shape {tuple(values.shape)}")
    if mask.dtype != torch.bool or mask.shape != values.shape:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(values.shape)}, got {mask.dtype} {tuple(mask.shape)}"
        )


def aggregate_denominator(mask: Tensor, mode: str, *, constant: float | None = None) -> float:
    """The divisor `aggregate` uses for a full batch, as a Python float.

    `mask` is bool `(B, T)`. Counts are clamped to at least 1 so that a batch with nothing to learn from
    reduces to 0 rather than NaN. `token_sum_norm` requires `constant` and returns it.
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {', '.join(AGGREGATION_MODES)}")
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool (B, T) tensor, got {mask.dtype} {tuple(mask.shape)}")
    if mode == "token_sum_norm":
        if constant is None or constant <= 0:
            raise ValueError(
                f"token_sum_norm needs a positive constant (e.g. max_len * n_seqs), got {constant}"
            )
        return float(constant)
    if mode == "token_mean":
        count = int(mask.sum())
    elif mode == "seq_mean_token_mean":
        count = int(mask.any(dim=1).sum())
    else:  # seq_mean_token_sum
        count = mask.shape[0]
    return float(max(count, 1))


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: str,
    *,
    denominator: float | Tensor | None = None,
    constant: float | None = None,
) -> Tensor:
    """Reduce per-token `values` `(B, T)` over bool `mask` `(B, T)` to a float32 scalar.

    Modes (`N` = the divisor: `denominator` when given, otherwise the local count below, clamped to >= 1):
      - `token_mean`: sum_{b,t} m v / N, N = number of True tokens.
      - `seq_mean_token_mean`: sum_b [ (sum_t m v) / (sum_t m) ] / N over rows with >= 1 token,
        N = number of such rows (empty rows contribute nothing).
      - `seq_mean_token_sum`: sum_b (sum_t m v) / N, N = number of rows B.
      - `token_sum_norm`: sum_{b,t} m v / N, N = `constant` (required unless `denominator` is given).
    """
    _check(values, mask, mode)
    if mode == "seq_mean_token_mean":
        row_tokens = mask.sum(dim=1).float()
        total = (masked_sum(values, mask, dim=1) / row_tokens.clamp(min=1.0)).sum()
    else:
        total = masked_sum(values, mask)

    if denominator is None:
        if mode == "token_sum_norm" and constant is None:
            raise ValueError("token_sum_norm needs constant= (e.g. max_len * num_seqs) or denominator=")
        if mode == "token_mean":
            denominator = mask.sum().float().clamp(min=1.0)
        elif mode == "seq_mean_token_mean":
            denominator = mask.any(dim=1).sum().float().clamp(min=1.0)
        elif mode == "seq_mean_token_sum":
            denominator = float(max(mask.shape[0], 1))
        else:
            denominator = constant
    if not isinstance(denominator, Tensor) and denominator <= 0:
        raise ValueError(f"denominator must be positive, got {denominator}")
    return total / denominator
