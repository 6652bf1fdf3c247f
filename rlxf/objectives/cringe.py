"""Pairwise Cringe loss: NLL on the chosen completion plus a margin-gated token-level Cringe loss on the rejected.

Registered with ``kind="preference"``. Unlike the other preference losses it also needs the policy's logits on
the rejected completion (`rejected_logits (B, T, V)`), because the Cringe loss contrasts every rejected token
with a token sampled from the model's own top-k. Returns the unreduced per-pair loss `(B,)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rlxf.objectives.base import LossOutput, check_pair_tensors, masked_metric, pair_metrics
from rlxf.objectives.registry import register

__all__ = ["cringe_pairwise_loss", "sample_cringe_positives"]


def _check_rejected_tokens(rejected_logits: Tensor, rejected_ids: Tensor, rejected_mask: Tensor, batch: int) -> None:
    if rejected_logits.dim() != 3 or not rejected_logits.dtype.is_floating_point:
        raise ValueError(
            f"rejected_logits must be a float (B, T, V) tensor, got shape {tuple(rejected_logits.shape)} "
            f"dtype {rejected_logits.dtype}"
        )
    if rejected_logits.shape[0] != batch:
        raise ValueError(f"rejected_logits has {rejected_logits.shape[0]} rows, expected B = {batch}")
    if rejected_logits.shape[-1] < 2:
        raise ValueError("rejected_logits needs a vocabulary of at least 2 tokens to sample a positive")
    lead = tuple(rejected_logits.shape[:2])
    if rejected_mask.dtype != torch.bool or tuple(rejected_mask.shape) != lead:
        raise ValueError(
            f"rejected_mask must be a bool (B, T) = {lead} tensor, got shape {tuple(rejected_mask.shape)} "
            f"dtype {rejected_mask.dtype}"
        )
    if rejected_ids.dtype != torch.long or tuple(rejected_ids.shape) != lead:
        raise ValueError(
            f"rejected_ids must be a long (B, T) = {lead} tensor, got shape {tuple(rejected_ids.shape)} "
            f"dtype {rejected_ids.dtype}"
        )
    ids = rejected_ids[rejected_mask]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= rejected_logits.shape[-1]):
        raise ValueError(f"rejected_ids must lie in [0, V = {rejected_logits.shape[-1]}) where rejected_mask is True")


@torch.no_grad()
def sample_cringe_positives(
    logits: Tensor, negative_ids: Tensor, *, k: int, generator: torch.Generator | None = None
) -> Tensor:
    """For each position draw a positive token from the model's top-k predictions, excluding the negative token.

    The k+1 highest logits are taken; the negative token is dropped from them if it is among them, else the
    (k+1)-th is dropped, which leaves the top-k without the negative. The positive is drawn from the softmax of
    the remaining k logits (Adolphs et al. 2022, Sec. 3) by inverse-CDF sampling with one uniform
    ``torch.rand(negative_ids.shape, generator=generator)`` per position (so a reference can replay the draws;
    the generator must live on the logits' device).
    With V <= k the candidates are all tokens but the negative.

    Shapes: `logits (B, T, V)`, `negative_ids (B, T)` long, valid indices; returns long `(B, T)` token ids.
    """
    candidates = min(k + 1, logits.shape[-1])
    top_values, top_ids = logits.topk(candidates, dim=-1)
    is_negative = top_ids == negative_ids.unsqueeze(-1)
    is_last = torch.arange(candidates, device=logits.device) == candidates - 1
    excluded = is_negative | (~is_negative.any(-1, keepdim=True) & is_last)
    probs = torch.softmax(top_values.float().masked_fill(excluded, float("-inf")), dim=-1)
    uniform = torch.rand(negative_ids.shape, generator=generator, device=logits.device)
    # The first slot whose CDF exceeds u; excluded slots have probability 0 and are never the first. A u above
    # the rounded total mass (count == candidates) falls back to the last allowed slot.
    choice = (probs.cumsum(-1) <= uniform.unsqueeze(-1)).sum(-1)
    last_allowed = torch.where(excluded[..., -1], candidates - 2, candidates - 1)
    choice = torch.where(choice >= candidates, last_allowed, choice)
    return top_ids.gather(-1, choice.unsqueeze(-1)).squeeze(-1)


@register("cringe_pairwise", kind="preference")
def cringe_pairwise_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_logits: Tensor,
    rejected_ids: Tensor,
    rejected_mask: Tensor,
    *,
    alpha: float = 1.0,
    margin: float = 0.0,
    tau: float = 1.0,
    k: int = 5,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """Pairwise Cringe loss (Xu et al. 2023, "Some things are more CRINGE than others: Iterative Preference
    Optimization with the Pairwise Cringe Loss", eq. 1-3):

        L_Cr(x, y) = -sum_t log( exp(s_t[c_t]) / (exp(s_t[c_t]) + exp(s_t[y_t])) )                 (1)
        L_Pair(x, y_w, y_l) = L_NLL(x, y_w) + alpha g(x, y_w, y_l) L_Cr(x, y_l)                     (2)
        g(x, y_w, y_l) = sigma( (b - M) / tau ),   M = log p(y_w|x) - log p(y_l|x)                   (3)

    s_t are the policy's logits at step t of the rejected completion y_l, y_t its token (the negative) and c_t a
    positive token sampled from the model's top-k at that step with y_t excluded (`sample_cringe_positives`);
    each term of (1) is computed as ``softplus(s_t[y_t] - s_t[c_t])``. The gate switches the Cringe term off
    for pairs the model already separates by more than the margin b, softly with temperature tau.

    Args:
        policy_chosen_logps, policy_rejected_logps: `(B,)` summed log-probs log p(y_w|x), log p(y_l|x); M is
            their difference.
        chosen_lengths: `(B,)` float token counts of the chosen completions (for the token-averaged NLL).
        rejected_logits: `(B, T, V)` policy logits on the rejected completion, aligned so that position t
            predicts ``rejected_ids[:, t]`` (any float dtype; only gathered values are upcast to float32).
        rejected_ids: long `(B, T)` rejected completion tokens (any value where masked out).
        rejected_mask: bool `(B, T)`, True on the rejected completion's tokens.
        alpha: weight of the Cringe term (the paper's alpha).
        margin: the margin b of the gate (in units of summed log-prob).
        tau: the gate's temperature tau (> 0).
        k: top-k for the positive token (k >= 1).
        generator: RNG for the positive-token draws (deterministic tests).

    Per pair the loss is ``-log p(y_w|x) / |y_w| + alpha * g * L_Cr(x, y_l) / |y_l|``.
    Deviations and choices: (i) both the NLL and the Cringe term are token means per completion (the Cringe
    reference code averages over tokens; eq. 1 writes a sum); (ii) the gate is a weight: M enters it detached,
    so the gradient reaches log p(y_w|x) only through the NLL and the rejected tokens only through L_Cr;
    (iii) the positive's logit s_t[c_t] keeps its gradient (it is pushed up), as in the Cringe reference code;
    (iv) the iterative part of the paper (regenerating pairs with a reward model) is a recipe, not this loss.
    The default margin, tau and alpha are neutral choices, not the paper's tuned values.

    Returns `LossOutput` with the per-pair loss `(B,)` and metrics: `pair_metrics` of the sequence log-probs,
    ``gate`` (mean g), ``nll`` (mean token-averaged NLL of y_w), ``cringe`` (mean token-averaged L_Cr) and
    ``positive_logit_gap`` (mean s_t[c_t] - s_t[y_t] over rejected tokens).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    batch = check_pair_tensors(
        policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        chosen_lengths=chosen_lengths,
    )
    _check_rejected_tokens(rejected_logits, rejected_ids, rejected_mask, batch)

    negative_ids = torch.where(rejected_mask, rejected_ids, 0)
    positive_ids = sample_cringe_positives(rejected_logits.detach(), negative_ids, k=k, generator=generator)
    negative = rejected_logits.gather(-1, negative_ids.unsqueeze(-1)).squeeze(-1).float()
    positive = rejected_logits.gather(-1, positive_ids.unsqueeze(-1)).squeeze(-1).float()
    token_loss = torch.where(rejected_mask, F.softplus(negative - positive), 0.0)
    cringe = token_loss.sum(1) / rejected_mask.sum(1).clamp(min=1)

    chosen, rejected = policy_chosen_logps.float(), policy_rejected_logps.float()
    gate = torch.sigmoid((margin - (chosen - rejected).detach()) / tau)
    nll = -chosen / chosen_lengths.float().clamp(min=1.0)
    loss = nll + alpha * gate * cringe

    metrics = pair_metrics(chosen, rejected)
    metrics.update(
        gate=gate.detach().mean(),
        nll=nll.detach().mean(),
        cringe=cringe.detach().mean(),
        positive_logit_gap=masked_metric(positive - negative, rejected_mask),
    )
    return LossOutput(loss, metrics)
