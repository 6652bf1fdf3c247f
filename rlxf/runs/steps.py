"""The bookkeeping every training loop shares around its steps: the budget (steps and training seconds), the run
of non-finite steps that stops a run, the heartbeat, the end of a step (log, checkpoint) and the progress bar.

A loop keeps its own order of work within a step; :class:`StepLoop` counts and closes each one::

    with StepLoop(trainer, max_steps=..., time_budget_s=..., max_nonfinite_steps=..., progress=..., label=...,
                  run_dir=...) as loop:
        while loop.running():                   # False at max_steps, or once the training clock passed the budget
            metrics = ... one step ...
            nonfinite = loop.count_step(metrics)   # advances trainer.step and the non-finite counters, heartbeat
            loop.add_time(seconds)
            ... evaluate ...
            loop.finish_step(record, save_every=..., keep_checkpoints=..., text=f"loss {loss:.4f}")
            if loop.stopping:                   # max_nonfinite_steps in a row ("nonfinite"), or loop.stop(reason)
                break

The trainer holds the counters (``step``, ``train_clock``, ``nonfinite_in_row``, ``nonfinite_total``, ``evals``)
because they are checkpointed with it.
"""
from __future__ import annotations

from typing import Any

from rlxf.runs.health import HealthMonitor
from rlxf.runs.run_dir import progress_bar, save_run_checkpoint

__all__ = ["StepLoop"]


class StepLoop:
    """Counts the steps of ``trainer``'s loop against its budget; ``stop_reason`` says why it ended."""

    def __init__(self, trainer: Any, *, max_steps: int, time_budget_s: float, max_nonfinite_steps: int,
                 progress: bool, label: str, run_dir: Any, health: HealthMonitor | None = None):
        self.trainer = trainer
        self.max_steps = max_steps
        self.budget = time_budget_s if time_budget_s > 0 else None
        self.max_nonfinite_steps = max_nonfinite_steps
        self.run_dir = run_dir  # the RunDir: metrics, checkpoints and a heartbeat at every step
        self.stop_reason = "max_steps"
        self.stopping = False
        self.step_seconds: list[float] = []
        self._bar_context = progress_bar(progress)
        self._label = label
        # Training-health alarms: rebuilt from the records already logged, so a resumed run raises the same ones.
        self.health = health.replay(run_dir.read_metrics()) if health is not None else None

    def __enter__(self) -> StepLoop:
        self.bar = self._bar_context.__enter__()
        total = self.budget or self.max_steps
        self.task = self.bar.add_task(self._label, total=total, info="") if self.bar else None
        return self

    def __exit__(self, *exc) -> None:
        self._bar_context.__exit__(*exc)

    def running(self) -> bool:
        """Whether to run another step."""
        if self.trainer.step >= self.max_steps:
            return False
        if self.budget is not None and self.trainer.train_clock >= self.budget:
            self.stop_reason = "time_budget"
            return False
        return True

    def count_step(self, metrics: dict[str, float]) -> bool:
        """One step done: pops ``metrics["nonfinite"]`` and updates the trainer's counters; whether it was
        non-finite (skipped)."""
        t = self.trainer
        t.step += 1
        nonfinite = metrics.pop("nonfinite", 0.0) > 0
        t.nonfinite_in_row = t.nonfinite_in_row + 1 if nonfinite else 0
        t.nonfinite_total += int(nonfinite)
        if t.nonfinite_in_row >= self.max_nonfinite_steps:
            self.stop("nonfinite")
        self.run_dir.heartbeat(t.step)
        return nonfinite

    def stop(self, reason: str) -> None:
        """End the run after this step (with a checkpoint): ``stopping`` becomes True, ``stop_reason`` is ``reason``."""
        self.stop_reason = reason
        self.stopping = True

    def add_time(self, seconds: float) -> None:
        self.trainer.train_clock += seconds
        self.step_seconds.append(seconds)

    def finish_step(self, record: dict[str, Any], *, save_every: int, keep_checkpoints: int, text: str) -> None:
        """The end of a step: log ``record`` to the run's metrics, checkpoint when due (every ``save_every`` steps,
        and when stopping), then :meth:`show` ``text``. The checkpoint comes after the step's clock, evaluation
        and log line, so a resume counts all three, and a crash between log and checkpoint repeats a step rather
        than losing one. With a health monitor, ``record["alarms"]`` lists the alarms on after this step and the
        progress line names them."""
        if self.health is not None:
            record["alarms"] = list(self.health.update(record))
            if record["alarms"]:
                text = f"{text} ALARM {','.join(record['alarms'])}"
        self.run_dir.log(record)
        if (save_every and self.trainer.step % save_every == 0) or self.stopping:
            save_run_checkpoint(self.trainer, self.run_dir, keep=keep_checkpoints)
        self.show(text)

    def show(self, text: str) -> None:
        """Advance the bar (by training seconds under a budget, else by steps) with ``text`` and the latest held-out
        accuracy."""
        if not self.bar:
            return
        t = self.trainer
        done = t.train_clock if self.budget else t.step
        accuracy = f" held-out {100 * t.evals[-1]['accuracy']:.1f}%" if t.evals else ""
        self.bar.update(self.task, completed=min(done, self.budget or self.max_steps),
                        info=f"step {t.step} {text}{accuracy}")
