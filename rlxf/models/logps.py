"""Summed completion log-probs of sequences: what preference losses, their references and their evaluation use.

:func:`sequence_logps` runs one batch (with gradients when enabled); :func:`length_ordered_logps` runs many
without gradients, in length-sorted batches. The reference log-probs of a run and its held-out evaluation both
come from :func:`length_ordered_logps` with the same batches, so where policy and reference are the same
weights their numbers are equal to the last bit.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rlxf.data.batching import pad_right, padding_slots
from rlxf.models.forward import completion_logprobs
from rlxf.models.packed import packed_sequence_logps, supports_packed_forward
from rlxf.models.precision import autocast_context

__all__ = ["length_ordered_logps", "sequence_logps", "uses_packed_forward"]


def uses_packed_forward(model, packed: bool | None) -> bool:
    """Whether :func:`sequence_logps` runs ``model`` packed: ``packed=None`` means wherever it is supported."""
    return supports_packed_forward(model) if packed is None else packed


def sequence_logps(
    model, prompt_ids: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]], *,
    pad_token_id: int, precision: str = "fp32", packed: bool | None = None,
) -> tuple[Tensor, Tensor, dict[str, int]]:
    """Summed log-probs of each prompt's completions, all in one forward.

    ``completions[p]`` holds ``n`` token lists answering ``prompt_ids[p]`` (n = 2 for a pair: chosen, rejected).
    Each prompt runs once. For a plain Llama model (``packed=None`` or True) the batch is one packed row of real
    tokens with no padding (`rlxf.models.packed`); otherwise (``packed=False``, or another architecture, or a peft
    wrapper) the ``n`` completions run on the prompt's KV cache, right-padded and concatenated along the batch
    (`rlxf.models.forward.completion_logprobs`). Both use the fused chunked LM head: no full-vocabulary logits.

    Returns ``(sums (P, n) float32, lengths (P, n) float32, slots)`` where ``slots`` counts the token positions
    run (``total``) and how many of them were padding (``padding``).
    """
    device = next(model.parameters()).device
    if uses_packed_forward(model, packed):
        with autocast_context(device, precision):
            return packed_sequence_logps(model, prompt_ids, completions)

    n = len(completions[0])
    flat = [list(c) for group in completions for c in group]
    if any(len(group) != n for group in completions):
        raise ValueError("every prompt needs the same number of completions")
    ids, mask = pad_right(flat, pad_token_id)
    with autocast_context(device, precision):
        logps, _ = completion_logprobs(model, [list(p) for p in prompt_ids], ids, n=n, pad_token_id=pad_token_id)
    mask = mask.to(logps.device)
    sums = torch.where(mask, logps, 0.0).sum(dim=1)
    lengths = mask.sum(dim=1).float()
    return sums.view(-1, n), lengths.view(-1, n), padding_slots(prompt_ids, completions)


@torch.no_grad()
def length_ordered_logps(
    model, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]], *, pad_token_id: int,
    batch_size: int, precision: str = "fp32", packed: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`sequence_logps` of ``completions[i]`` (``n`` token lists each) given ``prompts[i]``, without
    gradients, in batches of ``batch_size`` taken in order of length (less padding); results in input order as
    ``(sums (N, n) float32, lengths (N, n) float32)`` on the CPU."""
    width = len(completions[0]) if completions else 0
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + max(len(c) for c in completions[i]))
    sums, lengths = torch.zeros(len(prompts), width), torch.zeros(len(prompts), width)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        s, n_tok, _ = sequence_logps(model, [prompts[i] for i in idx], [completions[i] for i in idx],
                                     pad_token_id=pad_token_id, precision=precision, packed=packed)
        sums[idx] = s.float().cpu()
        lengths[idx] = n_tok.cpu()
    return sums, lengths
