"""Checkpoints that resume exactly: model, optimizer, scheduler, RNG states and the data position.

Everything is safetensors or JSON (no pickle): a checkpoint directory holds

* ``model/``: ``save_pretrained`` output (safetensors + tokenizer), loadable by ``AutoModelForCausalLM``;
* ``optimizer.safetensors``: every optimizer state tensor, keyed ``state.<param index>.<name>``;
* ``rng.safetensors``: the torch CPU RNG, CUDA RNG (if any) and the recipe's sampling ``torch.Generator``;
* ``trainer_state.json``: step, data position, clocks, optimizer param groups, scheduler state, python and
  numpy RNG states and the recipe's own counters.

A checkpoint is written to ``<name>.tmp`` and renamed, so a crash while saving never leaves a checkpoint
that looks complete but is not. A run keeps its newest few (:func:`prune_checkpoints`), so that a checkpoint
damaged later (a full disk, a copy cut short) still leaves an earlier one to resume from.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from rlxf.config import UserError
from rlxf.models.loading import save_policy


class CheckpointError(UserError):
    """A checkpoint cannot be resumed from (missing, unreadable) or must not be written (non-finite weights)."""


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{index}.{name}"] = tensor.detach().cpu().contiguous()
    return tensors, state["param_groups"]


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list):
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    # Saved tensors come back contiguous, but a parameter may be a transposed view (rlxf.models.layout).
    # Fused AdamW walks param, grad and moments as flat buffers, so mismatched strides would pair each
    # element with another element's moments: give every moment its parameter's strides.
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _numpy_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    scheduler,
    sampling_rng: torch.Generator,
    trainer_state: dict[str, Any],
    extras: Callable[[Path], None] | None = None,
) -> Path:
    """Write a complete checkpoint directory at ``path`` (atomically replaced if it exists). ``extras(directory)``
    writes a recipe's other trained state (e.g. PPO's critic, :func:`save_trained_module`) into the directory
    before it is renamed into place, so that it is part of the same atomic checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_policy(model, tokenizer, tmp / "model")
    tensors, groups = _optimizer_tensors(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    rng = {"torch": torch.get_rng_state(), "sampling": sampling_rng.get_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda.{i}"] = s
    save_file(rng, str(tmp / "rng.safetensors"))
    state = {
        **trainer_state,
        "optimizer_param_groups": groups,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "python_rng": _python_state(),
        "numpy_rng": _numpy_state(),
    }
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    if extras is not None:
        extras(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model,
    optimizer: torch.optim.Optimizer,
    scheduler,
    sampling_rng: torch.Generator,
) -> dict[str, Any]:
    """Restore everything :func:`save_checkpoint` wrote into live objects; returns the trainer state."""
    path = Path(path)
    state = json.loads((path / "trainer_state.json").read_text())
    weights = load_file(str(path / "model" / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied LM heads are saved once; anything else missing means the checkpoint does not fit the model.
    tied = {k for k in missing if k.endswith("lm_head.weight") and model.config.tie_word_embeddings}
    if set(missing) - tied or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: missing={missing} unexpected={unexpected}")
    _restore_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), state["optimizer_param_groups"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    sampling_rng.set_state(rng["sampling"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy_rng"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return state


def save_trained_module(directory: Path, name: str, *, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler) -> None:
    """A second trained module of a run beside the policy (PPO's critic): ``<name>.safetensors`` (its weights),
    ``<name>.optimizer.safetensors`` and ``<name>.optimizer.json`` (param groups and scheduler state)."""
    save_model(module, str(directory / f"{name}.safetensors"))  # handles tied (shared) tensors
    tensors, groups = _optimizer_tensors(optimizer)
    save_file(tensors, str(directory / f"{name}.optimizer.safetensors"))
    (directory / f"{name}.optimizer.json").write_text(json.dumps(
        {"param_groups": groups, "scheduler": scheduler.state_dict() if scheduler is not None else None}))


def load_trained_module(directory: Path, name: str, *, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler) -> None:
    """Restore what :func:`save_trained_module` wrote into live objects."""
    load_model(module, str(directory / f"{name}.safetensors"))
    state = json.loads((directory / f"{name}.optimizer.json").read_text())
    _restore_optimizer(optimizer, load_file(str(directory / f"{name}.optimizer.safetensors")), state["param_groups"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])


def complete_checkpoints(root: str | os.PathLike) -> list[Path]:
    """The complete ``step-*`` checkpoint directories under ``root`` (a run's ``checkpoints/``), oldest first."""
    steps = sorted(
        (int(p.name.split("-")[1]), p) for p in Path(root).glob("step-*")
        if not p.name.endswith(".tmp") and (p / "trainer_state.json").exists()
    )
    return [p for _, p in steps]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoints/step-*`` directory of a run, or None."""
    complete = complete_checkpoints(Path(run_dir) / "checkpoints")
    return complete[-1] if complete else None


def prune_checkpoints(root: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints under ``root`` (``keep`` = 0 deletes none); the
    newest, the one a resume starts from, always stays. Returns the deleted paths."""
    complete = complete_checkpoints(root)
    doomed = complete[:-keep] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def first_nonfinite_parameter(model: torch.nn.Module) -> str | None:
    """The name of the first parameter holding a NaN or inf, or None when all are finite."""
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param.detach()).all()):
            return name
    return None
