"""Per-token log-probs of the labelled tokens of whole sequences (demonstrations), packed or padded.

Supervised fine-tuning scores every assistant token of a conversation given everything before it. Two paths give
the same numbers:

* packed (plain Llama models, :func:`rlxf.models.packed.supports_packed_forward`): the batch is one row of real
  tokens, each sequence its own segment of :mod:`rlxf.models.packed` (a one-token "prompt" and the rest as its
  only completion), so attention never crosses from one sequence into another, positions restart at 0 for each,
  and nothing is padding;
* padded (any other model, peft wrappers included): one forward over right-padded rows with an attention mask.

Both run the fused chunked LM head (:func:`rlxf.ops.logprobs_from_hidden`) on the labelled positions only, so
neither the prompt tokens nor the padding cost a vocabulary-sized product; whether each labelled token is the
model's top choice (token accuracy) comes from one more head product on the same rows, without gradient.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from rlxf.data.batching import pad_right
from rlxf.models.logps import uses_packed_forward
from rlxf.models.packed import pack_completions, packed_hidden
from rlxf.models.precision import autocast_context
from rlxf.ops import logprobs_from_hidden

__all__ = ["LabelledLogps", "labelled_token_logps", "shifted_label_mask"]


class LabelledLogps(NamedTuple):
    """Column ``t`` is token ``t + 1`` of each sequence, predicted from tokens ``0..t``: all `(B, L)`, ``L`` the
    longest sequence less one. ``logps`` float32 (0 where ``mask`` is False), ``correct`` bool (the token is the
    model's argmax), ``mask`` bool (the token is labelled); ``slots`` counts the token positions the forward ran
    (``total``) and how many were padding."""

    logps: Tensor
    correct: Tensor
    mask: Tensor
    slots: dict[str, int]


def shifted_label_mask(labels: Sequence[Sequence[bool]]) -> Tensor:
    """`(B, L)` bool: ``[b, t]`` is ``labels[b][t + 1]`` (False past a sequence's end); ``L = max len - 1``."""
    width = max(1, max(len(x) for x in labels) - 1)
    mask = torch.zeros((len(labels), width), dtype=torch.bool)
    for b, row in enumerate(labels):
        if len(row) > 1:
            mask[b, : len(row) - 1] = torch.tensor(list(row[1:]), dtype=torch.bool)
    return mask


@torch.no_grad()
def _argmax_matches(rows: Tensor, weight: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
    """Whether ``targets[i]`` is the argmax of ``rows[i] @ weight.T``, `(M,)` bool, ``chunk_size`` rows at a time."""
    out = torch.empty(rows.shape[0], dtype=torch.bool, device=rows.device)
    for lo in range(0, rows.shape[0], chunk_size):
        logits = rows[lo:lo + chunk_size] @ weight.t().to(rows.dtype)
        out[lo:lo + chunk_size] = logits.argmax(dim=-1) == targets[lo:lo + chunk_size]
    return out


def _labelled_hidden(model, sequences, mask: Tensor, pad_token_id: int, packed: bool):
    """Hidden states `(M, H)` that predict the ``M`` labelled tokens (row-major order of ``mask``), those tokens
    `(M,)`, and the slots run."""
    if packed:
        layout = pack_completions([list(s[:1]) for s in sequences], [[list(s[1:])] for s in sequences])
        hidden = packed_hidden(model, layout)
        # layout.targets lists every token after the first, sequence by sequence: mask's row-major order
        selected = torch.cat([mask[b, : len(s) - 1] for b, s in enumerate(sequences)]).to(hidden.device)
        source = layout.source.to(hidden.device)[selected]
        targets = layout.targets.to(hidden.device)[selected]
        return hidden.index_select(0, source), targets, {"total": int(layout.ids.shape[0]), "padding": 0}
    ids, attention = pad_right(sequences, pad_token_id)
    device = model.get_output_embeddings().weight.device
    ids, attention = ids.to(device), attention.to(device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=attention.long()).last_hidden_state
    on = mask.to(device)
    real = int(attention.sum())
    return hidden[:, :-1][on], ids[:, 1:][on], {"total": ids.numel(), "padding": ids.numel() - real}


def labelled_token_logps(
    model, sequences: Sequence[Sequence[int]], labels: Sequence[Sequence[bool]], *, pad_token_id: int,
    precision: str = "fp32", packed: bool | None = None, chunk_size: int = 512,
) -> LabelledLogps:
    """Log-probs of the labelled tokens of each sequence given everything before it (see the module docstring).

    ``sequences[b]``: token ids (at least 2); ``labels[b]``: one bool per token, True where it is scored (the
    first token, with nothing before it, never is). ``packed=None`` packs wherever the model supports it; the
    gradient flows to the model when enabled. ``chunk_size`` rows of vocabulary-sized logits exist at a time.
    """
    if len(sequences) != len(labels) or not sequences:
        raise ValueError("labelled_token_logps needs one label list per sequence and at least one sequence")
    for s, lab in zip(sequences, labels, strict=True):
        if len(s) != len(lab) or len(s) < 2:
            raise ValueError(f"every sequence needs >= 2 tokens and one label per token, got {len(s)} tokens and "
                             f"{len(lab)} labels")
    weight = model.get_output_embeddings().weight
    mask = shifted_label_mask(labels).to(weight.device)
    with autocast_context(weight.device, precision):
        rows, targets, slots = _labelled_hidden(model, sequences, mask, pad_token_id,
                                                uses_packed_forward(model, packed))
        logps, _ = logprobs_from_hidden(rows[None], weight, targets[None], chunk_size=chunk_size)
        correct = _argmax_matches(rows.detach(), weight.detach(), targets, chunk_size)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=weight.device)
    out = out.masked_scatter(mask, logps[0])
    hits = torch.zeros(mask.shape, dtype=torch.bool, device=weight.device).masked_scatter(mask, correct)
    return LabelledLogps(out, hits, mask, slots)
