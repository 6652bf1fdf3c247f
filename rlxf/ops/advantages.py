"""Advantage estimators.

Group estimators take rewards `(B,)` with B = n_groups * group_size and each prompt's completions contiguous
(rows g*G .. g*G+G-1 belong to group g) and return `(B,)` float32. `gae`, `kl_shaped_rewards` and
`reinforce_pp` work per token on `(B, T)`. Advantages are constants to the policy gradient, so every estimator
returns a detached tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.ops.masked import masked_whiten

__all__ = [
    "group_zscore",
    "group_center",
    "leave_one_out",
    "gae",
    "kl_shaped_rewards",
    "remax",
    "reinforce_pp",
    "ADVANTAGE_ESTIMATORS",
    "ESTIMATOR_SUMMARIES",
]


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


def _check_token_inputs(rewards: Tensor, logps: Tensor, ref_logps: Tensor, mask: Tensor) -> None:
    if logps.dim() != 2 or logps.shape != ref_logps.shape or logps.shape != mask.shape:
        raise ValueError(
            "logps, ref_logps and mask must all be (B, T); got "
            f"{tuple(logps.shape)}, {tuple(ref_logps.shape)}, {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if rewards.dim() != 1 or rewards.shape[0] != logps.shape[0]:
        raise ValueError(f"rewards must be (B,) with B = {logps.shape[0]}, got shape {tuple(rewards.shape)}")


@torch.no_grad()
def kl_shaped_rewards(rewards: Tensor, logps: Tensor, ref_logps: Tensor, mask: Tensor, *, beta: float) -> Tensor:
    """Per-token reward of KL-penalised RLHF (Ziegler et al. 2019, eq. 2; Ouyang et al. 2022, InstructGPT eq. 2).

    R(x, y) = r(x, y) - beta log(pi(y|x) / pi_ref(y|x)), spread over the tokens of y as in their PPO:
    r_t = -beta (log pi(y_t|x, y_<t) - log pi_ref(y_t|x, y_<t)) + [t = last token of y] r(x, y),
    which REINFORCE++ writes as r(s_t, a_t) = I(s_t = [EOS]) r(x, y) - beta KL(t) (Hu 2025, v1 eqs. 4-5).

    `rewards`: `(B,)` sequence rewards r(x, y); `logps`, `ref_logps`: `(B, T)` log-probs of the sampled tokens
    under the sampling policy and the reference; `mask`: bool `(B, T)`. Returns `(B, T)` float32, detached.
    Every masked-in token gets the KL term, the row's last masked-in token also gets `rewards[b]`, masked
    positions get 0 and nothing in them (NaN, inf, padding) is read. Any mask works, holes included: the
    sequence reward goes to the last True of the row. A row with no masked-in token carries nothing (all 0;
    its sequence reward is dropped). Sum over t of a row = r(x, y) - beta * (sum of the per-token log-ratios),
    the k1 estimate of the sequence KL. Feed the result to `gae` (PPO with a critic) or to `reinforce_pp`.
    *Deviations*: none; the KL coefficient is fixed here, an adaptive controller (Ziegler et al. 2019) is the
    recipe's business.
    """
    _check_token_inputs(rewards, logps, ref_logps, mask)
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    batch, length = mask.shape
    if length == 0:
        return torch.zeros(batch, 0, device=mask.device)
    kl_reward = torch.where(mask, -beta * (logps.float() - ref_logps.float()), 0.0)
    positions = torch.arange(length, device=mask.device)
    last = torch.where(mask, positions, -1).amax(dim=1)  # -1 for a row with no tokens: matches no position
    is_last = positions[None, :] == last[:, None]
    return kl_reward + torch.where(is_last, rewards.float()[:, None], 0.0)


def remax(rewards: Tensor, baseline_rewards: Tensor, group_size: int) -> Tensor:
    """ReMax advantage (Li et al. 2023, Algorithm 1): A_i = r(x, y_i) - r(x, y_greedy).

    The ReMax gradient estimate is (1/N) sum_i sum_t grad log pi(a_t^i | x^i, a_<t^i) (r(x^i, a^i) - b(x^i))
    with the baseline b(x) = r(x, a_bar), a_bar_t in argmax pi(. | x, a_bar_<t): the reward of the prompt's
    greedy completion. `rewards`: `(B,)`, B = P * group_size, each prompt's G sampled completions contiguous;
    `baseline_rewards`: `(P,)` the reward of each prompt's greedy completion. Returns `(B,)` float32, detached.
    *Deviations*: the paper samples one completion per prompt; `group_size` > 1 shares one greedy baseline
    among G samples (still unbiased: the greedy completion does not depend on the samples). A non-finite
    reward or baseline gives a non-finite advantage for the rows it touches, nothing else.
    """
    g = _groups(rewards, group_size)
    if baseline_rewards.dim() != 1 or baseline_rewards.shape[0] != g.shape[0]:
        raise ValueError(
            f"baseline_rewards must be (P,) with P = {g.shape[0]} prompts, got shape {tuple(baseline_rewards.shape)}"
        )
    return (g - baseline_rewards.detach().float()[:, None]).reshape(-1)


@torch.no_grad()
def reinforce_pp(
    rewards: Tensor,
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    *,
    beta: float,
    gamma: float = 1.0,
    group_size: int | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++ advantage (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language
    Models", v1 eqs. 4-5, 7, 8; later versions "... Stabilizing Critic-Free Policy Optimization with Global
    Advantage Normalization" renumber them).

    r_t = I(s_t = [EOS]) r(x, y) - beta KL(t), KL(t) = log pi_old(a_t|s_t) - log pi_SFT(a_t|s_t)   (4, 5)
    G_t = sum_{s >= t} gamma^(s - t) r_s (gamma = 1: A_t = r(x, y) - beta sum_{i=t}^T KL(i))      (7)
    A_norm = (G - mean) / std, mean and std over every masked-in token of the batch                 (8)

    `rewards`: `(B,)` sequence rewards; `logps`: `(B, T)` log-probs of the sampled tokens under the sampling
    (old) policy; `ref_logps`: `(B, T)` under the reference; `mask`: bool `(B, T)`. Returns `(B, T)` float32,
    detached, 0 at masked positions. The token rewards are `kl_shaped_rewards`; G is `gae` with V = 0 and
    lam = 1 (exactly the discounted return-to-go), so it runs over the masked-in tokens of a row only, a hole
    being skipped; the whitening is `masked_whiten` (population variance, one statistic for the batch).
    `group_size` gives REINFORCE++-baseline: `rewards` minus the mean reward of the prompt's group (each
    group's G completions contiguous) before the KL shaping, as OpenRLHF's `reinforce_baseline` does
    (no division by the group std). An all-masked batch gives zeros.
    *Deviations*: (G - mean) / sqrt(var + eps), where OpenRLHF uses (G - mean) * rsqrt(max(var, 1e-8)); the
    two agree once var >> eps. OpenRLHF forces gamma = 1 for the baseline variant and, with its
    `--use_kl_loss`, puts the KL in the loss instead of the reward: pass beta = 0 for that. A non-finite
    reward of a row with tokens makes the batch statistics, hence every advantage, non-finite.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if group_size is not None:
        rewards = group_center(rewards, group_size)
    token_rewards = kl_shaped_rewards(rewards, logps, ref_logps, mask, beta=beta)
    returns, _ = gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma=gamma, lam=1.0)
    return masked_whiten(returns, mask, eps=eps)


ADVANTAGE_ESTIMATORS = {
    "group_zscore": group_zscore,
    "group_center": group_center,
    "leave_one_out": leave_one_out,
}


# Every estimator the online RL recipe accepts as ``advantage=<name>``, with a summary for `rlxf list`: the group
# estimators above (functions of each group's rewards) and those that need more inputs, which the recipe computes
# in a stage of its own (a critic's values, the greedy reply's reward, the policy's and the reference's log-probs).
ESTIMATOR_SUMMARIES = {
    "group_zscore": "GRPO (Shao et al. 2024): (r - group mean) / group std",
    "group_center": "Dr. GRPO (Liu et al. 2025): r - group mean",
    "leave_one_out": "RLOO (Ahmadian et al. 2024): r - mean of the group's other rewards",
    "remax": "ReMax (Li et al. 2023): r - reward of the prompt's greedy reply (sampled too)",
    "reinforce_pp": "REINFORCE++ (Hu 2025): KL-shaped token returns, normalised over the batch's tokens",
    "reinforce_pp_baseline": "REINFORCE++-baseline: as reinforce_pp, rewards centred per group first",
    "gae": "GAE (Schulman et al. 2016) on a learned critic and the KL-shaped token reward: actor-critic PPO",
}
