"""Slow, obviously-correct references for differential tests of the fast paths (ops, generators, LocalLM)."""

from rlxf.testing.reference import (
    aggregate_reference,
    continuation_logp_reference,
    entropy_reference,
    gae_reference,
    group_center_reference,
    group_zscore_reference,
    leave_one_out_reference,
    logprobs_reference,
    sampled_logps_reference,
)

__all__ = [
    "aggregate_reference",
    "continuation_logp_reference",
    "entropy_reference",
    "gae_reference",
    "group_center_reference",
    "group_zscore_reference",
    "leave_one_out_reference",
    "logprobs_reference",
    "sampled_logps_reference",
]
