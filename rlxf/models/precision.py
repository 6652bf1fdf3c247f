"""Compute precision: bf16 autocast or fp32, and ``auto``, which picks bf16 only where it is measured faster."""
from __future__ import annotations

import contextlib
import functools
import math
import time

import torch

__all__ = ["BF16_MARGIN", "autocast_context", "bf16_is_faster", "bf16_speedup", "resolve_precision"]


def autocast_context(device: torch.device | str, precision: str):
    """bf16 autocast on ``device`` for ``precision="bf16"``, nothing for ``"fp32"``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def resolve_precision(precision: str, device: torch.device | str, *, rows: int = 256) -> str:
    """``"bf16"``/``"fp32"`` as given; ``"auto"`` is bf16 where :func:`bf16_is_faster` for matrix products of
    ``rows`` rows (a training batch's tokens, or the rows of one decode step), else fp32."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if bf16_is_faster(device, rows=rows) else "fp32"


# bf16 must win by this much: below it the gain does not pay for bf16's rounding and the autocast casts.
BF16_MARGIN = 1.3


def bf16_is_faster(device: torch.device | str = "cpu", *, rows: int = 256) -> bool:
    """Whether bf16 matmuls beat fp32 by :data:`BF16_MARGIN` here for ``rows``-row products: always on CUDA; on CPU
    by :func:`bf16_speedup`, measured.

    A CPU without bf16 instructions emulates them (measured: ~30 GFLOP/s bf16 vs ~110 fp32 on one AVX-512 core),
    while one with AMX runs them ~6x faster than fp32, and AVX512-BF16 sits in between and depends on the shape,
    so a micro-benchmark decides rather than CPU flags (it also holds under emulators and odd VMs).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return True
    return bf16_speedup(rows) > BF16_MARGIN


@functools.cache
def bf16_speedup(rows: int = 256) -> float:
    """fp32 seconds / bf16 seconds of a ``(rows, 576) @ (576, 1536)`` product on this CPU (SmolLM2's MLP shape),
    best of 5 after a warm-up; > 1 means bf16 is faster. Measured once per process and shape (~50 ms), with a
    private random generator, so the probe never moves the global RNG a run seeds."""
    rng = torch.Generator().manual_seed(0)

    def seconds(dtype: torch.dtype) -> float:
        a = torch.randn(rows, 576, generator=rng).to(dtype)
        b = torch.randn(576, 1536, generator=rng).to(dtype)
        a @ b
        best = math.inf
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        return best

    return seconds(torch.float32) / seconds(torch.bfloat16)
