"""The step loop of the recipes that train on fixed, pre-planned batches: offline preference and SFT.

Per step: the batch of this step (`rlxf.data.batch_for_step`: a seeded order of the fixed batches per epoch, so a
resumed run repeats it), the trainer's ``train_step``, the step's record (epoch, learning rate, the step's own
metrics, tokens/s when it reports ``tokens``), a held-out evaluation every ``eval_every`` steps, then
`runs.StepLoop.finish_step` (log, checkpoint when due, progress). What comes after the loop (final evaluation,
checkpoint, saving, summary) differs per recipe and stays in it.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from rlxf import runs
from rlxf.data import batch_for_step

__all__ = ["train_fixed_batches"]


def train_fixed_batches(trainer: Any, run_dir: runs.RunDir, *, heldout_record: Callable[[dict], dict[str, Any]],
                        describe_eval: Callable[[dict], str]) -> tuple[runs.StepLoop, list[float]]:
    """Run ``trainer`` (``config``, ``batches``, ``max_steps``, ``data.eval``, ``evaluate()``, ``train_step(batch)``)
    until its budget ends. ``heldout_record(evaluation)`` gives the metrics a held-out evaluation adds to its step's
    record; ``describe_eval`` prints the one before training. Returns the finished loop and each step's tokens/s."""
    c = trainer.config
    if not trainer.evals and trainer.data.eval:
        trainer.evaluate()
        print(f"held-out before training: {describe_eval(trainer.evals[-1])}")
    tokens_per_s: list[float] = []
    with runs.StepLoop(trainer, max_steps=trainer.max_steps, time_budget_s=c.time_budget_s,
                       max_nonfinite_steps=c.max_nonfinite_steps, progress=c.progress, label=c.objective,
                       run_dir=run_dir) as loop:
        while loop.running():
            t0 = time.perf_counter()
            metrics = trainer.train_step(batch_for_step(trainer.batches, trainer.step, c.seed))
            nonfinite = loop.count_step(metrics)
            step_time = time.perf_counter() - t0
            loop.add_time(step_time)
            record = {"step": trainer.step, "epoch": (trainer.step - 1) // len(trainer.batches),
                      "skipped_nonfinite": int(nonfinite), "lr": trainer.scheduler.get_last_lr()[0], **metrics,
                      "seconds_step": step_time, "train_seconds": trainer.train_clock}
            if "tokens" in metrics:
                record["tokens_per_s"] = metrics["tokens"] / step_time
                tokens_per_s.append(record["tokens_per_s"])
            if c.eval_every and trainer.step % c.eval_every == 0 and trainer.data.eval and not loop.stopping:
                record.update(heldout_record(trainer.evaluate()))
            loop.finish_step(record, save_every=c.save_every, keep_checkpoints=c.keep_checkpoints,
                             text=f"loss {record.get('loss', math.nan):.4f}")
            if loop.stopping:
                break
    return loop, tokens_per_s
