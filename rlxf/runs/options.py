"""The run fields every recipe shares, as one dataclass each recipe's config extends, and their resolution."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rlxf.config import ConfigError, check_config, option
from rlxf.runs.health import HealthMonitor, HealthThresholds
from rlxf.runs.trackers import TRACKERS, missing_trackers

__all__ = ["HealthOptions", "OptimizerOptions", "ResumableRunOptions", "RunOptions", "build_optimizer",
           "check_run_name", "clip_gradients", "resolve_device", "set_threads"]


@dataclass
class RunOptions:
    """Where a run writes and how it runs: shared by every recipe (``class Config(RunOptions)``)."""

    seed: int = option(42, "Seed of initialisation, data order and sampling.", ge=0)
    device: str = option("auto", "'auto' (cuda if available), 'cpu' or 'cuda[:i]'.")
    threads: int = option(0, "torch CPU threads (0 = torch default).", ge=0)
    output_dir: str = option("runs", "Parent directory of run directories.")
    run_name: str | None = option(
        None, "Run directory name inside output_dir, a plain name (default: the objective or recipe and a timestamp).")
    progress: bool = option(True, "Show progress while training.")
    plots: bool = option(True, "Write PNG plots of the run's curves to <run>/plots at the end.")
    report_to: list[str] = option(
        [], "Trackers that get every metrics line besides metrics.jsonl: tensorboard (event files in "
            "<run>/tensorboard; view with `tensorboard --logdir runs`), wandb or trackio (when installed; project "
            "$WANDB_PROJECT / $TRACKIO_PROJECT, default rlxf; the run named after its directory).", choices=TRACKERS)

    def __post_init__(self) -> None:
        check_config(self)  # ranges and finiteness, for configs made in Python as for those from the CLI
        missing = missing_trackers(list(self.report_to))
        if missing:
            raise ConfigError(f"bad value for 'report_to': {', '.join(missing)} is not installed (pip install "
                              f"{' '.join(missing)})")
        if self.run_name is not None:
            check_run_name(self.run_name)


@dataclass
class ResumableRunOptions(RunOptions):
    """:class:`RunOptions` plus checkpoints and resume, for loops that save their whole state."""

    # What may differ from the run's own config when resuming it (rlxf.runs.resolve_resume): budgets, bookkeeping
    # and display. Anything else would make the resumed run a different run than the one its checkpoints belong to.
    RESUME_CHANGEABLE: ClassVar[tuple[str, ...]] = (
        "resume", "checkpoint", "max_steps", "time_budget_s", "eval_every", "save_every", "keep_checkpoints",
        "max_nonfinite_steps", "progress", "plots", "threads", "report_to")

    resume: str | None = option(
        None, "Run directory to resume, with its own config; only budgets and bookkeeping ("
              + ", ".join(k for k in RESUME_CHANGEABLE if k not in ("resume", "checkpoint"))
              + "; epochs offline) may be changed alongside.")
    checkpoint: str | None = option(
        None, "With resume: the checkpoint to resume from, e.g. step-000050 (default: the latest complete one).")
    save_every: int = option(50, "Checkpoint every N steps (0 = only at the end).", ge=0)
    keep_checkpoints: int = option(
        2, "Keep the newest N checkpoints, deleting older ones as new ones are written (0 = keep all).", ge=0)
    max_nonfinite_steps: int = option(
        3, "Stop (with a checkpoint) after this many non-finite steps in a row.", ge=1)


@dataclass
class HealthOptions:
    """Training-health alarms (:mod:`rlxf.runs.health`) for the online loops: logged, shown, never stopping a run."""

    alarms: dict[str, Any] = option(
        {}, "Training-health alarm settings, alarms.<key>=value (null turns one off): window (10 steps), heldout_key "
            "(heldout_accuracy), heldout_drop (0.05: overoptimization = reward rising while the held-out metric "
            "fell this far below its best), length_factor (2.0) and truncated_frac (0.5) (length_explosion), "
            "entropy_factor (0.2: entropy_collapse below this times its start), zero_std_frac (0.8: "
            "zero_std_groups). The alarms on are logged each step (`alarms`), shown in the progress line and "
            "counted in summary.json.")

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)  # cooperative: listed first among a config's bases
        if parent is not None:
            parent()
        try:
            HealthThresholds.from_overrides(self.alarms)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad value for 'alarms': {exc}") from None

    def health_monitor(self) -> HealthMonitor:
        return HealthMonitor(HealthThresholds.from_overrides(self.alarms))


@dataclass
class OptimizerOptions:
    """AdamW with a linear warmup, and gradient-norm clipping: the optimisation fields every recipe shares."""

    lr: float = option(1e-5, "Learning rate (AdamW; constant after warmup).", gt=0)
    warmup_steps: int = option(0, "Linear warmup over this many optimizer updates (0 = none).", ge=0)
    weight_decay: float = option(0.0, "AdamW weight decay.", ge=0)
    max_grad_norm: float = option(
        1.0, "Clip the gradient norm to this (0 = no clipping; the norm is logged anyway).", ge=0)


def check_run_name(name: str) -> None:
    """A ConfigError unless ``name`` is a plain directory name (no path separators, not ``.``/``..``): a run
    directory is always ``output_dir/run_name``, never elsewhere."""
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
        raise ConfigError(f"bad value for 'run_name': {name!r} must be a plain directory name (no '/', not '.' or "
                          f"'..'); the run is written to output_dir/run_name (set output_dir for another place)")


def build_optimizer(params, options: OptimizerOptions, *, fused: bool = True):
    """``(AdamW, LambdaLR)`` for ``options``: betas (0.9, 0.999), eps 1e-8, the learning rate ramping linearly over
    ``warmup_steps`` updates, then constant. ``fused`` runs one kernel over all parameters (4x faster than the
    default ``foreach`` on CPU for a whole model; the reward model's small heads keep the default)."""
    optimizer = torch.optim.AdamW(params, lr=options.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=options.weight_decay, **({"fused": True} if fused else {}))
    warmup = options.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0
                                                  else 1.0)
    return optimizer, scheduler


def clip_gradients(params, max_norm: float) -> torch.Tensor:
    """The gradients' total norm, after clipping them to ``max_norm`` (0: measured, not clipped)."""
    return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))


def guarded_step(optimizer: torch.optim.Optimizer, scheduler, params, max_grad_norm: float) -> float:
    """One optimizer (and scheduler) step on the accumulated gradients, clipped to ``max_grad_norm``, unless their
    norm is not finite: then nothing moves. The gradients are cleared either way. Returns the norm before clipping
    (check it with ``math.isfinite``)."""
    grad_norm = float(clip_gradients(params, max_grad_norm))
    if math.isfinite(grad_norm):
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; any other name is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(threads: int) -> int:
    """Set torch's CPU threads when ``threads`` > 0; returns the count before, so a caller can restore it."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    return before
