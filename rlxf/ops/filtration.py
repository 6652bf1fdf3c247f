"""Policy filtration: which of each prompt's sampled completions the update trains on (PF-PPO).

Zhang et al. 2024, "Policy Filtration in RLHF to Fine-Tune LLM for Code Generation" (later "Policy Filtration
for RLHF to Mitigate Noise in Reward Models"), sec. 4. For each prompt, N completions are sampled and ranked by
reward, R(y_1) >= ... >= R(y_N); the filtered policy mu_theta picks the completion of rank i with probability w_i:

    w_BoN = (1, 0, ..., 0),  w_BR = (1/2, 1/(2(N-1)), ..., 1/(2(N-1))),  w_BW = (1/2, 0, ..., 0, 1/2),

and PPO trains on the picked completions as if mu_theta had sampled them (Algorithm 2, objective eq. 5).
Here a strategy returns a keep-mask over the batch that holds each weight vector's support once: best-of-N
keeps the best; best-random the best and one of the other N - 1 drawn uniformly (the two halves of w_BR);
best-worst the best and the worst. That is the paper's "2 out of the N = 5 responses" per prompt (Table 4).
The paper finds BR and BW best and BoN worse than unfiltered PPO (Table 2, pass@1 on HumanEval / MBPP / LeetCode:
BR 82.9 / 75.9 / 33.0, BW 82.4 / 76.2 / 30.4, BoN 75.8 / 71.7 / 16.8, PPO 78.1 / 73.8 / 25.2), and recommends
choosing the strategy by the R^2 between reward and true score on the filtered samples (Tables 1 and 3).

Every strategy takes rewards `(B,)`, B = n_groups * group_size, each prompt's completions contiguous, and returns
a bool `(B,)` keep-mask. Only finite rewards are ranked: a NaN or inf reward (a scorer failure) is never kept, a
group with no finite reward keeps nothing, and N is the number of finite rewards of the group. Ties are ranked
in sampling order (a stable sort): of several equal best the earliest is the best, of several equal worst the
latest is the worst, so best-worst keeps two completions whenever a group has two finite rewards, even if equal.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FILTRATION_STRATEGIES", "filter_best", "filter_best_random", "filter_best_worst", "policy_filtration"]


def _ranked(rewards: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(finite `(G, N)`, best `(G,)`, worst `(G,)`, has_any `(G,)`): index of the best and worst finite reward."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (B,), got shape {tuple(rewards.shape)}")
    if not rewards.dtype.is_floating_point:
        raise ValueError(f"rewards must be a float tensor, got dtype {rewards.dtype}")
    if group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(f"rewards of length {rewards.shape[0]} cannot be split into groups of size {group_size}")
    g = rewards.detach().view(-1, group_size)
    finite = torch.isfinite(g)
    # argmax/argmin return the first extreme: first best in sampling order, and (on the flipped row) last worst.
    best = torch.where(finite, g, -torch.inf).argmax(dim=1)
    worst = group_size - 1 - torch.where(finite, g, torch.inf).flip(1).argmin(dim=1)
    return finite, best, worst, finite.any(dim=1)


def _keep(finite: Tensor, *indices: Tensor) -> Tensor:
    keep = torch.zeros_like(finite)
    for index in indices:
        keep.scatter_(1, index[:, None], True)
    return (keep & finite).view(-1)


def filter_best(rewards: Tensor, group_size: int, *, rng: torch.Generator | None = None) -> Tensor:
    """Best-of-N (BoN): keep each group's best finite reward. `rng` is not used (deterministic)."""
    finite, best, _, _ = _ranked(rewards, group_size)
    return _keep(finite, best)


def filter_best_worst(rewards: Tensor, group_size: int, *, rng: torch.Generator | None = None) -> Tensor:
    """Best-worst (BW): keep each group's best and worst finite reward. `rng` is not used (deterministic)."""
    finite, best, worst, _ = _ranked(rewards, group_size)
    return _keep(finite, best, worst)


def filter_best_random(rewards: Tensor, group_size: int, *, rng: torch.Generator | None = None) -> Tensor:
    """Best-random (BR): keep each group's best and one other finite reward drawn uniformly.

    The draw uses `rng` (a `torch.Generator` on the rewards' device; the global generator if None): one uniform
    number per completion, the eligible completion with the largest wins, so a seeded generator reproduces the
    choice. A group with a single finite reward keeps only it.
    """
    finite, best, _, _ = _ranked(rewards, group_size)
    n_groups = finite.shape[0]
    columns = torch.arange(group_size, device=finite.device)
    eligible = finite & (columns[None, :] != best[:, None])
    draws = torch.rand(n_groups, group_size, generator=rng, device=finite.device)
    other = torch.where(eligible, draws, -1.0).argmax(dim=1)
    return _keep(finite, best) | _keep(eligible, other)


FILTRATION_STRATEGIES = {
    "best": filter_best,
    "best_random": filter_best_random,
    "best_worst": filter_best_worst,
}


def policy_filtration(
    rewards: Tensor, group_size: int, *, strategy: str, rng: torch.Generator | None = None
) -> Tensor:
    """PF-PPO keep-mask `(B,)` bool for `rewards` `(B,)` in groups of `group_size`, by a named strategy.

    `strategy` is a key of `FILTRATION_STRATEGIES` ("best", "best_random", "best_worst"; the paper's BoN, BR,
    BW); `rng` seeds "best_random" and is ignored by the others. See the module docstring for the ranking.
    """
    if strategy not in FILTRATION_STRATEGIES:
        raise ValueError(f"unknown filtration strategy {strategy!r}; choose one of {sorted(FILTRATION_STRATEGIES)}")
    return FILTRATION_STRATEGIES[strategy](rewards, group_size, rng=rng)
