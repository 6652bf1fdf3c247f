"""Masked reductions and the one `aggregate` reduction (rlxf.ops.masked, rlxf.ops.aggregate)."""

import math

import pytest
import torch

from rlxf.ops import (
    AGGREGATION_MODES,
    aggregate,
    aggregate_denominator,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from rlxf.testing import aggregate_reference

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])


def _close(actual, expected, rtol=1e-5, atol=1e-7):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), rtol=rtol, atol=atol
    )


def test_masked_sum_mean_by_hand():
    """Masked-in entries: row 0 -> {1, 2}, row 1 -> {4}, row 2 -> {}. Sum 7, mean 7/3; per row sums
    (3, 4, 0) and means (1.5, 4, 0): the empty row gives 0, not NaN."""
    _close(masked_sum(VALUES, MASK), 7.0)
    _close(masked_mean(VALUES, MASK), 7.0 / 3.0)
    _close(masked_sum(VALUES, MASK, dim=1), torch.tensor([3.0, 4.0, 0.0]))
    _close(masked_mean(VALUES, MASK, dim=1), torch.tensor([1.5, 4.0, 0.0]))
    _close(masked_mean(VALUES, torch.zeros_like(MASK)), 0.0)


def test_masked_var_by_hand():
    """{1, 2, 4}: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9; population var 14/9,
    unbiased 7/3. Row 1 has one entry: var 0 both ways (never NaN)."""
    _close(masked_var(VALUES, MASK), 14.0 / 9.0)
    _close(masked_var(VALUES, MASK, unbiased=True), 7.0 / 3.0)
    _close(masked_var(VALUES, MASK, dim=1, unbiased=True), torch.tensor([0.5, 0.0, 0.0]))


def test_masked_whiten_by_hand():
    """{1, 2, 4} -> (x - 7/3) / sqrt(14/9 + eps); masked positions 0. shift_mean=False adds 7/3 back."""
    scale = 1.0 / math.sqrt(14.0 / 9.0 + 1e-8)
    expected = torch.tensor([[-4 / 3 * scale, -1 / 3 * scale, 0.0], [5 / 3 * scale, 0.0, 0.0], [0.0] * 3])
    _close(masked_whiten(VALUES, MASK), expected)
    no_shift = masked_whiten(VALUES, MASK, shift_mean=False)
    _close(no_shift, torch.where(MASK, expected + 7.0 / 3.0, 0.0))
    w = masked_whiten(torch.randn(6, 7), torch.rand(6, 7) > 0.3)
    assert torch.isfinite(w).all()


def test_nan_in_masked_positions_does_not_leak():
    x = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]], requires_grad=True)
    mask = torch.tensor([[True, False], [False, True]])
    out = masked_mean(x, mask)
    out.backward()
    _close(out, 1.5)
    _close(x.grad, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))


def test_aggregate_modes_by_hand():
    """Rows {1, 2}, {4}, {} (3 rows, 2 non-empty, 3 tokens, token sum 7):
    token_mean 7/3; seq_mean_token_mean ((1+2)/2 + 4/1) / 2 = 2.75; seq_mean_token_sum (3 + 4 + 0) / 3;
    token_sum_norm with constant 9 (max_len 3 * 3 seqs): 7/9."""
    _close(aggregate(VALUES, MASK, "token_mean"), 7.0 / 3.0)
    _close(aggregate(VALUES, MASK, "seq_mean_token_mean"), 2.75)
    _close(aggregate(VALUES, MASK, "seq_mean_token_sum"), 7.0 / 3.0)
    _close(aggregate(VALUES, MASK, "token_sum_norm", constant=9.0), 7.0 / 9.0)
    assert aggregate_denominator(MASK, "token_mean") == 3.0
    assert aggregate_denominator(MASK, "seq_mean_token_mean") == 2.0
    assert aggregate_denominator(MASK, "seq_mean_token_sum") == 3.0
    assert aggregate_denominator(MASK, "token_sum_norm", constant=9.0) == 9.0


def _random_batch(seed, batch=9, length=7):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, length, generator=g)
    lengths = torch.randint(0, length + 1, (batch,), generator=g)
    lengths[0] = 0  # always one empty row
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return values, mask


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_aggregate_matches_loop_reference(mode):
    for seed in range(5):
        values, mask = _random_batch(seed)
        constant = float(values.numel())
        expected = aggregate_reference(values, mask, mode, constant=constant)
        _close(aggregate(values, mask, mode, constant=constant), expected)
        _close(
            aggregate(values, mask, mode, denominator=2.5),
            aggregate_reference(values, mask, mode, denominator=2.5),
        )


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_aggregate_micro_batch_invariance(mode):
    """Micro-batches reduced with the full batch's denominator sum to the full-batch value, and so do their
    gradients (gradient accumulation equals one big batch)."""
    values, mask = _random_batch(11, batch=10)
    constant = 7.0 * 10
    full_values = values.clone().requires_grad_()
    full = aggregate(full_values, mask, mode, constant=constant)
    full.backward()

    denominator = aggregate_denominator(mask, mode, constant=constant)
    micro_values = values.clone().requires_grad_()
    total = 0.0
    for rows in (slice(0, 3), slice(3, 4), slice(4, 10)):
        part = aggregate(micro_values[rows], mask[rows], mode, denominator=denominator, constant=constant)
        part.backward()
        total = total + part.detach()
    _close(total, full.detach())
    _close(micro_values.grad, full_values.grad)


@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_aggregate_fully_masked_batch_is_zero_not_nan(mode):
    values = torch.full((2, 3), float("nan"), requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    out = aggregate(values, mask, mode, constant=6.0)
    out.backward()
    _close(out, 0.0)
    assert torch.equal(values.grad, torch.zeros(2, 3))


def test_aggregate_errors():
    with pytest.raises(ValueError, match="unknown aggregation mode"):
        aggregate(VALUES, MASK, "mean")
    with pytest.raises(ValueError, match="constant"):
        aggregate(VALUES, MASK, "token_sum_norm")
    with pytest.raises(ValueError, match="constant"):
        aggregate_denominator(MASK, "token_sum_norm")
    with pytest.raises(ValueError, match="mask"):
        aggregate(VALUES, MASK.float(), "token_mean")
    with pytest.raises(ValueError, match="denominator"):
        aggregate(VALUES, MASK, "token_mean", denominator=0.0)
