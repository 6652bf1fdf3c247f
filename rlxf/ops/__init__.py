"""Tensor maths shared by every loss and recipe: log-probs, masked reductions, KL estimators, advantages (group,
GAE, ReMax, REINFORCE++, KL-shaped token rewards), policy filtration, truncated importance weights, Lagrange
multipliers of constrained RLHF, preference-pair selection and win rates, the geometric policy mixture.

Imports only torch. Per-token tensors are `(B, T)`; masks are bool `(B, T)`, True where a value counts;
results are float32.
"""

from rlxf.ops.advantages import (
    ADVANTAGE_ESTIMATORS,
    gae,
    group_center,
    group_zscore,
    kl_shaped_rewards,
    leave_one_out,
    reinforce_pp,
    remax,
)
from rlxf.ops.aggregate import AGGREGATION_MODES, aggregate, aggregate_denominator
from rlxf.ops.constraints import lagrangian_rewards, update_multipliers
from rlxf.ops.filtration import FILTRATION_STRATEGIES, policy_filtration
from rlxf.ops.importance import sampler_mismatch_metrics, truncated_importance_weights
from rlxf.ops.kl import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3
from rlxf.ops.logprobs import entropy_from_logits, logprobs_from_hidden, logprobs_from_logits
from rlxf.ops.masked import masked_mean, masked_sum, masked_var, masked_whiten
from rlxf.ops.mixture import geometric_mixture_logprobs
from rlxf.ops.pairs import (
    PAIR_SELECTORS,
    Pairs,
    all_pairs,
    best_vs_worst,
    large_margin_pairs,
    pair_rows,
    random_pair,
    win_rates_from_comparisons,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "FILTRATION_STRATEGIES",
    "AGGREGATION_MODES",
    "KL_ESTIMATORS",
    "PAIR_SELECTORS",
    "Pairs",
    "aggregate",
    "aggregate_denominator",
    "all_pairs",
    "best_vs_worst",
    "entropy_from_logits",
    "gae",
    "geometric_mixture_logprobs",
    "group_center",
    "group_zscore",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_shaped_rewards",
    "lagrangian_rewards",
    "large_margin_pairs",
    "leave_one_out",
    "logprobs_from_hidden",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "pair_rows",
    "policy_filtration",
    "reinforce_pp",
    "remax",
    "sampler_mismatch_metrics",
    "truncated_importance_weights",
    "update_multipliers",
    "random_pair",
    "win_rates_from_comparisons",
]
