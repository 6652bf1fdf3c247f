"""rlxf: reinforcement learning from any feedback.

The public API is flat (``rlxf.dpo_loss``, ``rlxf.load_policy``, ``rlxf.TransformersGenerator``, ...) but
``import rlxf`` loads nothing heavy: each name is imported from its home module on first use (PEP 562), so the
command line and ``import rlxf`` stay instant and torch is imported only when a name needs it.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# home module -> the names it contributes to the flat API
_API: dict[str, tuple[str, ...]] = {
    "rlxf.types": ("LossOutput", "Rollout", "Scores", "TokenizedPair", "TokenizedUnpaired"),
    "rlxf.config": ("ConfigError", "build_config"),
    "rlxf.ops": (
        "ADVANTAGE_ESTIMATORS", "AGGREGATION_MODES", "KL_ESTIMATORS", "aggregate", "aggregate_denominator",
        "entropy_from_logits", "gae", "group_center", "group_zscore", "kl_k1", "kl_k2", "kl_k3", "leave_one_out",
        "logprobs_from_hidden", "logprobs_from_logits", "masked_mean", "masked_sum", "masked_var", "masked_whiten",
    ),
    "rlxf.objectives": (
        "OBJECTIVES", "bradley_terry_loss", "cdpo_loss", "cpl_loss", "cringe_pairwise_loss", "discopop_loss",
        "dpo_loss", "fdpo_loss", "get_objective", "group_robust_dpo_loss", "grpo_loss", "hdpo_loss", "hinge_loss",
        "ipo_loss", "kto_loss", "list_objectives", "mmpo_loss", "orpo_loss", "pinball_loss", "ppo_clip_loss",
        "quantile_bt_loss", "register", "reinforce_loss", "reward_centering_penalty", "rloo_loss",
        "robust_dpo_loss", "rpo_loss", "simpo_loss", "soft_bt_loss",
    ),
    "rlxf.objectives.signature": ("call_loss", "loss_signature", "resolve_hyperparameters"),
    "rlxf.data": ("DataError", "arithmetic_rows", "encode_prompts", "load_prompts", "render_prompt"),
    "rlxf.data.preferences": ("load_preferences", "tokenize_pairs", "tokenize_unpaired"),
    "rlxf.models": ("load_policy", "save_policy", "tiny_model", "tiny_tokenizer"),
    "rlxf.models.logps": ("sequence_logps",),
    "rlxf.rollout": ("FastLlamaGenerator", "Generator", "LocalLM", "TransformersGenerator"),
    "rlxf.feedback": (
        "ArithmeticVerifier", "BradleyTerryPairwise", "ContainedRewardFunction", "CritiqueJudge", "Feedback",
        "FeedbackError", "Gated", "GoldRewardModel", "IntransitiveOracle", "LengthPenalty", "MathAnswerVerifier",
        "Normalized", "NumericAnswerVerifier", "PairwiseFeedback", "PairwiseJudge", "PointwiseJudge",
        "RewardModelFeedback", "UnitTestVerifier", "WeightedSum", "list_feedback", "make_feedback",
        "make_feedback_from_spec", "register_feedback", "validate_scores",
    ),
    "rlxf.eval.accuracy": ("evaluate_accuracy",),
    "rlxf.eval.preference": ("evaluate_preferences", "preference_metrics"),
    "rlxf.runs": ("ResumableRunOptions", "RunOptions"),
    "rlxf.distributed": ("LocalExecutor", "OnlineStages"),
}
_HOME = {name: module for module, names in _API.items() for name in names}

__all__ = ["__version__", *sorted(_HOME)]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'rlxf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
