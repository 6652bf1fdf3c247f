"""Reference implementations: Python loops over plain floats (float64), written for clarity, not speed.

Each mirrors a function in `rlxf.ops` and is written from the definition, independently of it, so that a
differential test of the two checks the fast path's vectorisation, chunking and masking.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _groups(rewards: Tensor, group_size: int) -> list[list[float]]:
    values = [float(r) for r in rewards]
    return [values[i : i + group_size] for i in range(0, len(values), group_size)]


def group_zscore_reference(rewards: Tensor, group_size: int, *, eps: float = 1e-6) -> Tensor:
    """(r_i - mean) / (population std + eps) within each contiguous group; float64 `(B,)`."""
    out = []
    for group in _groups(rewards, group_size):
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / len(group))
        out += [(r - mean) / (std + eps) for r in group]
    return torch.tensor(out, dtype=torch.float64)


def group_center_reference(rewards: Tensor, group_size: int) -> Tensor:
    """r_i - mean within each contiguous group; float64 `(B,)`."""
    out = []
    for group in _groups(rewards, group_size):
        mean = sum(group) / len(group)
        out += [r - mean for r in group]
    return torch.tensor(out, dtype=torch.float64)


def leave_one_out_reference(rewards: Tensor, group_size: int) -> Tensor:
    """r_i - mean of the other rewards of its group; float64 `(B,)`."""
    out = []
    for group in _groups(rewards, group_size):
        for i, r in enumerate(group):
            others = [group[j] for j in range(len(group)) if j != i]
            out.append(r - sum(others) / len(others))
    return torch.tensor(out, dtype=torch.float64)


def gae_reference(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """GAE row by row over the masked-in steps only (masked steps removed, the episode ends after the last).

    A_t = sum_l (gamma * lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t, V after the end = 0.
    Written as the explicit double sum, not the recursion. Returns float64 `(B, T)` advantages and returns.
    """
    batch, length = rewards.shape
    advantages = torch.zeros(batch, length, dtype=torch.float64)
    returns = torch.zeros(batch, length, dtype=torch.float64)
    for b in range(batch):
        steps = [t for t in range(length) if bool(mask[b, t])]
        r = [float(rewards[b, t]) for t in steps]
        v = [float(values[b, t]) for t in steps] + [0.0]
        deltas = [r[k] + gamma * v[k + 1] - v[k] for k in range(len(steps))]
        for k, t in enumerate(steps):
            adv = sum((gamma * lam) ** (j - k) * deltas[j] for j in range(k, len(steps)))
            advantages[b, t] = adv
            returns[b, t] = adv + v[k]
    return advantages, returns


def aggregate_reference(
    values: Tensor,
    mask: Tensor,
    mode: str,
    *,
    denominator: float | None = None,
    constant: float | None = None,
) -> float:
    """The aggregation modes of `rlxf.ops.aggregate`, written out with loops; returns a Python float."""
    rows = []
    for b in range(values.shape[0]):
        rows.append([float(values[b, t]) for t in range(values.shape[1]) if bool(mask[b, t])])
    if mode == "token_mean":
        total, count = sum(sum(row) for row in rows), sum(len(row) for row in rows)
    elif mode == "seq_mean_token_mean":
        total = sum(sum(row) / len(row) for row in rows if row)
        count = sum(1 for row in rows if row)
    elif mode == "seq_mean_token_sum":
        total, count = sum(sum(row) for row in rows), len(rows)
    elif mode == "token_sum_norm":
        total, count = sum(sum(row) for row in rows), constant
    else:
        raise ValueError(f"unknown mode {mode!r}")
    if denominator is not None:
        count = denominator
    elif mode != "token_sum_norm":
        count = max(count, 1)  # nothing to average: 0, as in the fast path
    return total / count


def logprobs_reference(logits: Tensor, labels: Tensor, *, temperature: float = 1.0) -> Tensor:
    """log_softmax(logits / temperature)[labels] over the full vocabulary at once, in float64.

    Differentiable (autograd through the float64 ops), so it also serves as the gradient reference.
    `(..., V)`, `(...)` -> `(...)` float64.
    """
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)
    return logp.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def entropy_reference(logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """-sum_v p_v log p_v of softmax(logits / temperature), full vocabulary, float64 `(...)`."""
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def sampled_logps_reference(model, prompts: list[list[int]], rollout, temperature: float) -> Tensor:
    """log softmax(logits / temperature) of each sampled token of ``rollout`` `(N, T)`, from one plain forward
    per unpadded ``[prompt | completion]`` row (0 after a completion's end)."""
    out = torch.zeros(rollout.completion_ids.shape)
    for i, tokens in enumerate(rollout.completion_token_lists()):
        prompt = prompts[i // rollout.n]
        logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0]
        logp = torch.log_softmax(logits[len(prompt) - 1:-1].float() / temperature, dim=-1)
        out[i, :len(tokens)] = logp.gather(1, torch.tensor(tokens)[:, None]).squeeze(1)
    return out


@torch.no_grad()
def continuation_logp_reference(model, prompt_ids: list[int], ids: list[int]) -> float:
    """log P(ids | prompt_ids) in float64 from one plain forward over ``[prompt | ids]`` and a full log-softmax."""
    logits = model(input_ids=torch.tensor([prompt_ids + ids])).logits[0].double()
    logps = torch.log_softmax(logits, dim=-1)
    return sum(float(logps[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(ids))
