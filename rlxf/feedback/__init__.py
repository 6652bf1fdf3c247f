"""Feedback: anything that scores completions, `feedback(prompts, completions, **context) -> Scores`."""

from rlxf.feedback.base import Feedback, FeedbackError, Scores, check_batch, context_list, validate_scores
from rlxf.feedback.registry import FEEDBACK, list_feedback, make_feedback, register_feedback
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
    "Scores",
    "check_batch",
    "context_list",
    "validate_scores",
    "FEEDBACK",
    "list_feedback",
    "make_feedback",
    "register_feedback",
    "ArithmeticVerifier",
    "NumericAnswerVerifier",
    "boxed_answer",
    "gsm8k_answer",
    "last_integer",
    "last_number",
    "parse_number",
]
