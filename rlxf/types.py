"""The records every layer passes along, in one place.

* :class:`Rollout`: what a generator returns (token ids in and out, masks, the sampler's log-probs);
* :class:`Scores`: what a feedback returns (one value per completion, optional per-step values, per-item info);
* :class:`LossOutput`: what a loss returns (the unreduced loss and detached metrics);
* :class:`TokenizedPair` / :class:`TokenizedUnpaired`: preference rows as token ids, what offline recipes batch.

They hold tensors and plain Python values only, so any layer (and a process on another machine) can carry them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["LossOutput", "Rollout", "Scores", "TokenizedPair", "TokenizedUnpaired"]


@dataclass
class Rollout:
    """Completions for ``P`` prompts with ``n`` samples each, ``N = P * n`` rows, grouped contiguously.

    Row ``i`` answers prompt ``prompt_index[i] = i // n``. Completion tensors are right-padded to the longest
    completion ``T``; ``completion_mask`` is True on generated tokens, including the EOS token that ended a
    completion (the policy chose to stop, so stopping is trained on too).
    """

    prompt_ids: list[list[int]]  # the P prompts, unpadded
    completion_ids: Tensor  # (N, T) long, pad after the end
    completion_mask: Tensor  # (N, T) bool
    sampler_logps: Tensor  # (N, T) float32, log-prob of each sampled token under the sampler, 0 on pad
    finished: Tensor  # (N,) bool: ended with an EOS token (False = truncated at max_new_tokens)
    n: int  # samples per prompt

    @property
    def prompt_index(self) -> Tensor:
        return torch.arange(self.completion_ids.shape[0]) // self.n

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(dim=1)

    def completion_token_lists(self) -> list[list[int]]:
        return [row[m].tolist() for row, m in zip(self.completion_ids, self.completion_mask, strict=True)]


@dataclass(frozen=True)
class Scores:
    """What a feedback returns for a batch of ``B`` completions.

    values: float32 ``(B,)``, one score per completion, in the feedback's own scale (never normalised here).
    info: per-item lists, each of length ``B``; ``info["source"][i]`` names the feedback that scored item i.
    step_values: for process (step-level) feedback, per item a float32 ``(S_i,)`` tensor of step scores (an item
        may have no steps: ``(0,)``); None for outcome feedback.
    """

    values: Tensor
    info: dict[str, list[Any]] = field(default_factory=dict)
    step_values: list[Tensor] | None = None

    def __len__(self) -> int:
        return int(self.values.shape[0])


class LossOutput(NamedTuple):
    """``loss``: unreduced float32, per token ``(B, T)`` with 0 at masked positions for policy-gradient losses
    (the recipe reduces it with ``rlxf.ops.aggregate``), per row ``(B,)`` for sequence-level losses (the recipe
    takes the mean); ``metrics``: detached float32 scalars, already averaged over tokens or rows."""

    loss: Tensor
    metrics: dict[str, Tensor]


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one preference pair after truncation. ``*_truncated`` record whether anything was cut;
    ``source`` is the row's ``file:line``."""

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    source: str
    chosen_score: float | None = None
    rejected_score: float | None = None
    group: str | None = None
    prompt_truncated: bool = False
    completion_truncated: bool = False


@dataclass(frozen=True)
class TokenizedUnpaired:
    """Token ids of one unpaired row (KTO): a completion that is desirable (``label=True``) or not."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    label: bool
    source: str
    prompt_truncated: bool = False
    completion_truncated: bool = False
