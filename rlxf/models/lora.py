"""LoRA through peft: adding adapters, computing with them off (the reference), and checkpointing them alone."""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from peft import (
    LoraConfig,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from safetensors.torch import save_file

from rlxf.models.loading import save_policy

__all__ = ["BaseWeights", "LoraWeights", "adapters_off", "add_lora", "add_lora_in_place", "save_policy_or_merged"]


def add_lora(model, *, r: int, alpha: float, dropout: float, targets: Sequence[str]):
    """``model`` wrapped by peft with rank-``r`` adapters (scaling ``alpha / r``) on the ``targets`` modules; the
    base weights are frozen and the adapters start at B = 0, so the wrapped model computes what ``model`` did."""
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=list(targets), task_type="CAUSAL_LM"))


def add_lora_in_place(module, *, r: int, alpha: float, dropout: float, targets: Sequence[str]):
    """Rank-``r`` adapters injected into ``module``'s ``targets`` submodules in place (B = 0: it computes what it
    did), its other parameters frozen: for a module that is not a transformers model of its own, e.g. a critic's
    decoder. Returns ``module``; its trainable parameters are the adapters'."""
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets)),
                            module)
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    return module


def adapters_off(model):
    """Context in which a peft model computes with its base weights only (nothing for a plain model)."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if callable(disable) else contextlib.nullcontext()


class BaseWeights:
    """A LoRA model's frozen base, named as a model of its own: the reference of a LoRA run, which holds no second
    copy of the weights. Whoever computes with it enters ``adapters_off(base.model)``."""

    def __init__(self, peft_model):
        self.model = peft_model

    def parameters(self):
        return self.model.parameters()


class LoraWeights:
    """What checkpoint saving and loading see of a LoRA model: only the adapter weights are written
    (``model.safetensors`` + ``adapter_config.json``) and loaded back; the frozen base comes from the run's
    ``model``. Quacks like the part of a transformers model that ``save_pretrained``/``load_state_dict`` use."""

    hf_quantizer = None

    def __init__(self, peft_model):
        self.peft_model = peft_model
        self.config = peft_model.config

    def save_pretrained(self, path, safe_serialization: bool = True) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.peft_model.peft_config["default"].save_pretrained(str(path))
        weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.peft_model).items()}
        save_file(weights, str(Path(path) / "model.safetensors"))

    def load_state_dict(self, weights, strict: bool = False):
        result = set_peft_model_state_dict(self.peft_model, weights)
        return [], list(getattr(result, "unexpected_keys", []))


def save_policy_or_merged(model, tokenizer, path: str | Path) -> None:
    """``path`` as a plain transformers model directory: a LoRA model with its adapters merged into the weights
    (and the adapters alone in ``path/adapter``), any other model as it is."""
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(Path(path) / "adapter"))
        model = model.merge_and_unload()
    save_policy(model, tokenizer, path)
