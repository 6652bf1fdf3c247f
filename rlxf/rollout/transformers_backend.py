"""A lean sampling loop over any transformers causal LM, with a KV cache.

Why not ``model.generate``: per decode step it runs a stack of logits processors and stopping criteria and
materialises full-vocabulary scores, and it cannot share one prefill among the ``n`` samples of a prompt.
This loop prefills each distinct prompt once, repeats the cache ``n`` times, and per step computes only the
last position's logits. Sampling draws from ``softmax(logits / temperature)`` with the caller's
``torch.Generator``, so a run is reproducible and resumable.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from transformers import DynamicCache

from rlxf.data.batching import left_padded_positions, pad_left
from rlxf.models.forward import cache_kwargs
from rlxf.rollout.base import Rollout, TokenSampler, check_generate_args, load_state_into

__all__ = ["TransformersGenerator"]


class TransformersGenerator:
    """Token-in/token-out generation with a transformers model.

    Args:
        model: a causal LM whose forward accepts a KV cache (``cache``, or ``past_key_values`` in older
            transformers), ``position_ids`` and ``logits_to_keep``.
            The generator samples with this module's weights; ``load_weights`` copies new ones into it (nothing
            is copied when they are this module's own, as when the generator shares the training module).
        eos_token_ids: token ids that end a completion.
        pad_token_id: id written after a completion ends.
        autocast_dtype: if set (e.g. ``torch.bfloat16``), forward passes run under ``torch.autocast``; the
            sampler log-probs are then those of the autocast model.
    """

    def __init__(self, model, *, eos_token_ids, pad_token_id: int, autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.eos_token_ids = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long)
        self.pad_token_id = int(pad_token_id)
        self.autocast_dtype = autocast_dtype
        self.version = 0

    def load_weights(self, state: Mapping[str, Tensor], version: int) -> None:
        load_state_into(self.model, state)
        self.version = version

    def _forward(self, **inputs) -> Tensor:
        """Last-position logits ``(rows, V)``, under autocast when configured."""
        if self.autocast_dtype is None:
            return self.model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1, :]
        with torch.autocast(next(self.model.parameters()).device.type, dtype=self.autocast_dtype):
            return self.model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1, :]

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], *, n: int = 1, max_new_tokens: int = 32, temperature: float = 1.0,
                 greedy: bool = False, rng: torch.Generator | None = None) -> Rollout:
        """The ``Generator`` contract (`rlxf.rollout.base`)."""
        check_generate_args(prompt_ids, n=n, greedy=greedy, temperature=temperature)
        model = self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        ids, attn = pad_left(prompt_ids, self.pad_token_id)
        ids, attn = ids.to(device), attn.to(device)
        cache = DynamicCache(config=model.config)
        logits = self._forward(input_ids=ids, attention_mask=attn.long(), position_ids=left_padded_positions(attn),
                               **cache_kwargs(model, cache))
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            attn = attn.repeat_interleave(n, dim=0)
        rows = logits.shape[0]
        next_pos = attn.sum(dim=1, keepdim=True)  # position id of the first generated token
        sampler = TokenSampler(rows, max_new_tokens, eos=self.eos_token_ids, pad_token_id=self.pad_token_id,
                               greedy=greedy, temperature=temperature, rng=rng, device=device)

        def next_logits(token: Tensor, t: int) -> Tensor:
            nonlocal attn
            attn = torch.cat([attn, torch.ones((rows, 1), dtype=torch.bool, device=device)], dim=1)
            return self._forward(input_ids=token[:, None], attention_mask=attn.long(), position_ids=next_pos + t,
                                 **cache_kwargs(model, cache))

        sampler.decode(logits, next_logits)
        model.train(was_training)
        return sampler.rollout(prompt_ids, n)
