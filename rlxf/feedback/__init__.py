"""Feedback: anything that scores completions, `feedback(prompts, completions, **context) -> Scores`."""

from rlxf.feedback.base import (
    Feedback,
    FeedbackError,
    FeedbackSourceFailed,
    Scores,
    check_batch,
    context_list,
    finite_mask,
    row_problems,
    shown_json,
    validate_scores,
)
from rlxf.feedback.code import UnitTestVerifier, build_program, extract_code
from rlxf.feedback.combine import Gated, LengthPenalty, Normalized, RunningMoments, WeightedSum, overlong_penalty
from rlxf.feedback.contained import ContainedRewardFunction
from rlxf.feedback.judges import CritiqueJudge, PairwiseJudge, PointwiseJudge, position_inconsistency
from rlxf.feedback.math import MathAnswerVerifier, extract_answer
from rlxf.feedback.oracles import GoldRewardModel, IntransitiveOracle, make_synthetic_pairs
from rlxf.feedback.pairwise import BradleyTerryPairwise, PairwiseFeedback
from rlxf.feedback.registry import (
    FEEDBACK,
    list_feedback,
    make_feedback,
    make_feedback_from_spec,
    register_feedback,
)
from rlxf.feedback.reward_model import RewardModelFeedback, load
from rlxf.feedback.verifiers import (
    ArithmeticVerifier,
    NumericAnswerVerifier,
    boxed_answer,
    gsm8k_answer,
    last_integer,
    last_number,
    parse_number,
)

__all__ = [
    "Feedback",
    "FeedbackError",
    "FeedbackSourceFailed",
    "Scores",
    "check_batch",
    "context_list",
    "finite_mask",
    "row_problems",
    "shown_json",
    "validate_scores",
    "UnitTestVerifier",
    "build_program",
    "extract_code",
    "ContainedRewardFunction",
    "FEEDBACK",
    "list_feedback",
    "make_feedback",
    "register_feedback",
    "make_feedback_from_spec",
    "MathAnswerVerifier",
    "extract_answer",
    "PointwiseJudge",
    "CritiqueJudge",
    "PairwiseJudge",
    "position_inconsistency",
    "PairwiseFeedback",
    "BradleyTerryPairwise",
    "WeightedSum",
    "Normalized",
    "RunningMoments",
    "Gated",
    "LengthPenalty",
    "overlong_penalty",
    "GoldRewardModel",
    "IntransitiveOracle",
    "make_synthetic_pairs",
    "RewardModelFeedback",
    "load",
    "ArithmeticVerifier",
    "NumericAnswerVerifier",
    "boxed_answer",
    "gsm8k_answer",
    "last_integer",
    "last_number",
    "parse_number",
]
