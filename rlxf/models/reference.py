"""Reference log-probs: the initial policy's summed completion log-probs, computed once and cached on disk.

A preference run never holds a second model: before the first step the policy itself (LoRA: with its adapters
off) computes every sequence log-prob the run will need from the reference, through
:func:`rlxf.models.logps.length_ordered_logps`, and they are cached under ``<rlxf cache>/preference_ref/<key>``.
The key is the caller's: it must name everything the numbers depend on (weights, token ids, batch plan,
precision, device type, forward path).
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from rlxf.models.loading import cache_dir
from rlxf.models.logps import length_ordered_logps
from rlxf.models.lora import adapters_off

__all__ = ["cached_reference_logps", "model_fingerprint"]

# One job: the prompts and, per prompt, the completions whose summed log-probs are wanted.
Job = tuple[Sequence[Sequence[int]], Sequence[Sequence[Sequence[int]]]]


def model_fingerprint(model) -> str:
    """sha256 over every parameter and buffer (names, shapes, dtypes and bytes) of the state dict."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def cached_reference_logps(
    model, jobs: Mapping[str, Job], *, key: str, use_cache: bool, pad_token_id: int, batch_size: int,
    precision: str, packed: bool | None,
) -> tuple[dict[str, Tensor], str]:
    """For each job ``name -> (prompts, completions)`` with ``n`` completions per prompt, the tensors
    ``f"{name}.{k}"`` (``k < n``): summed log-probs ``(N,)`` of completion ``k`` under ``model`` with adapters off.
    From the cache when ``use_cache`` and ``key`` is there; returns ``(tensors, "hit" | "miss" | "off")``."""
    path = cache_dir() / "preference_ref" / f"{key}.safetensors"
    if use_cache and path.exists():
        return load_file(str(path)), "hit"
    was_training = model.training
    model.eval()
    tensors = {}
    try:
        with adapters_off(model):
            for name, (prompts, completions) in jobs.items():
                if not prompts:
                    continue
                sums, _ = length_ordered_logps(model, prompts, completions, pad_token_id=pad_token_id,
                                               batch_size=batch_size, precision=precision, packed=packed)
                tensors.update({f"{name}.{k}": sums[:, k].contiguous() for k in range(sums.shape[1])})
    finally:
        model.train(was_training)
    if not use_cache:
        return tensors, "off"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{id(tensors)}")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return tensors, "miss"
