"""The generation contract shared by every backend.

Token in, token out: prompts arrive as token ids and completions leave as token ids, so the tokens that were
sampled are exactly the tokens that are trained on (no decode/re-encode round trip). Every backend reports
the log-probability the sampler gave each sampled token, so off-policy drift between the sampler and the
trainer can be measured and corrected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Rollout:
    """Completions for ``P`` prompts with ``n`` samples each, ``N = P * n`` rows, grouped contiguously.

    Row ``i`` answers prompt ``prompt_index[i] = i // n``. Completion tensors are right-padded to the longest
    completion ``T``; ``completion_mask`` is True on generated tokens, including the EOS token that ended a
    completion (the policy chose to stop, so stopping is trained on too).
    """

    prompt_ids: list[list[int]]  # the P prompts, unpadded
    completion_ids: torch.Tensor  # (N, T) long, pad after the end
    completion_mask: torch.Tensor  # (N, T) bool
    sampler_logps: torch.Tensor  # (N, T) float32, log-prob of each sampled token under the sampler, 0 on pad
    finished: torch.Tensor  # (N,) bool: ended with an EOS token (False = truncated at max_new_tokens)
    n: int  # samples per prompt

    @property
    def prompt_index(self) -> torch.Tensor:
        return torch.arange(self.completion_ids.shape[0]) // self.n

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(dim=1)

    def completion_token_lists(self) -> list[list[int]]:
        return [row[m].tolist() for row, m in zip(self.completion_ids, self.completion_mask, strict=True)]


class Generator(Protocol):
    """Samples ``n`` completions per prompt; ``greedy=True`` gives argmax decoding (then ``n`` must be 1)."""

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


def pad_left(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ``(ids (B, L) long, attention_mask (B, L) bool)``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = True
    return ids, mask


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ``(ids (B, L) long, mask (B, L) bool)``, ``L >= 1`` even if all are empty."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask
