"""precision=auto decides by measuring bf16 against fp32 on the machine at hand, per matrix shape."""
from __future__ import annotations

import pytest
import torch

from rlxf.models import precision as P


def test_the_probe_leaves_the_global_rng_alone_and_is_measured_once():
    """A run seeds the global RNG before it resolves precision (LoRA adapters are initialised from it after):
    the probe must not draw from it. It is measured once per process and shape."""
    P.bf16_speedup.cache_clear()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = P.bf16_speedup(32)
    assert torch.equal(torch.get_rng_state(), before)
    assert P.bf16_speedup(32) is first and first > 0
    assert P.bf16_speedup.cache_info().currsize == 1


def test_auto_follows_the_measurement(monkeypatch):
    monkeypatch.setattr(P, "bf16_speedup", lambda rows=256: {256: 2.0, 32: 0.5}[rows])
    assert P.resolve_precision("auto", "cpu") == "bf16"  # training shape: bf16 twice as fast
    assert P.resolve_precision("auto", "cpu", rows=32) == "fp32"  # decode shape: bf16 slower
    monkeypatch.setattr(P, "bf16_speedup", lambda rows=256: P.BF16_MARGIN)  # not by the margin
    assert P.resolve_precision("auto", "cpu") == "fp32"
    assert P.resolve_precision("bf16", "cpu") == "bf16" and P.resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ValueError, match="precision must be auto, bf16 or fp32"):
        P.resolve_precision("fp16", "cpu")
