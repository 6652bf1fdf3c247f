"""Which generation engine runs a model: the hand-written llama sampler where it can, transformers elsewhere."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

from rlxf.rollout.base import Generator
from rlxf.rollout.llama_backend import FastLlamaGenerator, supports
from rlxf.rollout.transformers_backend import TransformersGenerator

__all__ = ["GENERATORS", "make_generator"]

GENERATORS = ("auto", "fast", "transformers")


def make_generator(model, *, kind: Literal["auto", "fast", "transformers"] = "auto", eos_token_ids: Iterable[int],
                   pad_token_id: int, autocast_dtype: torch.dtype | None = None) -> Generator:
    """A :class:`~rlxf.rollout.base.Generator` on ``model``.

    ``fast`` is :class:`FastLlamaGenerator` (plain llama models, e.g. SmolLM2; it computes in the model's own dtype,
    so it takes no ``autocast_dtype``), ``transformers`` is :class:`TransformersGenerator` (any causal LM, under
    ``autocast_dtype`` when given), and ``auto`` (the default) is ``fast`` where the model allows it and no autocast
    is asked for, else ``transformers``. Both draw the same tokens from the same ``torch.Generator`` whenever their
    logits agree to float rounding (tests/rollout). ``fast`` on a model it cannot run is a ValueError naming why.
    """
    if kind not in GENERATORS:
        raise ValueError(f"unknown generator {kind!r}; one of {', '.join(GENERATORS)}")
    eos = set(eos_token_ids)
    if kind == "fast" or (kind == "auto" and autocast_dtype is None and supports(model)):
        if autocast_dtype is not None:
            raise ValueError("the fast generator computes in the model's dtype; it takes no autocast "
                             "(use generator=transformers for bf16 autocast sampling)")
        return FastLlamaGenerator(model, eos_token_ids=eos, pad_token_id=pad_token_id)
    return TransformersGenerator(model, eos_token_ids=eos, pad_token_id=pad_token_id, autocast_dtype=autocast_dtype)
