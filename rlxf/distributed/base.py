"""What an executor drives: the stages of one online step, and what the step produced."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from rlxf.types import Rollout, Scores

__all__ = ["OnlineStages", "StepResult"]


@dataclass(frozen=True)
class OnlineStages:
    """One step of an online loop as plain callables over the shared records, bound by the recipe to its models,
    feedback and config. An executor calls them in this order, wherever it runs them::

        rollout = sample(rows)                        # the generator: token ids + sampler log-probs
        scores = score(rows, rollout)                 # the feedback: one value per completion (+ info)
        advantages = advantages(scores, rollout)      # (N,) or (N, T)
        metrics = train_on(rollout, scores, advantages)   # the learner (and critic): forward/backward, update(s)
        publish(version)                              # the learner's new weights to the generator
    """

    sample: Callable[[list[dict[str, Any]]], Rollout]
    score: Callable[[list[dict[str, Any]], Rollout], Scores]
    advantages: Callable[[Scores, Rollout], Tensor]
    train_on: Callable[[Rollout, Scores, Tensor], dict[str, float]]
    publish: Callable[[int], None]


@dataclass
class StepResult:
    """What one step produced; ``seconds`` has ``generation``, ``feedback`` and ``training`` (advantages, update
    and publishing the weights)."""

    rollout: Rollout
    scores: Scores
    advantages: Tensor
    metrics: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
