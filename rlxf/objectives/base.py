"""What every loss returns, and the entry checks every loss runs."""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.ops import masked_mean
from rlxf.types import LossOutput

__all__ = [
    "LossOutput",
    "check_pair_tensors",
    "check_token_tensors",
    "expand_advantages",
    "masked_max_metric",
    "masked_metric",
    "pair_metrics",
]


def check_token_tensors(mask: Tensor, **tensors: Tensor | None) -> None:
    """Raise ValueError unless `mask` is bool `(B, T)` and each tensor given is a float `(B, T)`."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if tensor.shape != mask.shape:
            raise ValueError(
                f"{name} must be (B, T) = {tuple(mask.shape)} like mask, got shape {tuple(tensor.shape)}"
            )
        if not tensor.dtype.is_floating_point:
            raise ValueError(f"{name} must be a float tensor, got dtype {tensor.dtype}")


def expand_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """Advantages `(B,)` (one per sequence) or `(B, T)` (per token) as a float32 `(B, T)` tensor."""
    batch, length = mask.shape
    if advantages.shape == (batch,):
        return advantages.float().unsqueeze(1).expand(batch, length)
    if advantages.shape == (batch, length):
        return advantages.float()
    raise ValueError(
        f"advantages must be (B,) = ({batch},) or (B, T) = {(batch, length)}, "
        f"got shape {tuple(advantages.shape)}"
    )


@torch.no_grad()
def masked_metric(x: Tensor, mask: Tensor) -> Tensor:
    """Detached masked mean over all tokens (0 when there are none)."""
    return masked_mean(x.detach(), mask)


@torch.no_grad()
def masked_max_metric(x: Tensor, mask: Tensor, *, empty: float = 0.0) -> Tensor:
    """Detached max over the masked-in entries (`empty` when there are none). No host sync."""
    empty_value = torch.tensor(empty, dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        return empty_value
    largest = torch.where(mask, x.detach().float(), float("-inf")).amax()
    return torch.where(mask.any(), largest, empty_value)


def check_pair_tensors(**tensors: Tensor | None) -> int:
    """Raise ValueError unless every tensor given is a float `(B,)` with one common B; return B."""
    batch = None
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if tensor.dim() != 1:
            raise ValueError(f"{name} must be (B,), got shape {tuple(tensor.shape)}")
        if not tensor.dtype.is_floating_point:
            raise ValueError(f"{name} must be a float tensor, got dtype {tensor.dtype}")
        if batch is None:
            batch = tensor.shape[0]
        elif tensor.shape[0] != batch:
            raise ValueError(f"{name} has {tensor.shape[0]} rows, expected B = {batch} like the other inputs")
    if batch is None:
        raise ValueError("no tensors given")
    return batch


@torch.no_grad()
def pair_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """The metrics every preference loss reports, from its implicit rewards `(B,)`: means of the chosen and
    rejected rewards, of the margin r_w - r_l, and the fraction of pairs with r_w > r_l (ties count 0)."""
    chosen, rejected = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    margin = chosen - rejected
    return {
        "chosen_reward": chosen.mean(),
        "rejected_reward": rejected.mean(),
        "reward_margin": margin.mean(),
        "reward_accuracy": (margin > 0).float().mean(),
    }
