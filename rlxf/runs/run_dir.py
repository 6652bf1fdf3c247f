"""A run directory: resolved config, metrics as JSONL, plots, checkpoints, final weights and a status file.

``status.json`` says ``running`` while a run is in progress and ``complete``, ``stopped`` or ``failed`` at
the end, so a directory left by a crash never looks like a finished run.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rlxf.config import config_from_yaml
from rlxf.runs.checkpoint import latest_checkpoint


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.plots = self.path / "plots"
        self.checkpoints = self.path / "checkpoints"
        self.final = self.path / "final"

    def create(self, config_yaml: str, *, resume: bool = False) -> RunDir:
        if self.path.exists() and not resume and any(self.path.iterdir()):
            raise FileExistsError(f"run directory {self.path} already exists; pick another run_name or resume")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.yaml").write_text(config_yaml)
        self.set_status("running")
        return self

    def set_status(self, status: str, **extra: Any) -> None:
        record = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
        tmp = self.path / "status.json.tmp"
        tmp.write_text(json.dumps(record, indent=1, default=_jsonable))
        tmp.replace(self.path / "status.json")

    def status(self) -> dict[str, Any] | None:
        p = self.path / "status.json"
        return json.loads(p.read_text()) if p.exists() else None

    def log(self, record: dict[str, Any]) -> None:
        # json.dumps writes float NaN/inf as bare NaN/Infinity (not JSON) without consulting `default`.
        record = {k: _jsonable(v) for k, v in record.items()}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, after_step: int) -> None:
        """Drop records of steps beyond a checkpoint before resuming, so every step is logged once."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= after_step]
        self.metrics_path.write_text("".join(json.dumps(r, default=_jsonable) + "\n" for r in kept))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def run_recording_status(run_dir: RunDir, loop: Callable[[], dict[str, Any]], *, step: Callable[[], int]) -> dict:
    """Run ``loop()``; on any exception mark the run ``failed`` (``interrupted`` on Ctrl-C) at ``step()`` and
    re-raise, else write its summary to ``summary.json`` and return it."""
    try:
        summary = loop()
    except BaseException as exc:
        run_dir.set_status("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                           step=step(), error=f"{type(exc).__name__}: {exc}")
        raise
    (run_dir.path / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def mark_nonfinite_stop(run_dir: RunDir, *, step: int, max_nonfinite_steps: int, command: str) -> None:
    """Record a run stopped after ``max_nonfinite_steps`` non-finite steps in a row (its checkpoint is already
    written) and tell the user how to resume it with ``rlxf train <command>``."""
    run_dir.set_status("stopped", step=step, reason=f"{max_nonfinite_steps} non-finite steps in a row")
    print(f"stopped: {max_nonfinite_steps} steps in a row had a non-finite loss or gradient; resume with "
          f"`rlxf train {command} resume={run_dir.path}` after fixing the cause", file=sys.stderr)


def progress_bar(enabled: bool):
    """A rich progress bar with a description, a bar, a free-text ``info`` field and the elapsed time; a no-op
    context (yielding None) when disabled."""
    if not enabled:
        return contextlib.nullcontext(None)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), transient=False, refresh_per_second=2)


def resolve_resume(config: Any, *, extendable: tuple[str, ...]) -> Any:
    """On ``resume=DIR`` the run's saved config wins, except the fields in ``extendable`` (budgets, display),
    which the user may change; without resume, ``config`` as it is."""
    if not config.resume:
        return config
    saved_path = Path(config.resume) / "config.yaml"
    if not saved_path.exists():
        raise FileNotFoundError(f"cannot resume: {saved_path} not found")
    saved = config_from_yaml(type(config), saved_path)
    return replace(saved, resume=config.resume, **{name: getattr(config, name) for name in extendable})


def open_run_dir(trainer: Any, config_yaml: str, *, default_name: str) -> RunDir:
    """The run directory of ``trainer.config``: on resume, the trainer is restored from the latest complete
    checkpoint and metrics after it are dropped; else a new directory ``output_dir/(run_name or default_name)``."""
    c = trainer.config
    if not c.resume:
        return RunDir(Path(c.output_dir) / (c.run_name or default_name)).create(config_yaml)
    run_dir = RunDir(c.resume)
    checkpoint = latest_checkpoint(run_dir.path)
    if checkpoint is None:
        raise FileNotFoundError(f"cannot resume: {run_dir.path} has no complete checkpoint")
    trainer.restore(checkpoint)
    run_dir.create(config_yaml, resume=True)
    run_dir.truncate_metrics(trainer.step)
    print(f"resumed {run_dir.path} at step {trainer.step} ({trainer.train_clock:.0f} s trained)")
    return run_dir
