"""Supervised fine-tuning: the negative log-likelihood of demonstration tokens.

Registered with ``kind="supervised"``: per-token log-probs `(B, T)` of demonstrations and a mask, True on the
tokens trained on (the assistant's). Returns the unreduced per-token loss `(B, T)` (0 where the mask is False);
the recipe reduces it with `rlxf.ops.aggregate`. The maths runs in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.objectives.base import LossOutput, check_token_tensors, masked_metric
from rlxf.objectives.registry import register

__all__ = ["sft_loss"]


@register("sft", kind="supervised")
def sft_loss(policy_logps: Tensor, mask: Tensor) -> LossOutput:
    """Maximum likelihood on demonstrations (the SFT stage of Ouyang et al. 2022, "Training language models to
    follow instructions with human feedback", Sec. 3.5; the paper writes no equation for it):

        L_SFT(theta) = - (1 / N) sum_{(x, y) in batch} sum_t m_t log pi_theta(y_t | x, y_<t)

    where ``m_t`` is 1 on the tokens of the assistant's turns and 0 elsewhere (system and user turns, chat
    template markers before a reply, padding) and ``N = sum m_t`` over the batch.

    Args:
        policy_logps: `(B, T)` float, log pi_theta of each demonstration token given everything before it.
            Values where ``mask`` is False are ignored (they may be anything, -inf included).
        mask: bool `(B, T)`, True on the tokens the loss applies to.

    Returns `LossOutput` with the per-token loss ``-policy_logps`` `(B, T)` float32, 0 where ``mask`` is False,
    and metrics: ``nll`` (mean negative log-likelihood per masked token, 0 when there is none).

    Deviations: none in the per-token loss. The reduction is the recipe's: ``token_mean`` (divide by the masked
    tokens of the whole optimizer batch, so that every token weighs the same and gradient accumulation is
    exact); a per-sequence mean would weigh the tokens of short replies more.
    """
    check_token_tensors(mask, policy_logps=policy_logps)
    # torch.where (not a product with the mask): a -inf or NaN log-prob outside the mask reaches neither the
    # loss nor, through 0 * inf, its gradient.
    loss = torch.where(mask, -policy_logps.float(), 0.0)
    return LossOutput(loss, {"nll": masked_metric(loss, mask)})
