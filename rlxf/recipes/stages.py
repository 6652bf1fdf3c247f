"""Stages every online loop shares: sample completions, score them, turn scores into group advantages.

Each is a plain function over the shared records (`rlxf.types`); a recipe binds them to its generator, feedback
and config (``functools.partial``) and hands them to an executor (`rlxf.distributed`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rlxf.data import context_of, encode_prompts
from rlxf.feedback import finite_mask, validate_scores
from rlxf.rollout import Generator
from rlxf.types import Rollout, Scores

__all__ = ["group_advantages", "sample", "score"]


def sample(rows: list[dict[str, Any]], *, generator: Generator, tokenizer: Any, n: int, max_new_tokens: int,
           temperature: float, rng: torch.Generator) -> Rollout:
    """``n`` completions for each prompt row (chat-templated, token ids in and out)."""
    prompt_ids = encode_prompts(tokenizer, rows)
    return generator.generate(prompt_ids, n=n, max_new_tokens=max_new_tokens, temperature=temperature, rng=rng)


def score(rows: list[dict[str, Any]], rollout: Rollout, *, feedback: Callable[..., Scores], tokenizer: Any) -> Scores:
    """The feedback's scores of the decoded completions, with each row's other fields as context (and the
    completions' token counts as ``completion_tokens``, for length-aware feedback). Non-finite scores are
    recorded in ``info["nonfinite"]`` and replaced by 0, never trained on (:func:`group_advantages`)."""
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in rollout.completion_token_lists()]
    prompts = [r.get("prompt", "") for r in rows for _ in range(rollout.n)]
    context = {**context_of(rows, rollout.n), "completion_tokens": rollout.lengths.tolist()}
    return validate_scores(feedback(prompts, texts, **context), len(texts), on_nonfinite="record")


def group_advantages(scores: Scores, rollout: Rollout, *, estimator: Callable[[Tensor, int], Tensor]) -> Tensor:
    """``estimator``'s advantages ``(N,)`` per group of ``n``, where a non-finite reward (recorded by
    :func:`score`) must not be trained on: such rows get 0 and their group's estimator runs over its finite
    rewards only (a group with fewer than two finite rewards gets 0 throughout)."""
    n, rewards, finite = rollout.n, scores.values.float(), finite_mask(scores)
    advantages = estimator(rewards, n)
    if bool(finite.all()):
        return advantages
    for g in torch.nonzero(~finite.view(-1, n).all(dim=1)).flatten().tolist():
        rows = slice(g * n, (g + 1) * n)
        ok = finite[rows]
        group = torch.zeros(n, dtype=advantages.dtype)
        if int(ok.sum()) >= 2:
            group[ok] = estimator(rewards[rows][ok], int(ok.sum()))
        advantages[rows] = group
    return advantages
