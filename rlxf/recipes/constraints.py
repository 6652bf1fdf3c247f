"""Constrained RLHF in the online RL recipe: a score stage that trains on the Lagrangian reward.

Moskovitz et al. 2024 (see ``rlxf.ops.constraints`` and docs/algorithms/constrained_rlhf.md). The run's
``feedback`` is the task reward r_0; each entry of ``constraints`` names a component feedback r_i and its bound,
``"SPEC <= theta"`` (keep the component at most theta: a reward model past its proxy point) or
``"SPEC >= theta"`` (at least theta). Each step:

1. r_0 and every r_i score the same decoded completions;
2. the reward trained on is r_0 - sum_i lambda_i s_i (r_i - theta_i), s_i = +1 for <= and -1 for >=
   (``lagrangian_rewards`` on the sign-adjusted components), with the multipliers as they were before the step;
3. J_i = the batch mean of r_i over the completions it scored (Monte Carlo, as the paper), and the multipliers take
   one projected step lambda_i <- [lambda_i + lr s_i (J_i - theta_i)]_+ (``update_multipliers``).

A completion that any source fails to score gets no reward (recorded non-finite, never trained on). The
multipliers are part of the trainer's checkpointed state, so a resumed run continues them exactly.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlxf.config import ConfigError
from rlxf.feedback import FeedbackError, Scores, finite_mask, make_feedback_from_spec
from rlxf.ops.constraints import lagrangian_rewards, update_multipliers

__all__ = ["Constraint", "ConstrainedScore", "parse_constraints"]

_BOUND = re.compile(r"^(?P<spec>.+?)\s*(?P<op><=|>=)\s*(?P<theta>[^<>=\s]+)\s*$", re.DOTALL)


@dataclass(frozen=True)
class Constraint:
    """One component: its name (in metrics), feedback spec, direction (+1 for <=, -1 for >=) and threshold."""

    name: str
    spec: str
    sign: float
    threshold: float


def parse_constraints(constraints: dict[str, str]) -> list[Constraint]:
    """``{name: "SPEC <= theta" | "SPEC >= theta"}`` as Constraints, in the dict's order; a ConfigError names a bad
    entry."""
    out = []
    for name, text in constraints.items():
        if not re.fullmatch(r"[A-Za-z_][\w-]*", str(name)):
            raise ConfigError(f"bad value for 'constraints': the name {name!r} must be a plain identifier")
        match = _BOUND.match(text) if isinstance(text, str) else None
        if match is None:
            raise ConfigError(f"bad value for 'constraints.{name}': {text!r} must read 'SPEC <= THRESHOLD' or "
                              f"'SPEC >= THRESHOLD', e.g. 'reward_model:runs/rm/final <= 1.5'")
        try:
            threshold = float(match["theta"])
        except ValueError:
            threshold = math.nan
        if not math.isfinite(threshold):
            raise ConfigError(f"bad value for 'constraints.{name}': the threshold {match['theta']!r} is not a finite "
                              f"number")
        out.append(Constraint(name, match["spec"].strip(), 1.0 if match["op"] == "<=" else -1.0, threshold))
    return out


class ConstrainedScore:
    """The score stage of a constrained run: ``(rows, rollout) -> Scores`` of the Lagrangian reward, stepping the
    multipliers once per call. ``score(rows, rollout, feedback=...)`` is the recipe's plain score stage."""

    def __init__(self, constraints: list[Constraint], *, task: Any, lr: float,
                 score: Callable[..., Scores]):
        self.constraints, self.task, self.lr, self._score = constraints, task, lr, score
        try:
            self.sources = [make_feedback_from_spec(c.spec) for c in constraints]
        except FeedbackError as exc:
            raise ConfigError(f"bad value for 'constraints': {exc}") from None
        self.signs = torch.tensor([c.sign for c in constraints])
        self.thresholds = torch.tensor([c.threshold for c in constraints])
        self.multipliers = torch.zeros(len(constraints))
        self.metrics: dict[str, float] = {}  # the last step's, read by the recipe's update stage

    def __call__(self, rows: list[dict[str, Any]], rollout: Any) -> Scores:
        task = self._score(rows, rollout, feedback=self.task)
        parts = [self._score(rows, rollout, feedback=source) for source in self.sources]
        finite = torch.stack([finite_mask(task), *(finite_mask(p) for p in parts)]).all(dim=0)
        components = torch.stack([p.values.float() for p in parts], dim=1)  # (B, K)
        rewards = lagrangian_rewards(components * self.signs, self.multipliers, self.thresholds * self.signs,
                                     task_rewards=task.values.float())
        estimates = torch.stack([p.values.float()[finite_mask(p)].mean() if bool(finite_mask(p).any())
                                 else torch.tensor(math.nan) for p in parts])
        before = self.multipliers
        if bool(torch.isfinite(estimates).all()):  # a step in which a source scored nothing leaves them as they are
            self.multipliers = update_multipliers(before, estimates * self.signs, self.thresholds * self.signs,
                                                  lr=self.lr)
        task_values = task.values.float()[finite_mask(task)]
        self.metrics = {"task_reward_mean": float(task_values.mean()) if task_values.numel() else math.nan}
        for c, estimate, multiplier in zip(self.constraints, estimates.tolist(), self.multipliers.tolist(),
                                           strict=True):
            self.metrics[f"constraint_{c.name}"] = estimate
            self.metrics[f"multiplier_{c.name}"] = multiplier
        info = dict(task.info)
        for c, p in zip(self.constraints, parts, strict=True):
            values, ok = p.values.tolist(), finite_mask(p).tolist()
            info[f"{c.name}.value"] = [v if good else math.nan for v, good in zip(values, ok, strict=True)]
        info["nonfinite"] = (~finite).tolist()
        return Scores(torch.where(finite, rewards, 0.0), info)

    def state(self) -> list[float]:
        return self.multipliers.tolist()

    def load_state(self, multipliers: list[float]) -> None:
        if len(multipliers) != len(self.constraints):
            raise ValueError(f"the checkpoint has {len(multipliers)} multipliers, this run {len(self.constraints)}")
        self.multipliers = torch.tensor(multipliers, dtype=torch.float32)
