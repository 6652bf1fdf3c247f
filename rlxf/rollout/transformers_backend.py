"""A lean sampling loop over any transformers causal LM, with a KV cache.

Why not ``model.generate``: per decode step it runs a stack of logits processors and stopping criteria and
materialises full-vocabulary scores, and it cannot share one prefill among the ``n`` samples of a prompt.
This loop prefills each distinct prompt once, repeats the cache ``n`` times, and per step computes only the
last position's logits. Sampling draws from ``softmax(logits / temperature)`` with the caller's
``torch.Generator``, so a run is reproducible and resumable.
"""
from __future__ import annotations

import contextlib

import torch

from rlxf.rollout.base import Rollout, pad_left


class TransformersGenerator:
    """Token-in/token-out generation with a transformers model.

    Args:
        model: a causal LM whose forward accepts ``past_key_values``, ``position_ids`` and ``logits_to_keep``.
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

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device_type = next(self.model.parameters()).device.type
        return torch.autocast(device_type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        *,
        n: int = 1,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        greedy: bool = False,
        rng: torch.Generator | None = None,
    ) -> Rollout:
        if greedy and n != 1:
            raise ValueError("greedy decoding gives one completion per prompt: use n=1")
        if not greedy and temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("every prompt needs at least one token")
        from transformers import DynamicCache

        model = self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        ids, attn = pad_left(prompt_ids, self.pad_token_id)
        ids, attn = ids.to(device), attn.to(device)
        eos = self.eos_token_ids.to(device)
        cache = DynamicCache(config=model.config)
        with self._autocast():
            logits = model(
                input_ids=ids, attention_mask=attn.long(), position_ids=_positions(attn),
                past_key_values=cache, use_cache=True, logits_to_keep=1,
            ).logits[:, -1, :]
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            attn = attn.repeat_interleave(n, dim=0)
        rows = logits.shape[0]
        next_pos = attn.sum(dim=1, keepdim=True)  # position id of the first generated token
        tokens = torch.full((rows, max_new_tokens), self.pad_token_id, dtype=torch.long, device=device)
        logps = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
        alive = torch.ones(rows, dtype=torch.bool, device=device)
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        length = 0
        for t in range(max_new_tokens):
            scores = torch.log_softmax(logits.float() / (1.0 if greedy else temperature), dim=-1)
            token = scores.argmax(dim=-1) if greedy else sample_categorical(scores, rng)
            token = torch.where(alive, token, torch.full_like(token, self.pad_token_id))
            tokens[:, t] = token
            logps[:, t] = torch.where(alive, scores.gather(1, token[:, None]).squeeze(1), 0.0)
            length = t + 1
            is_eos = torch.isin(token, eos) & alive
            finished |= is_eos
            alive &= ~is_eos
            if not alive.any() or t == max_new_tokens - 1:
                break
            attn = torch.cat([attn, torch.ones((rows, 1), dtype=torch.bool, device=device)], dim=1)
            with self._autocast():
                logits = model(
                    input_ids=token[:, None], attention_mask=attn.long(), position_ids=next_pos + t,
                    past_key_values=cache, use_cache=True, logits_to_keep=1,
                ).logits[:, -1, :]
        model.train(was_training)
        tokens, logps = tokens[:, :length], logps[:, :length]
        mask = _completion_mask(tokens, eos)
        return Rollout(
            prompt_ids=[list(p) for p in prompt_ids], completion_ids=tokens.cpu(), completion_mask=mask.cpu(),
            sampler_logps=logps.cpu(), finished=finished.cpu(), n=n,
        )


def sample_categorical(logps: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """One draw per row from ``exp(logps)`` ``(B, V)`` by inverse CDF: ``(B,)`` long.

    ``torch.multinomial`` costs ~56 ms for 32 x 49k on one CPU thread, a float64 cumsum + searchsorted ~3 ms.
    ``right=True`` returns the first index whose CDF exceeds ``u``, so zero-probability tokens are never drawn.
    """
    cdf = logps.exp().double().cumsum(dim=-1)
    u = torch.rand((logps.shape[0], 1), generator=rng, dtype=torch.float64, device=logps.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=logps.shape[1] - 1).squeeze(1)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left-padded rows: 0 at each row's first real token (pad positions get 0)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _completion_mask(tokens: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """True up to and including the first EOS of each row (the whole row if it never ended)."""
    is_eos = torch.isin(tokens, eos)
    # A position is inside the completion while no EOS has occurred strictly before it.
    eos_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    return ~eos_before
