"""The run fields every recipe shares, as one dataclass each recipe's config extends, and their resolution."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlxf.config import option

__all__ = ["OptimizerOptions", "ResumableRunOptions", "RunOptions", "build_optimizer", "clip_gradients",
           "resolve_device", "set_threads"]


@dataclass
class RunOptions:
    """Where a run writes and how it runs: shared by every recipe (``class Config(RunOptions)``)."""

    seed: int = option(42, "Seed of initialisation, data order and sampling.")
    device: str = option("auto", "'auto' (cuda if available), 'cpu' or 'cuda[:i]'.")
    threads: int = option(0, "torch CPU threads (0 = torch default).")
    output_dir: str = option("runs", "Parent directory of run directories.")
    run_name: str | None = option(None, "Run directory name (default: the objective or recipe and a timestamp).")
    progress: bool = option(True, "Show progress while training.")
    plots: bool = option(True, "Write PNG plots of the run's curves to <run>/plots at the end.")


@dataclass
class ResumableRunOptions(RunOptions):
    """:class:`RunOptions` plus checkpoints and resume, for loops that save their whole state."""

    resume: str | None = option(None, "Run directory to resume from its latest complete checkpoint.")
    save_every: int = option(50, "Checkpoint every N steps (0 = only at the end).")
    max_nonfinite_steps: int = option(3, "Stop (with a checkpoint) after this many non-finite steps in a row.")


@dataclass
class OptimizerOptions:
    """AdamW with a linear warmup, and gradient-norm clipping: the optimisation fields every recipe shares."""

    lr: float = option(1e-5, "Learning rate (AdamW; constant after warmup).")
    warmup_steps: int = option(0, "Linear warmup over this many optimizer updates (0 = none).")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Clip the gradient norm to this (0 = no clipping; the norm is logged anyway).")


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
