"""Per-token log-probs of completions under a causal LM, without full-vocabulary logits for the batch.

Two ways to compute the same numbers:

* :func:`completion_logprobs_padded` runs each ``[prompt | completion]`` row once, as a plain forward.
* :func:`completion_logprobs` (the fast path) runs each distinct prompt once and the completions of its
  ``n`` samples on top of a repeated KV cache. In group sampling every prompt appears ``n`` times, so
  this avoids ``(n-1)/n`` of the prompt tokens; gradients flow through the cached keys and values into the
  prompt's computation exactly as in the padded forward (differential test in tests/models).

Both feed the decoder's last hidden states to :func:`rlxf.ops.logprobs_from_hidden`, which fuses the LM head
with the log-softmax chunk by chunk, so no ``(N, T, V)`` float32 tensor ever exists.
"""
from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache

from rlxf.data.batching import left_padded_positions, pad_left, pad_right
from rlxf.ops import logprobs_from_hidden


def cache_kwargs(module: torch.nn.Module, cache) -> dict:
    """``{name: cache}`` for ``module.forward``'s KV-cache keyword: ``cache`` in the transformers releases that renamed
    it (the old ``past_key_values`` then warns on every call), ``past_key_values`` in those before."""
    return {_cache_keyword(type(module)): cache}


@functools.cache
def _cache_keyword(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _decoder_and_head(model):
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError("completion_logprobs needs a bias-free linear LM head (logits = hidden @ W.T)")
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(model.config, attr, None) not in (None, 1.0):
            raise ValueError(f"models with config.{attr} are not supported by the fused log-prob path")
    return model.get_decoder(), head.weight


def completion_logprobs(
    model,
    prompt_ids: list[list[int]],
    completion_ids: torch.Tensor,
    *,
    n: int,
    pad_token_id: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``completion_ids`` given their prompts, prefilling each distinct prompt once.

    Args:
        prompt_ids: ``P`` prompts as token lists.
        completion_ids: ``(P * n, T)`` long; rows ``p*n .. p*n+n-1`` answer prompt ``p``. Positions after a
            completion's end may hold anything: their log-probs are computed but callers mask them.
        n: completions per prompt.
        temperature: log-probs of ``softmax(logits / temperature)``, matching the sampler.

    Returns:
        ``(logps (P*n, T) float32, entropy (P*n, T) float32 or None)``.

    With gradients on and activation checkpointing enabled on ``model`` it runs
    :func:`completion_logprobs_padded` instead: checkpointed layers drop the KV cache.
    """
    if torch.is_grad_enabled() and getattr(model, "is_activation_checkpointing", False):
        # Checkpointed layers run without their KV cache, so the cached prompt would be lost: run whole rows.
        return completion_logprobs_padded(model, prompt_ids, completion_ids, n=n, pad_token_id=pad_token_id,
                                          temperature=temperature, with_entropy=with_entropy, chunk_size=chunk_size)
    decoder, weight = _decoder_and_head(model)
    hidden = completion_hidden_states(decoder, prompt_ids, completion_ids, n=n, pad_token_id=pad_token_id)
    return logprobs_from_hidden(
        hidden, weight, completion_ids.to(weight.device), chunk_size=chunk_size, temperature=temperature,
        with_entropy=with_entropy,
    )


def completion_hidden_states(decoder, prompt_ids: list[list[int]], completion_ids: torch.Tensor, *, n: int,
                             pad_token_id: int) -> torch.Tensor:
    """The decoder's last hidden states ``(P * n, T, H)`` that predict each completion token: row ``r``, column
    ``t`` is the state after ``prompt + completion[:t]`` (the prompt's last state for ``t = 0``). Each distinct
    prompt is run once and its KV cache repeated for its ``n`` completions (same contract as
    :func:`completion_logprobs`). ``decoder`` is a transformers decoder (``model.get_decoder()``); a value head
    on these states gives V(s_t) of the state before token ``t``."""
    device = next(decoder.parameters()).device
    rows, width = completion_ids.shape
    if rows != len(prompt_ids) * n:
        raise ValueError(f"completion_ids has {rows} rows but {len(prompt_ids)} prompts x n={n} were given")
    ids, attn = pad_left(prompt_ids, pad_token_id)
    ids, attn = ids.to(device), attn.to(device)
    cache = DynamicCache(config=decoder.config)
    prefix = decoder(
        input_ids=ids, attention_mask=attn.long(), position_ids=left_padded_positions(attn),
        **cache_kwargs(decoder, cache), use_cache=True,
    ).last_hidden_state[:, -1:, :]  # predicts each completion's first token
    if n > 1:
        cache.batch_repeat_interleave(n)
        prefix = prefix.repeat_interleave(n, dim=0)
        attn = attn.repeat_interleave(n, dim=0)
    if width <= 1:
        return prefix
    completion_ids = completion_ids.to(device)
    full_attn = torch.cat([attn, torch.ones((rows, width - 1), dtype=attn.dtype, device=device)], dim=1)
    start = attn.sum(dim=1, keepdim=True)
    positions = start + torch.arange(width - 1, device=device)[None, :]
    body = decoder(
        input_ids=completion_ids[:, :-1], attention_mask=full_attn.long(), position_ids=positions,
        **cache_kwargs(decoder, cache), use_cache=True,
    ).last_hidden_state
    return torch.cat([prefix, body], dim=1)


def completion_logprobs_padded(model, prompt_ids: list[list[int]], completion_ids: torch.Tensor, *, n: int,
                               pad_token_id: int, temperature: float = 1.0, with_entropy: bool = False,
                               chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reference path: one forward over every ``[left-padded prompt | completion]`` row (same contract)."""
    hidden, weight = _completion_hidden(model, [p for p in prompt_ids for _ in range(n)], completion_ids,
                                        pad_token_id=pad_token_id)
    return logprobs_from_hidden(
        hidden, weight, completion_ids.to(weight.device), chunk_size=chunk_size, temperature=temperature,
        with_entropy=with_entropy,
    )


def completion_logits(
    model, prompt_ids: list[list[int]], completions: list[list[int]], *, pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full-vocabulary logits on each completion, for losses that work on token logits (e.g. pairwise Cringe).

    One forward over ``[left-padded prompt | right-padded completion]`` rows. Returns ``(logits (B, T, V),
    ids (B, T) long, mask (B, T) bool)`` where ``logits[:, t]`` predicts ``ids[:, t]`` and ``mask`` marks real
    completion tokens (``ids`` holds ``pad_token_id`` elsewhere). This materialises ``B * T * V`` logits in the
    compute dtype, so it is for the losses that need them, not for log-probs (:func:`completion_logprobs`).
    """
    ids, mask = pad_right(completions, pad_token_id)
    hidden, weight = _completion_hidden(model, prompt_ids, ids, pad_token_id=pad_token_id)
    return hidden @ weight.t(), ids.to(weight.device), mask.to(weight.device)


def _completion_hidden(model, prompt_ids: list[list[int]], completion_ids: torch.Tensor, *, pad_token_id: int):
    """Last hidden states `(B, T, H)` that predict ``completion_ids`` `(B, T)` given ``prompt_ids[b]``, from one
    forward over ``[left-padded prompt | completion]`` rows, and the LM head weight. Positions after a
    completion's end may hold anything: causality keeps them out of every earlier position."""
    decoder, weight = _decoder_and_head(model)
    device = weight.device
    rows, width = completion_ids.shape
    ids, attn = pad_left(prompt_ids, pad_token_id)
    ids = torch.cat([ids.to(device), completion_ids.to(device)], dim=1)
    attn = torch.cat([attn.to(device), torch.ones((rows, width), dtype=torch.bool, device=device)], dim=1)
    hidden = decoder(input_ids=ids, attention_mask=attn.long(),
                     position_ids=left_padded_positions(attn)).last_hidden_state
    start = ids.shape[1] - width - 1  # the prompt's last position predicts the first completion token
    return hidden[:, start:start + width, :], weight
