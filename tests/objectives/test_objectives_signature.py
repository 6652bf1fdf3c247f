"""How recipes call losses (rlxf.objectives.signature): the declared inputs are read from the signature, loss
hyperparameters are checked and converted against it, and a call with a missing or unknown tensor fails."""
from __future__ import annotations

from typing import Literal

import pytest
import torch
from torch import Tensor

from rlxf.config import ConfigError
from rlxf.objectives import OBJECTIVES, cringe_pairwise_loss, dpo_loss, grpo_loss, kto_loss
from rlxf.objectives.signature import call_loss, loss_signature, resolve_hyperparameters
from rlxf.types import LossOutput


def toy_loss(policy_logps: Tensor, mask: Tensor, old_logps: Tensor | None = None, *, ref_logps: Tensor | None = None,
             scale: float = 2.0, mode: Literal["sum", "mean"] = "sum", steps: int | None = None) -> LossOutput:
    """loss = scale * (policy_logps summed or averaged over the mask), per row."""
    values = torch.where(mask, policy_logps, 0.0)
    reduced = values.sum(dim=1) if mode == "sum" else values.sum(dim=1) / mask.sum(dim=1)
    return LossOutput(scale * reduced, {"steps": torch.tensor(float(steps or 0))})


def test_signature_splits_tensor_inputs_from_hyperparameters():
    sig = loss_signature(toy_loss)
    assert sig.tensors == ("policy_logps", "mask", "old_logps", "ref_logps")
    assert sig.required == {"policy_logps", "mask"}
    assert {k: v[1] for k, v in sig.hyperparameters.items()} == {"scale": 2.0, "mode": "sum", "steps": None}
    assert loss_signature(dpo_loss).tensors == ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
                                                "ref_rejected_logps")
    assert set(loss_signature(grpo_loss).hyperparameters) == {"clip_eps", "clip_eps_high", "beta", "tis_cap"}
    assert "ref_logps" in loss_signature(grpo_loss).tensors  # keyword-only, but a tensor: an optional input
    assert "generator" in loss_signature(cringe_pairwise_loss).tensors  # an RNG is an input, not a setting
    assert set(loss_signature(kto_loss).hyperparameters) == {"beta", "desirable_weight", "undesirable_weight"}


def test_every_registered_loss_has_a_readable_signature():
    for name, fn in OBJECTIVES.items():
        sig = loss_signature(fn)
        assert sig.tensors and sig.required <= set(sig.tensors), name


def test_a_parameter_without_type_hint_or_a_positional_hyperparameter_is_refused():
    def untyped(policy_logps, *, beta: float = 0.1):
        raise AssertionError

    def positional_setting(policy_logps: Tensor, beta: float = 0.1):
        raise AssertionError

    with pytest.raises(TypeError, match="'policy_logps' has no type hint"):
        loss_signature(untyped)
    with pytest.raises(TypeError, match="hyperparameter 'beta' must be keyword-only"):
        loss_signature(positional_setting)


def test_hyperparameters_are_checked_converted_and_defaulted():
    """YAML gives 3 (int) for scale, "mean" for mode and "4" (str) for steps: converted to 3.0, "mean", 4;
    nothing given keeps the defaults."""
    assert resolve_hyperparameters(toy_loss, {}) == {"scale": 2.0, "mode": "sum", "steps": None}
    resolved = resolve_hyperparameters(toy_loss, {"scale": 3, "mode": "mean", "steps": "4"})
    assert resolved == {"scale": 3.0, "mode": "mean", "steps": 4} and isinstance(resolved["scale"], float)
    assert resolve_hyperparameters(toy_loss, {"steps": None})["steps"] is None
    with pytest.raises(ConfigError, match=r"objective 'toy_loss' takes no hyperparameter 'scal' \(it takes: scale, "
                                          r"mode, steps\).*did you mean 'loss.scale'"):
        resolve_hyperparameters(toy_loss, {"scal": 1.0})
    with pytest.raises(ConfigError, match=r"bad value for 'loss.mode' of objective 'toy_loss': expected one of "
                                          r"'sum', 'mean', got 'max'"):
        resolve_hyperparameters(toy_loss, {"mode": "max"})
    with pytest.raises(ConfigError, match="expected float"):
        resolve_hyperparameters(toy_loss, {"scale": "big"})


def test_call_loss_passes_exactly_the_declared_tensors():
    """By hand: policy_logps [[1, 2], [3, 4]] with mask [[T, T], [T, F]] and scale 2: rows sum to 3 and 3, so
    the loss is [6, 6]; an optional input may be left out, a missing required or an unknown one is an error."""
    logps = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[True, True], [True, False]])
    out = call_loss(toy_loss, {"policy_logps": logps, "mask": mask}, {"scale": 2.0, "mode": "sum", "steps": 7})
    assert out.loss.tolist() == [6.0, 6.0] and float(out.metrics["steps"]) == 7.0
    with pytest.raises(TypeError, match=r"loss 'toy_loss' takes tensors .*; unknown: old_logpz"):
        call_loss(toy_loss, {"policy_logps": logps, "mask": mask, "old_logpz": logps}, {})
    with pytest.raises(TypeError, match=r"missing: mask"):
        call_loss(toy_loss, {"policy_logps": logps}, {})
