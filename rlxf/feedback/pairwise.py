"""Pairwise feedback: `compare(prompts, completions_a, completions_b, **context) -> Scores`.

`Scores.values[i]` is the probability, in [0, 1], that `completions_a[i]` is the better answer to
`prompts[i]`; 0.5 is "no preference". Pairwise judges implement it; so does any pointwise Feedback through
`BradleyTerryPairwise` (P(a better) = sigmoid(r_a - r_b)).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from rlxf.feedback.base import Feedback, FeedbackError, Scores, check_batch, validate_scores

__all__ = ["PairwiseFeedback", "BradleyTerryPairwise", "check_pair_batch", "validate_preferences"]


@runtime_checkable
class PairwiseFeedback(Protocol):
    """Compares two completions per prompt; values are P(completion a is better), shape `(B,)`, in [0, 1]."""

    def compare(
        self, prompts: list[str], completions_a: list[str], completions_b: list[str], **context: list[Any]
    ) -> Scores: ...


def check_pair_batch(prompts: list[str], completions_a: list[str], completions_b: list[str], *, source: str) -> int:
    """The batch size `B` after checking that prompts and both completion lists are aligned lists of str."""
    n = check_batch(prompts, completions_a, source=source)
    if len(completions_b) != n:
        raise FeedbackError(f"{source}: {n} completions_a but {len(completions_b)} completions_b")
    check_batch(prompts, completions_b, source=source)
    return n


def validate_preferences(scores: Scores, n: int) -> Scores:
    """`validate_scores` plus the pairwise range check: every value must lie in [0, 1]."""
    scores = validate_scores(scores, n)
    bad = ((scores.values < 0) | (scores.values > 1)).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(f"{i}={scores.values[i].item()}" for i in bad[:10])
        raise FeedbackError(f"pairwise feedback returned values outside [0, 1]: {shown}")
    return scores


class BradleyTerryPairwise:
    """A pointwise Feedback read as a pairwise one: P(a better) = sigmoid(r_a - r_b) (Bradley & Terry 1952).

    info: `reward_a`, `reward_b` (the two scores), `source`; the wrapped feedback's own info is kept
    under `a_<key>` / `b_<key>`.
    """

    def __init__(self, feedback: Feedback, *, name: str = "bradley_terry"):
        self.feedback = feedback
        self.name = name

    def compare(
        self, prompts: list[str], completions_a: list[str], completions_b: list[str], **context: list[Any]
    ) -> Scores:
        n = check_pair_batch(prompts, completions_a, completions_b, source=self.name)
        a = validate_scores(self.feedback(prompts, completions_a, **context), n)
        b = validate_scores(self.feedback(prompts, completions_b, **context), n)
        values = torch.sigmoid(a.values.double() - b.values.double()).float()
        info: dict[str, list[Any]] = {"reward_a": a.values.tolist(), "reward_b": b.values.tolist()}
        info.update({f"a_{k}": v for k, v in a.info.items()})
        info.update({f"b_{k}": v for k, v in b.info.items()})
        info["source"] = [self.name] * n
        return Scores(values, info)
