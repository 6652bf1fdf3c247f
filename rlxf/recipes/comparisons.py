"""Stages of the online preference loop: compare each prompt's samples, and the sequence log-probs of rows.

:func:`compare_groups` turns feedback into a within-group preference matrix, whatever kind the feedback is:

* a pairwise source (anything with ``compare``: the pairwise judge, the intransitive oracle) is asked once about
  each unordered pair of distinct completions of a prompt, all pairs of the step in one batched call; the other
  order is ``1 - p`` and two identical completions are a tie (0.5) that costs no call. Each (prompt, a, b) is
  asked at most once per step (a cache), since small policies often repeat themselves;
* a pointwise source (verifier, reward model, gold reward) scores each completion once, and the matrix is
  Bradley-Terry's ``P(a > b) = sigmoid(r_a - r_b)``, the same reading as `rlxf.feedback.BradleyTerryPairwise`.

Each sample's *score* is then its pointwise reward, or for a pairwise source its win rate against the other
samples of its prompt (the SPPO estimate of P(y > pi_t | x)). A group with any non-finite value is marked invalid
and never trained on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rlxf.data import context_of
from rlxf.feedback import finite_mask, validate_scores
from rlxf.models.logps import sequence_logps as packed_or_cached_logps
from rlxf.ops import PAIR_SELECTORS, win_rates_from_comparisons
from rlxf.types import Rollout

__all__ = ["Comparisons", "compare_groups", "compare_to_opponent", "is_pairwise", "rows_of", "select_pairs",
           "sequence_logps"]


@dataclass
class Comparisons:
    """The step's within-group preferences. ``P`` prompts, ``K`` samples each.

    prefs: ``(P, K, K)`` float32, ``prefs[p, i, j]`` = P(sample i better than sample j), 0.5 on the diagonal.
    win_rates: ``(P, K)`` each sample's mean preference over the other K - 1 (the SPPO estimate of P(y > pi_t | x)).
    scores: ``(P, K)`` float32: the pointwise reward, or (pairwise source) the win rate.
    valid: ``(P,)`` bool, False where a value of the group was not finite.
    rewards: ``(P, K)`` pointwise rewards, or None for a pairwise source.
    """

    prefs: Tensor
    win_rates: Tensor
    scores: Tensor
    valid: Tensor
    rewards: Tensor | None
    info: dict[str, list] | None = None  # a pointwise source's per-completion info (e.g. a self-judge's judgements)
    calls: int = 0  # completions scored (pointwise) or pairs asked (pairwise)
    cached: int = 0  # pairs answered without a call: repeated within the step, or two identical completions
    errors: list[str] = field(default_factory=list)


def is_pairwise(feedback: Any) -> bool:
    return callable(getattr(feedback, "compare", None))


def compare_groups(rows: list[dict[str, Any]], texts: list[str], n: int, *, feedback: Any) -> Comparisons:
    """Preferences among each prompt's ``n`` completions ``texts`` (``len(rows) * n``, grouped by prompt)."""
    if is_pairwise(feedback):
        return _pairwise(rows, texts, n, feedback)
    return _pointwise(rows, texts, n, feedback)


def _pointwise(rows, texts, n, feedback) -> Comparisons:
    prompts = [r.get("prompt", "") for r in rows for _ in range(n)]
    scores = validate_scores(feedback(prompts, texts, **context_of(rows, n)), len(texts), on_nonfinite="record")
    rewards = scores.values.float().view(-1, n)
    valid = finite_mask(scores).view(-1, n).all(dim=1)
    safe = torch.where(valid[:, None], rewards, torch.zeros_like(rewards))
    prefs = torch.sigmoid(safe[:, :, None] - safe[:, None, :])
    errors = [str(e) for e in scores.info.get("error", []) if e is not None and e is not False]
    return Comparisons(prefs, win_rates_from_comparisons(prefs), safe, valid, safe, info=scores.info, calls=len(texts),
                       errors=errors)


def _pairwise(rows, texts, n, feedback) -> Comparisons:
    groups = len(rows)
    prefs = torch.full((groups, n, n), 0.5)
    asked: dict[tuple[str, str, str], int] = {}  # (prompt, a, b) -> index into the batched call
    where: list[tuple[int, int, int, tuple[str, str, str], bool]] = []
    query_prompts, query_a, query_b, query_rows = [], [], [], []
    cached = 0
    for g, row in enumerate(rows):
        prompt = row.get("prompt", "")
        for i in range(n):
            for j in range(i + 1, n):
                a, b = texts[g * n + i], texts[g * n + j]
                if a == b:
                    cached += 1
                    continue
                key, flipped = (prompt, a, b), False
                if (prompt, b, a) in asked:
                    key, flipped = (prompt, b, a), True
                if key in asked:  # asked already this step, in either order
                    cached += 1
                else:
                    asked[key] = len(query_a)
                    query_prompts.append(prompt)
                    query_a.append(key[1])
                    query_b.append(key[2])
                    query_rows.append(row)
                where.append((g, i, j, key, flipped))
    valid = torch.ones(groups, dtype=torch.bool)
    errors: list[str] = []
    if query_a:
        out = validate_scores(feedback.compare(query_prompts, query_a, query_b, **context_of(query_rows)),
                              len(query_a),
                              on_nonfinite="record")
        values, finite = out.values.float(), finite_mask(out)
        if bool(((values < 0) | (values > 1))[finite].any()):
            raise ValueError("pairwise feedback returned values outside [0, 1]")
        errors = [str(e) for e in out.info.get("error", []) if e is not None and e is not False]
        for g, i, j, key, flipped in where:
            k = asked[key]
            if not bool(finite[k]):
                valid[g] = False
                continue
            p = float(values[k])
            p = 1.0 - p if flipped else p
            prefs[g, i, j], prefs[g, j, i] = p, 1.0 - p
    win_rates = win_rates_from_comparisons(prefs)
    return Comparisons(prefs, win_rates, win_rates, valid, None, calls=len(query_a), cached=cached, errors=errors)


def compare_to_opponent(rows: list[dict[str, Any]], texts: list[str], opponent_texts: list[str], n: int, *,
                        feedback: Any) -> tuple[Tensor, Tensor]:
    """``(win_rates (P, n), valid (P,))``: P(sample k of prompt p beats the opponent's completion of prompt p), for
    ``n`` samples per prompt and one opponent completion per prompt (Nash-MD's y' from the mixture policy).
    Identical texts tie at 0.5; a pointwise source is read as Bradley-Terry."""
    versus = [opponent_texts[i // n] for i in range(len(texts))]
    prompts = [r.get("prompt", "") for r in rows for _ in range(n)]
    if is_pairwise(feedback):
        out = validate_scores(feedback.compare(prompts, texts, versus, **context_of(rows, n)), len(texts),
                              on_nonfinite="record")
        p, finite = out.values.float(), finite_mask(out)
    else:  # the opponent's completion is scored once per prompt
        mine = validate_scores(feedback(prompts, texts, **context_of(rows, n)), len(texts), on_nonfinite="record")
        theirs = validate_scores(feedback([r.get("prompt", "") for r in rows], opponent_texts, **context_of(rows)),
                                 len(rows), on_nonfinite="record")
        p = torch.sigmoid(mine.values.float() - theirs.values.float().repeat_interleave(n))
        finite = finite_mask(mine) & finite_mask(theirs).repeat_interleave(n)
    same = torch.tensor([a == b for a, b in zip(texts, versus, strict=True)])
    p = torch.where(same | ~finite, torch.full_like(p, 0.5), p)
    return p.view(-1, n), finite.view(-1, n).all(dim=1)


def select_pairs(name: str, comparisons: Comparisons, *, margin: float, rng: torch.Generator | None,
                 lengths: Tensor | None = None, length_tier: float = 0.1) -> list[tuple[int, int, int]]:
    """``(group, chosen, rejected)`` sample indices of the valid pairs that selector ``name`` (`PAIR_SELECTORS`)
    picks from the samples' scores; ``large_margin`` (DNO) reads the win rates and ``margin``, ``random_pair``
    draws with ``rng``, ``length_controlled`` (Meta-Rewarding) reads the completions' ``lengths`` ``(P, K)`` and
    the quality tier ``length_tier``. Groups whose feedback was not finite give no pair."""
    def masked(values: Tensor) -> Tensor:
        return torch.where(comparisons.valid[:, None], values, torch.full_like(values, math.nan))

    selector = PAIR_SELECTORS[name]
    if name == "large_margin":
        pairs = selector(masked(comparisons.win_rates), margin)
    elif name == "random_pair":
        pairs = selector(masked(comparisons.scores), rng)
    elif name == "length_controlled":
        pairs = selector(masked(comparisons.scores), lengths, length_tier)
    else:
        pairs = selector(masked(comparisons.scores))
    chosen, rejected, valid = (t if t.dim() == 2 else t[:, None] for t in pairs)
    return [(g, int(chosen[g, p]), int(rejected[g, p])) for g, p in valid.nonzero().tolist()]


def sequence_logps(model, prompt_ids: list[list[int]], completion_ids: Tensor, mask: Tensor, *, n: int,
                   pad_token_id: int, precision: str = "fp32") -> Tensor:
    """``(rows,)`` summed log pi(y|x) of each completion row (``n`` consecutive rows per prompt), at temperature 1:
    the policy's own probability, the one the preference losses are written in. Plain llama models run packed
    (`rlxf.models.logps.sequence_logps`: one row of real tokens, no padding, each prompt once), others on the
    prompt's KV cache."""
    lengths = mask.sum(dim=1).tolist()
    rows = [completion_ids[i, :length].tolist() for i, length in enumerate(lengths)]
    groups = [rows[p * n:(p + 1) * n] for p in range(len(prompt_ids))]
    sums, _, _ = packed_or_cached_logps(model, prompt_ids, groups, pad_token_id=pad_token_id, precision=precision)
    return sums.reshape(-1)


def rows_of(rollout: Rollout, indices: list[int]) -> tuple[Tensor, Tensor]:
    """``(completion_ids, mask)`` of the rollout rows ``indices``, trimmed to their longest completion."""
    index = torch.tensor(indices, dtype=torch.long)
    ids, mask = rollout.completion_ids[index], rollout.completion_mask[index]
    width = max(1, int(mask.sum(dim=1).max())) if len(indices) else 1
    return ids[:, :width], mask[:, :width]
