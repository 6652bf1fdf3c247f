"""Advantage estimators.

Group estimators take rewards `(B,)` with B = n_groups * group_size and each prompt's completions contiguous
(rows g*G .. g*G+G-1 belong to group g) and return `(B,)` float32. `gae` works per token on `(B, T)`.
Advantages are constants to the policy gradient, so every estimator returns a detached tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["group_zscore", "group_center", "leave_one_out", "gae", "ADVANTAGE_ESTIMATORS"]


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (B,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"rewards of length {rewards.shape[0]} cannot be split into groups of size {group_size}"
        )
    return rewards.detach().float().view(-1, group_size)


def group_zscore(rewards: Tensor, group_size: int, *, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantage (Shao et al. 2024, DeepSeekMath, sec. 4.1.2): A_i = (r_i - mean) / (std + eps).

    Mean and std are over the G rewards of the prompt's group. Deviation: std is the population std
    (divide by G), not the unbiased one (divide by G - 1) that TRL uses; the paper does not say which.
    A group whose rewards are all equal gets advantages 0.
    """
    g = _groups(rewards, group_size)
    mean = g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, keepdim=True, unbiased=False)
    return ((g - mean) / (std + eps)).view(-1)


def group_center(rewards: Tensor, group_size: int) -> Tensor:
    """Dr. GRPO advantage (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A_i = r_i - mean(r)."""
    g = _groups(rewards, group_size)
    return (g - g.mean(dim=1, keepdim=True)).view(-1)


def leave_one_out(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO advantage (Ahmadian et al. 2024): A_i = r_i - 1/(G-1) sum_{j != i} r_j = G/(G-1) (r_i - mean(r)).

    `group_size` must be >= 2 (the baseline of a lone sample is undefined).
    """
    if group_size < 2:
        raise ValueError(f"leave_one_out needs group_size >= 2, got {group_size}")
    g = _groups(rewards, group_size)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).view(-1)


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) per token.

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1};  returns R_t = A_t + V_t.

    `rewards`, `values`: `(B, T)`; `mask`: bool `(B, T)`. Returns `(advantages, returns)`, both `(B, T)`
    float32 and detached. The recursion runs over the masked-in tokens of each row only: masked positions get
    0 and neither their reward nor their value propagates, and after a row's last token the episode ends
    (V = 0). For right-padded completions this is the usual terminal bootstrap; a masked hole in the middle of
    a row (e.g. tool output) is skipped, the tokens on either side being consecutive steps.
    Vectorised over B; the loop over T is inherent to the recursion.
    """
    if rewards.dim() != 2 or rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            "rewards, values and mask must all be (B, T); got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    rewards, values = rewards.float(), values.float()
    batch, length = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(batch)
    next_advantage = rewards.new_zeros(batch)
    for t in reversed(range(length)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(m, advantage, 0.0)
        next_advantage = torch.where(m, advantage, next_advantage)
        next_value = torch.where(m, values[:, t], next_value)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


ADVANTAGE_ESTIMATORS = {
    "group_zscore": group_zscore,
    "group_center": group_center,
    "leave_one_out": leave_one_out,
}
