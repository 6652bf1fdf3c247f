"""What every run shares: its options (``RunOptions``), its directory (config, metrics, plots, checkpoints, final
weights, status) and checkpoints that resume exactly."""
from rlxf.runs.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlxf.runs.options import (
    OptimizerOptions,
    ResumableRunOptions,
    RunOptions,
    build_optimizer,
    clip_gradients,
    resolve_device,
    set_threads,
)
from rlxf.runs.run_dir import (
    RunDir,
    mark_nonfinite_stop,
    open_run_dir,
    progress_bar,
    resolve_resume,
    run_recording_status,
)
from rlxf.runs.steps import StepLoop

__all__ = [
    "OptimizerOptions", "build_optimizer", "clip_gradients",
    "ResumableRunOptions", "RunDir", "RunOptions", "latest_checkpoint", "load_checkpoint", "mark_nonfinite_stop",
    "open_run_dir", "progress_bar", "resolve_device", "resolve_resume", "run_recording_status", "save_checkpoint",
    "set_threads", "StepLoop",
]
