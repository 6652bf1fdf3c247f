"""Reference for `rlxf.objectives.cringe_pairwise_loss`: an explicit loop over pairs and tokens, in float64.

Written from the paper's definition, independently of the vectorised loss: per rejected token it ranks the
vocabulary with Python's `sorted`, builds the top-k candidate list without the negative token, turns the
candidates' logits into probabilities with `math.exp`, and walks the cumulative sum to the uniform draw.
Arithmetic on the logits uses scalar torch ops, so that gradients can be compared as well as values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _softplus(x: Tensor) -> Tensor:
    """log(1 + e^x) for a scalar tensor, written out stably: max(x, 0) + log(1 + e^-|x|)."""
    return torch.clamp(x, min=0.0) + torch.log1p(torch.exp(-torch.abs(x)))


def cringe_positive_reference(row: list[float], negative: int, k: int, u: float) -> int:
    """The positive token for one position: candidates are the k highest-logit tokens other than `negative`,
    drawn with probability proportional to exp(logit) by inverse CDF at the uniform `u`."""
    ranked = sorted(range(len(row)), key=lambda v: -row[v])
    candidates = [v for v in ranked if v != negative][:k]
    top = max(row[v] for v in candidates)
    weights = [math.exp(row[v] - top) for v in candidates]
    total = sum(weights)
    cumulative = 0.0
    for v, w in zip(candidates, weights, strict=True):
        cumulative += w / total
        if u < cumulative:
            return v
    return candidates[-1]


def cringe_pairwise_reference(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_logits: Tensor,
    rejected_ids: Tensor,
    rejected_mask: Tensor,
    uniforms: Tensor,
    *,
    alpha: float,
    margin: float,
    tau: float,
    k: int,
) -> tuple[Tensor, list[list[int | None]]]:
    """Per-pair loss `(B,)` (float64, differentiable w.r.t. the logits and the chosen log-probs) and the
    positive token chosen at each position (None where masked).

    `uniforms (B, T)` are the draws the fast path makes: ``torch.rand((B, T), generator=g)`` from the same seed.
    loss_i = -logp_w / |y_w| + alpha * sigma((b - (logp_w - logp_l)) / tau) * mean_t softplus(s_t[y_t] - s_t[c_t]),
    with the gate's argument treated as a constant."""
    batch, length, _ = rejected_logits.shape
    losses, positives = [], []
    for i in range(batch):
        token_terms, row_positives = [], []
        for t in range(length):
            if not bool(rejected_mask[i, t]):
                row_positives.append(None)
                continue
            logits = rejected_logits[i, t].double()
            negative = int(rejected_ids[i, t])
            positive = cringe_positive_reference(logits.tolist(), negative, k, float(uniforms[i, t]))
            row_positives.append(positive)
            token_terms.append(_softplus(logits[negative] - logits[positive]))
        cringe = sum(token_terms) / len(token_terms) if token_terms else torch.zeros((), dtype=torch.float64)
        logp_w = policy_chosen_logps[i].double()
        gap = float(policy_chosen_logps[i].detach()) - float(policy_rejected_logps[i].detach())
        gate = 1.0 / (1.0 + math.exp(-(margin - gap) / tau))
        nll = -logp_w / max(float(chosen_lengths[i]), 1.0)
        losses.append(nll + alpha * gate * cringe)
        positives.append(row_positives)
    return torch.stack(losses), positives
