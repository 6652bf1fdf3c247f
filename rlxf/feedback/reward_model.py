"""A saved reward model as a `Feedback`: ``rlxf.feedback.load(path)(prompts, completions) -> Scores``.

``Scores.values`` is the reward (members aggregated by the model's saved rule, or the one given here), in the
model's own scale: nothing is normalised. ``info`` per item: ``source`` ("reward_model"), and for ensembles
or quantile heads ``uncertainty`` (total std over members and quantile atoms) and ``member_rewards`` (one
float per member).
"""
from __future__ import annotations

import os
from typing import Any

from rlxf.feedback.base import Scores, check_batch
from rlxf.models.reward import AGGREGATIONS, load_reward_model

__all__ = ["RewardModelFeedback", "load"]


class RewardModelFeedback:
    """Scores completions with a `rlxf.models.reward.RewardModel` (or a whole-model `RewardEnsemble`).

    ``aggregation`` ('mean', 'wco', 'uwo') and ``uwo_lambda`` override the saved ensemble rule; ``batch_size``
    is the number of texts per forward pass.
    """

    name = "reward_model"

    def __init__(self, model, *, aggregation: str | None = None, uwo_lambda: float | None = None,
                 batch_size: int = 32):

        if aggregation is not None and aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown ensemble aggregation {aggregation!r}; one of {', '.join(AGGREGATIONS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.aggregation, self.uwo_lambda, self.batch_size = model, aggregation, uwo_lambda, batch_size

    @classmethod
    def from_path(cls, path: str | os.PathLike, *, device: str = "cpu", **kwargs: Any) -> RewardModelFeedback:
        return cls(load_reward_model(path, device=device), **kwargs)

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        out = self.model.score(prompts, completions, batch_size=self.batch_size, aggregation=self.aggregation,
                               uwo_lambda=self.uwo_lambda)
        info: dict[str, list[Any]] = {"source": [self.name] * n}
        if out.uncertainty is not None:
            info["uncertainty"] = out.uncertainty.tolist()
            info["member_rewards"] = out.member_rewards.tolist()
        return Scores(out.rewards.float(), info)


def load(path: str | os.PathLike, **kwargs: Any) -> RewardModelFeedback:
    """The reward model saved at ``path`` (``runs/<run>/final``, the run directory itself, or a whole-model
    ensemble written by `rlxf.models.reward.save_ensemble`) as a Feedback; ``kwargs`` go to
    `RewardModelFeedback` (aggregation, uwo_lambda, batch_size) and ``device``."""
    return RewardModelFeedback.from_path(path, **kwargs)
