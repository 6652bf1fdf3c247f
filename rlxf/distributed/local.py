"""The single-process executor: every stage in this process, one after another (the default)."""
from __future__ import annotations

import time
from typing import Any

from rlxf.distributed.base import OnlineStages, StepResult

__all__ = ["LocalExecutor"]


class LocalExecutor:
    """Runs an online step's stages in order in this process and times each."""

    def step(self, stages: OnlineStages, rows: list[dict[str, Any]], *, version: int) -> StepResult:
        """One step on ``rows``; the weights published after the update carry ``version``."""
        t0 = time.perf_counter()
        rollout = stages.sample(rows)
        t1 = time.perf_counter()
        scores = stages.score(rows, rollout)
        t2 = time.perf_counter()
        advantages = stages.advantages(scores, rollout)
        metrics = stages.train_on(rollout, scores, advantages)
        stages.publish(version)
        t3 = time.perf_counter()
        return StepResult(rollout, scores, advantages, metrics,
                          {"generation": t1 - t0, "feedback": t2 - t1, "training": t3 - t2})
