"""Slow, obviously-correct references for differential tests of the fast paths in `rlxf.ops`."""

from rlxf.testing.reference import (
    aggregate_reference,
    entropy_reference,
    gae_reference,
    group_center_reference,
    group_zscore_reference,
    leave_one_out_reference,
    logprobs_reference,
)

__all__ = [
    "aggregate_reference",
    "entropy_reference",
    "gae_reference",
    "group_center_reference",
    "group_zscore_reference",
    "leave_one_out_reference",
    "logprobs_reference",
]
