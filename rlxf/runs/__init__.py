"""What every run shares: its options (``RunOptions``), its directory (config, metrics, plots, checkpoints, final
weights, status) and checkpoints that resume exactly."""
from rlxf.runs.checkpoint import (
    CheckpointError,
    complete_checkpoints,
    first_nonfinite_parameter,
    latest_checkpoint,
    load_checkpoint,
    load_trained_module,
    prune_checkpoints,
    save_checkpoint,
    save_trained_module,
)
from rlxf.runs.options import (
    HealthOptions,
    OptimizerOptions,
    ResumableRunOptions,
    RunOptions,
    build_optimizer,
    check_run_name,
    clip_gradients,
    guarded_step,
    resolve_device,
    set_threads,
)
from rlxf.runs.run_dir import (
    RunDir,
    Terminated,
    check_new_run_dir,
    mark_stopped,
    nonfinite_reason,
    open_run_dir,
    progress_bar,
    read_run_config,
    resolve_resume,
    resume_config,
    run_config_yaml,
    run_recording_status,
    run_state,
    save_run_checkpoint,
    start_run,
)
from rlxf.runs.steps import StepLoop

__all__ = [
    "CheckpointError", "HealthOptions", "OptimizerOptions", "ResumableRunOptions", "RunDir", "RunOptions", "StepLoop",
    "Terminated",
    "build_optimizer", "check_new_run_dir", "check_run_name", "clip_gradients", "complete_checkpoints",
    "first_nonfinite_parameter", "latest_checkpoint", "load_checkpoint", "load_trained_module", "mark_stopped",
    "nonfinite_reason", "open_run_dir", "progress_bar", "prune_checkpoints", "read_run_config", "resolve_device",
    "resolve_resume", "resume_config", "run_config_yaml", "run_recording_status", "run_state", "save_checkpoint",
    "save_run_checkpoint", "save_trained_module", "set_threads", "start_run", "guarded_step",
]
