"""Padding, positions, held-out splits and the fixed batch plans of offline and online recipes.

Every plan here is a pure function of its seed and the step, so that a resumed run draws exactly the rows and
batches an uninterrupted run would: a checkpoint needs to store only the step.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "batch_for_step",
    "held_out_indices",
    "kl_partners",
    "left_padded_positions",
    "make_batches",
    "pad_left",
    "pad_right",
    "padding_slots",
    "rows_for_step",
]


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token lists into ``(ids (B, L) long, attention_mask (B, L) bool)``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = True
    return ids, mask


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad token lists into ``(ids (B, L) long, mask (B, L) bool)``, ``L >= 1`` even if all are empty."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def left_padded_positions(attention_mask: Tensor) -> Tensor:
    """Position ids of left-padded rows ``(B, L)``: 0 at each row's first real token (pad positions get 0)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def padding_slots(prompt_ids: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]]) -> dict:
    """Token positions a padded forward runs for ``completions[p]`` (``n`` token lists) given ``prompt_ids[p]``
    (``total``: left-padded prompts once, right-padded completions) and how many of them are padding."""
    flat = [c for group in completions for c in group]
    width = max(1, max(len(c) for c in flat))
    total = len(prompt_ids) * max(len(p) for p in prompt_ids) + len(flat) * width
    real = sum(len(p) for p in prompt_ids) + sum(len(c) for c in flat)
    return {"total": total, "padding": total - real}


def held_out_indices(n: int, *, fraction: float, size: int, seed: int) -> list[int]:
    """Indices of the held-out rows among ``n``: a seeded sample of ``size`` rows (else ``fraction * n``), sorted.
    At least one row always stays for training."""
    count = size if size > 0 else round(fraction * n)
    count = min(count, n - 1) if n > 1 else 0
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[:count])


def make_batches(items: Sequence[Any], batch_size: int, window: int, seed: int,
                 length: Callable[[Any], int]) -> list[list[int]]:
    """Fixed batch composition: a seeded permutation, cut into windows of ``window`` batches, each window sorted
    by ``length(item)`` (so a batch holds similar lengths) and cut into batches; the last incomplete batch is
    dropped. Each epoch visits these batches in its own seeded order (:func:`batch_for_step`)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    usable = len(order) - len(order) % batch_size
    order = order[:usable]
    span = batch_size * max(1, window)
    sorted_order = []
    for start in range(0, usable, span):
        sorted_order += sorted(order[start:start + span], key=lambda i: length(items[i]))
    return [sorted_order[i:i + batch_size] for i in range(0, usable, batch_size)]


def batch_for_step(batches: list[list[int]], step: int, seed: int) -> list[int]:
    """The batch of ``step`` (0-based): epoch e = step // len(batches) visits the batches in a seeded order."""
    epoch, pos = divmod(step, len(batches))
    order = list(range(len(batches)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return batches[order[pos]]


def kl_partners(n: int, batches: list[list[int]]) -> list[int]:
    """KTO's mismatched pairs: row i's KL completion is that of the next row of its batch (cyclically), so z0
    is estimated from (x_i, y_j), j != i, of the same batch. Rows in no batch pair with row (i + 1) mod n."""
    partner = [(i + 1) % n for i in range(n)]
    for batch in batches:
        for j, i in enumerate(batch):
            partner[i] = batch[(j + 1) % len(batch)]
    return partner


def rows_for_step(rows: Sequence[Any], step: int, per_step: int, seed: int) -> list[Any]:
    """Rows for ``step`` (0-based) of an online run: in order, epoch after epoch, each later epoch in a seeded
    order."""
    out = []
    for i in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(i, len(rows))
        order = list(range(len(rows)))
        if epoch > 0:
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(rows[order[pos]])
    return out
