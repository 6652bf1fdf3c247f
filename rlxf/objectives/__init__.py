"""Losses: pure functions of log-probs, advantages and masks returning `LossOutput(loss, metrics)`.

Imports only `rlxf.ops` and torch. `OBJECTIVES` / `get_objective(name)` map config names to the functions.
"""

from rlxf.objectives.base import LossOutput
from rlxf.objectives.policy_gradient import grpo_loss, ppo_clip_loss, reinforce_loss, rloo_loss
from rlxf.objectives.registry import OBJECTIVES, get_objective, list_objectives, register

__all__ = [
    "OBJECTIVES",
    "LossOutput",
    "get_objective",
    "grpo_loss",
    "list_objectives",
    "ppo_clip_loss",
    "register",
    "reinforce_loss",
    "rloo_loss",
]
