"""The generation contract shared by every backend, and the sampling steps they share.

Token in, token out: prompts arrive as token ids and completions leave as token ids, so the tokens that were
sampled are exactly the tokens that are trained on (no decode/re-encode round trip). Every backend reports
the log-probability the sampler gave each sampled token, so off-policy drift between the sampler and the
trainer can be measured and corrected. A backend owns its weights: the trainer hands it new ones with
``load_weights(state, version)``, so no engine needs to hold the training module (a backend built on the very
module that trains, as in a single process, sees every update already and copies nothing).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from torch import Tensor

from rlxf.types import Rollout

__all__ = ["Generator", "Rollout", "TokenSampler", "check_generate_args", "completion_mask", "load_state_into",
           "sample_categorical"]


class Generator(Protocol):
    """Samples ``n`` completions per prompt; ``greedy=True`` gives argmax decoding (then ``n`` must be 1)."""

    version: int  # of the weights it samples with: 0 as built, then what the last load_weights said

    def generate(
        self,
        prompt_ids: list[list[int]],
        *,
        n: int = 1,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        greedy: bool = False,
        rng: torch.Generator | None = None,
    ) -> Rollout: ...

    def load_weights(self, state: Mapping[str, Tensor], version: int) -> None:
        """Sample with ``state`` (a ``state_dict``-style mapping of the policy's tensors) from now on."""
        ...


def load_state_into(model: torch.nn.Module, state: Mapping[str, Tensor]) -> int:
    """Copy ``state`` into ``model``'s tensors of the same names, in place; returns how many were copied.

    A tensor that already is the model's own (same storage and strides: a generator built on the training
    module) is skipped, so sharing costs nothing. Every name of ``state`` must exist in ``model`` with the same
    shape: a mismatch is a ValueError, never a silently stale weight.
    """
    own = model.state_dict(keep_vars=True)
    unknown = [name for name in state if name not in own]
    if unknown:
        raise ValueError(f"load_weights: {len(unknown)} tensors the model does not have, e.g. {unknown[:3]}")
    copied = 0
    with torch.no_grad():
        for name, value in state.items():
            target = own[name]
            if target.shape != value.shape:
                raise ValueError(f"load_weights: {name} has shape {tuple(value.shape)}, the model's is "
                                 f"{tuple(target.shape)}")
            same = (target.device == value.device and target.data_ptr() == value.data_ptr()
                    and target.stride() == value.stride() and target.dtype == value.dtype)
            if not same:
                target.copy_(value)
                copied += 1
    return copied


def sample_categorical(logps: Tensor, rng: torch.Generator | None) -> Tensor:
    """One draw per row from ``exp(logps)`` ``(B, V)`` by inverse CDF: ``(B,)`` long.

    ``torch.multinomial`` costs ~56 ms for 32 x 49k on one CPU thread, a float64 cumsum + searchsorted ~3 ms.
    ``right=True`` returns the first index whose CDF exceeds ``u``, so zero-probability tokens are never drawn.
    """
    cdf = logps.exp().double().cumsum(dim=-1)
    u = torch.rand((logps.shape[0], 1), generator=rng, dtype=torch.float64, device=logps.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=logps.shape[1] - 1).squeeze(1)


def completion_mask(tokens: Tensor, eos: Tensor) -> Tensor:
    """True up to and including the first EOS of each row (the whole row if it never ended)."""
    is_eos = torch.isin(tokens, eos)
    # A position is inside the completion while no EOS has occurred strictly before it.
    eos_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    return ~eos_before


def check_generate_args(prompt_ids: list[list[int]], *, n: int, greedy: bool, temperature: float) -> None:
    """The argument checks every ``Generator.generate`` runs first."""
    if greedy and n != 1:
        raise ValueError("greedy decoding gives one completion per prompt: use n=1")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")


class TokenSampler:
    """The per-step bookkeeping every decoding loop shares: draw a token per row from its last logits, record it
    with its log-prob, and retire rows at EOS. Finished rows are drawn for too (and their token replaced by
    padding), so the generator's random stream advances identically whatever the backend and batch layout."""

    def __init__(self, rows: int, max_new_tokens: int, *, eos: Tensor, pad_token_id: int, greedy: bool,
                 temperature: float, rng: torch.Generator | None, device: torch.device):
        self.eos, self.pad, self.greedy, self.temperature, self.rng = eos.to(device), pad_token_id, greedy, \
            temperature, rng
        self.max_new_tokens = max_new_tokens
        self.tokens = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
        self.logps = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
        self.alive = torch.ones(rows, dtype=torch.bool, device=device)
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        self.length = 0

    def draw(self, logits: Tensor, t: int) -> Tensor:
        """Step ``t``: ``softmax(logits / temperature)`` per row (argmax when greedy); returns the ``(rows,)``
        tokens (padding on finished rows). Dividing by a temperature of 1 is skipped: it changes no bit."""
        scaled = logits.float() if self.greedy or self.temperature == 1.0 else logits.float() / self.temperature
        scores = torch.log_softmax(scaled, dim=-1)
        token = scores.argmax(dim=-1) if self.greedy else sample_categorical(scores, self.rng)
        token = torch.where(self.alive, token, torch.full_like(token, self.pad))
        self.tokens[:, t] = token
        self.logps[:, t] = torch.where(self.alive, scores.gather(1, token[:, None]).squeeze(1), 0.0)
        self.length = t + 1
        is_eos = torch.isin(token, self.eos) & self.alive
        self.finished |= is_eos
        self.alive &= ~is_eos
        return token

    def decode(self, logits: Tensor, next_logits: Callable[[Tensor, int], Tensor]) -> None:
        """The decoding loop: draw from ``logits``, then, while a row is alive and tokens remain, get the next
        position's logits from the backend, ``next_logits(token (rows,), t)``, for the token drawn at step ``t``."""
        for t in range(self.max_new_tokens):
            token = self.draw(logits, t)
            if not self.alive.any() or t == self.max_new_tokens - 1:
                return
            logits = next_logits(token, t)

    def rollout(self, prompt_ids: list[list[int]], n: int) -> Rollout:
        """The sampled completions so far, trimmed to the longest, on the CPU."""
        tokens, logps = self.tokens[:, :self.length], self.logps[:, :self.length]
        mask = completion_mask(tokens, self.eos)
        return Rollout(prompt_ids=[list(p) for p in prompt_ids], completion_ids=tokens.cpu(),
                       completion_mask=mask.cpu(), sampler_logps=logps.cpu(), finished=self.finished.cpu(), n=n)
