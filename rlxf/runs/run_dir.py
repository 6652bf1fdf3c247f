"""A run directory: resolved config, metrics as JSONL, plots, checkpoints, final weights and a status file.

``status.json`` says ``running`` while a run is in progress and ``complete``, ``stopped``, ``interrupted`` or
``failed`` at the end, so a directory left by a crash never looks like a finished run. It carries the process id,
the host and a heartbeat (rewritten at every step), so :func:`run_state` tells a live run from one whose process
died without a word (``kill -9``, a power cut): ``running`` versus ``dead``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rlxf.config import ConfigError, UserError, build_config, config_to_yaml
from rlxf.runs.checkpoint import CheckpointError, complete_checkpoints, first_nonfinite_parameter, prune_checkpoints
from rlxf.runs.trackers import TensorBoardWriter, WandbLikeTracker, make_trackers


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.plots = self.path / "plots"
        self.checkpoints = self.path / "checkpoints"
        self.final = self.path / "final"
        self.trackers: list[TensorBoardWriter | WandbLikeTracker] = []

    def create(self, config_yaml: str, *, resume: bool = False, report_to: Sequence[str] = ()) -> RunDir:
        """Make the directory (refused if a run is there, unless resuming it), write ``config.yaml`` and status
        ``running``, and open the trackers named in ``report_to`` (e.g. ``tensorboard``)."""
        if not resume and _occupied(self.path):
            raise ConfigError(f"run directory {self.path} already exists; pick another run_name (or resume it)")
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.yaml").write_text(config_yaml)
        self.set_status("running")
        self.trackers = make_trackers(list(report_to), self.path)
        return self

    def close_trackers(self) -> None:
        """Close every tracker (a wandb/trackio run finishes); the run directory stays usable."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()

    def set_status(self, status: str, **extra: Any) -> None:
        """Write ``status.json`` (atomically): the status, the time, this process's pid and host, and ``extra``."""
        record = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid(),
                  "host": socket.gethostname(), "heartbeat": time.time(), **extra}
        tmp = self.path / "status.json.tmp"
        tmp.write_text(json.dumps(record, indent=1, default=_jsonable))
        tmp.replace(self.path / "status.json")

    def heartbeat(self, step: int) -> None:
        """Say the run is alive at ``step`` (the loop calls this once per step)."""
        self.set_status("running", step=step)

    def status(self) -> dict[str, Any] | None:
        p = self.path / "status.json"
        return json.loads(p.read_text()) if p.exists() else None

    def log(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl``, and the same record to every tracker (at its ``step``, else ``epoch``)."""
        for tracker in self.trackers:
            tracker.log(record, step=int(record.get("step", record.get("epoch", 0))))
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


def _occupied(path: Path) -> bool:
    """Whether a new run may not be written at ``path``: something is there (a file, or a non-empty directory)."""
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGTERM: ``kill``, a job scheduler); handled like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (Python's default would end the process on the spot,
    leaving ``status.json`` at ``running``); the previous handler is restored after. Only the main thread may
    set handlers, so elsewhere this does nothing."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def run_recording_status(run_dir: RunDir, loop: Callable[[], dict[str, Any]], *, step: Callable[[], int]) -> dict:
    """Run ``loop()``; on any exception mark the run ``failed`` (``interrupted`` on Ctrl-C or SIGTERM, with the
    step to resume from) at ``step()`` and re-raise, else write its summary to ``summary.json`` and return it."""
    try:
        with _sigterm_as_interrupt():
            summary = loop()
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        latest = complete_checkpoints(run_dir.checkpoints)
        run_dir.set_status("interrupted" if interrupted else "failed", step=step(),
                           error=f"{type(exc).__name__}: {exc}".rstrip(": "),
                           resume_from=latest[-1].name if latest else None)
        if interrupted:  # the command line prints it as its one line (rlxf.cli)
            exc.rlxf_message = f"interrupted at step {step()}; " + (
                f"resume with resume={run_dir.path} (from {latest[-1].name})" if latest
                else "no checkpoint was written yet")
        raise
    finally:
        run_dir.close_trackers()
    (run_dir.path / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def run_state(path: str | Path) -> dict[str, Any]:
    """``status.json`` of the run at ``path`` with ``state``: its status, except that a ``running`` run whose
    process is gone (same host, pid not alive) is ``dead`` (killed without a word: ``kill -9``, out of memory).
    A run on another host cannot be probed and keeps ``running``; its ``heartbeat`` says when it last stepped."""
    status = RunDir(path).status()
    if status is None:
        return {"state": "unknown", "status": None}
    state = status.get("status")
    if state == "running" and status.get("host") == socket.gethostname() and not _alive(status.get("pid")):
        state = "dead"
    return {**status, "state": state}


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def mark_stopped(run_dir: RunDir, *, step: int, reason: str, command: str) -> None:
    """Record a run that stopped because it could not go on (its checkpoint is already written), saying why, and
    tell the user how to resume it with ``rlxf train <command>`` once the cause is fixed."""
    run_dir.set_status("stopped", step=step, reason=reason)
    print(f"stopped at step {step}: {reason}; resume with `rlxf train {command} resume={run_dir.path}` after fixing "
          f"the cause", file=sys.stderr)


def nonfinite_reason(max_nonfinite_steps: int) -> str:
    """Why a run stopped after ``max_nonfinite_steps`` skipped non-finite steps, as :func:`mark_stopped` says it."""
    return f"{max_nonfinite_steps} steps in a row had a non-finite loss or gradient"


def progress_bar(enabled: bool):
    """A rich progress bar with a description, a bar, a free-text ``info`` field and the elapsed time; a no-op
    context (yielding None) when disabled."""
    if not enabled:
        return contextlib.nullcontext(None)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), transient=False, refresh_per_second=2)


def read_run_config(cls: type, run_dir: str | Path) -> Any:
    """The config a run was started with (its ``config.yaml``), as an instance of ``cls``."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"cannot resume {run_dir}: no config.yaml there (is it a run directory?)")
    return build_config(cls, saved)


def resume_config(cls: type, run_dir: str | Path, **changes: Any) -> Any:
    """The config to resume the run at ``run_dir`` with: its own, with ``changes`` (budgets and bookkeeping only,
    ``cls.RESUME_CHANGEABLE``) applied. For Python callers; ``rlxf train X resume=DIR key=value`` does the same."""
    return resolve_resume(build_config(cls, Path(run_dir) / "config.yaml", {**changes, "resume": str(run_dir)}))


def resolve_resume(config: Any) -> Any:
    """``config`` checked against the run it resumes: every field must equal the run's own ``config.yaml``
    except those in ``RESUME_CHANGEABLE`` (budgets, bookkeeping, display); anything else is a one-line
    ConfigError naming the keys, since the checkpoints belong to the run as it was configured. Without
    ``resume``, ``config`` as it is."""
    if not config.resume:
        return config
    saved = read_run_config(type(config), config.resume)
    changeable = set(type(config).RESUME_CHANGEABLE)
    changed = [f.name for f in dataclasses.fields(config)
               if f.name not in changeable and getattr(config, f.name) != getattr(saved, f.name)]
    if changed:
        shown = ", ".join(f"{k}={getattr(config, k)!r} (the run has {getattr(saved, k)!r})" for k in changed[:3])
        raise ConfigError(f"cannot resume {config.resume} with {shown}{' ...' if len(changed) > 3 else ''}: only "
                          f"{', '.join(sorted(changeable - {'resume', 'checkpoint'}))} may change on resume; start a "
                          f"new run to change anything else")
    return config


def run_config_yaml(config: Any, *, recipe: str) -> str:
    """The ``config.yaml`` of a run: its config without ``resume``/``checkpoint`` (how a run was continued is not
    part of it, and the file stays a preset that starts the same run afresh)."""
    names = {f.name for f in dataclasses.fields(config)}
    return config_to_yaml(dataclasses.replace(config, **{k: None for k in ("resume", "checkpoint") if k in names}),
                          recipe=recipe)


def check_new_run_dir(config: Any, default_name: str) -> Path:
    """The directory a new run will write (``output_dir/(run_name or default_name)``), or a one-line ConfigError
    if a run is already there; checked before a model is loaded."""
    path = Path(config.output_dir) / (config.run_name or default_name)
    if _occupied(path):
        raise ConfigError(f"run directory {path} already exists; pick another run_name, or continue that run "
                          f"with resume={path}")
    return path


def open_run_dir(trainer: Any, config_yaml: str, *, default_name: str) -> RunDir:
    """The run directory of ``trainer.config``: on resume, the trainer is restored from the checkpoint named by
    ``checkpoint`` (default: the latest complete one) and metrics after it are dropped; else a new directory
    ``output_dir/(run_name or default_name)``. A run still alive in another process is not resumed, and a
    checkpoint that cannot be read is named with the previous complete one to resume from instead."""
    c = trainer.config
    if not c.resume:
        return RunDir(check_new_run_dir(c, default_name)).create(config_yaml, report_to=c.report_to)
    run_dir = RunDir(c.resume)
    state = run_state(run_dir.path)
    if state["state"] == "running" and state.get("pid") != os.getpid():
        raise ConfigError(f"cannot resume {run_dir.path}: it is still running (pid {state['pid']} on "
                          f"{state['host']}); stop it first")
    checkpoint = _resume_checkpoint(run_dir, c.checkpoint)
    try:
        trainer.restore(checkpoint)
    except UserError:
        raise
    except Exception as exc:  # a truncated or corrupt file: safetensors, JSON, a missing key
        earlier = [p for p in complete_checkpoints(run_dir.checkpoints) if p.name < checkpoint.name]
        offer = (f"resume from the previous complete one with resume={run_dir.path} checkpoint={earlier[-1].name}"
                 if earlier else "there is no earlier checkpoint")
        what = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise CheckpointError(f"checkpoint {checkpoint} cannot be read ({what}); {offer}") from None
    run_dir.create(config_yaml, resume=True, report_to=c.report_to)
    run_dir.truncate_metrics(trainer.step)
    print(f"resumed {run_dir.path} at step {trainer.step} ({trainer.train_clock:.0f} s trained, {checkpoint.name})")
    return run_dir


def start_run(config: Any, make_trainer: Callable[[Any], Any], *, recipe: str) -> tuple[Any, RunDir]:
    """The start every step-loop recipe shares: resolve ``resume=`` (the run's own config), refuse an occupied
    new run directory before any model loads, build the trainer (it validates the data and loads the model:
    nothing is on disk yet), then create the run directory or restore the trainer from its checkpoint. The
    default run name is ``<objective>-<date>-<time>``."""
    config = resolve_resume(config)
    name = f"{config.objective}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not config.resume:
        check_new_run_dir(config, name)
    trainer = make_trainer(config)
    run_dir = open_run_dir(trainer, run_config_yaml(trainer.config, recipe=recipe), default_name=name)
    print(f"run directory: {run_dir.path}")
    return trainer, run_dir


def _resume_checkpoint(run_dir: RunDir, name: str | None) -> Path:
    complete = complete_checkpoints(run_dir.checkpoints)
    if name is None:
        if not complete:
            raise CheckpointError(f"cannot resume {run_dir.path}: it has no complete checkpoint")
        return complete[-1]
    path = run_dir.checkpoints / name
    if path not in complete:
        have = ", ".join(p.name for p in complete) or "none"
        raise CheckpointError(f"cannot resume {run_dir.path} from checkpoint={name}: no complete checkpoint of that "
                              f"name (complete ones: {have})")
    return path


def save_run_checkpoint(trainer: Any, run_dir: RunDir, *, keep: int) -> Path:
    """``trainer.save(run_dir)``, once its parameters are checked finite, then the checkpoints beyond the newest
    ``keep`` deleted (0 keeps all). Non-finite parameters are never written: a CheckpointError names the first
    one and the last good checkpoint."""
    bad = first_nonfinite_parameter(trainer.model)
    if bad is not None:
        good = complete_checkpoints(run_dir.checkpoints)
        raise CheckpointError(f"the parameters are not finite after step {trainer.step} ({bad} has NaN or inf), so "
                              f"nothing was saved; " + (f"the last good checkpoint is {good[-1]} (resume from it "
                                                        f"with a smaller lr)" if good else "no checkpoint was written"))
    path = trainer.save(run_dir)
    prune_checkpoints(run_dir.checkpoints, keep)
    return path
