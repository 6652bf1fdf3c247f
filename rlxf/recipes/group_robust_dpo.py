"""Group-robust DPO (``rlxf train group-robust-dpo``): DPO whose pairs are weighted by an adversary over groups.

Ramesh et al. 2024, "Group Robust Preference Optimization in Reward-free RLHF", Algorithm 1: the group weights
alpha (on the simplex, uniform at first) are state of the run, updated before every policy step from the batch's
per-group mean DPO losses under the current policy (exponentiated gradient, `rlxf.objectives.group_robust`),
then the policy takes a step on the alpha-weighted loss::

    losses = group_robust_dpo(..., group_weights=1, group_sizes=None)  # per pair, no gradient, any micro-batching
    alpha = update_group_weights(alpha, group_mean_losses(losses, group_ids, G), step_size=group_step_size)
    then the paired loop's step with group_ids, group_weights=alpha, group_sizes (the data's counts N_g)

Every row needs a ``group`` (string or integer). The weights are checkpointed with the run and logged per group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlxf.config import ConfigError, option
from rlxf.objectives.group_robust import group_mean_losses, update_group_weights
from rlxf.objectives.signature import call_loss
from rlxf.recipes import offline
from rlxf.recipes.preference import PROVIDERS, Batch, PairedTrainer
from rlxf.recipes.preference import Config as PreferenceConfig

GROUP_TENSORS = ("group_ids", "group_weights", "group_sizes")


@dataclass
class Config(PreferenceConfig):
    """Group-robust DPO on pairs with a ``group`` field (``rlxf train group-robust-dpo``)."""

    objective: str = option("group_robust_dpo", "Loss by name: a preference loss taking group_ids and "
                                                "group_weights (see `rlxf list`).")
    group_step_size: float = option(0.01, "Step size eta of the exponentiated-gradient update of the group weights.")


class GroupRobustTrainer(PairedTrainer):
    """The paired trainer plus the adversarial group weights."""

    COMMAND = "group-robust-dpo"
    PROVIDES = frozenset(PROVIDERS) | frozenset(GROUP_TENSORS)

    def check_data(self) -> None:
        super().check_data()
        missing = [p.source for p in self.data.train if p.group is None]
        if missing:
            raise ConfigError(f"objective {self.config.objective!r} needs a 'group' in every row; missing at "
                              f"{missing[0]} (and {len(missing) - 1} more)")
        self.group_names = sorted({p.group for p in self.data.train})
        index = {g: i for i, g in enumerate(self.group_names)}
        self.group_ids = torch.tensor([index[p.group] for p in self.data.train])
        self.group_sizes = torch.bincount(self.group_ids, minlength=len(self.group_names)).float()
        self.group_weights = torch.full((len(self.group_names),), 1.0 / len(self.group_names))

    def provide(self, name: str, batch: Batch) -> Any:
        if name == "group_ids":
            return self.group_ids[batch.idx].to(batch.device)
        if name == "group_weights":
            return self.group_weights.to(batch.device)
        if name == "group_sizes":
            return self.group_sizes.to(batch.device)
        return super().provide(name, batch)

    def before_batch(self, batch: list[int]) -> dict[str, torch.Tensor]:
        """Algorithm 1's alpha update from the batch's per-group mean losses under the current policy."""
        per = self.config.micro_batch_size or len(batch)
        losses = []
        for start in range(0, len(batch), per):
            tensors, _ = self.pair_tensors(batch[start:start + per], grad=False)
            tensors = {**tensors, "group_weights": torch.ones_like(self.group_weights)}
            tensors.pop("group_sizes", None)
            losses.append(call_loss(self.objective, tensors, self.hyperparameters).loss.detach().float().cpu())
        self.group_weights = update_group_weights(
            self.group_weights, group_mean_losses(torch.cat(losses), self.group_ids[batch], len(self.group_names)),
            step_size=self.config.group_step_size)
        return {}

    def after_step(self, metrics: dict[str, float]) -> None:
        metrics.update({f"group_weight/{g}": float(w) for g, w in zip(self.group_names, self.group_weights,
                                                                          strict=True)})

    def extra_state(self) -> dict[str, Any]:
        return {"group_weights": self.group_weights.tolist()}

    def restore_extra(self, state: dict[str, Any]) -> None:
        self.group_weights = torch.tensor(state["group_weights"], dtype=torch.float32)


def run(config: Config) -> dict[str, Any]:
    """Train; returns a summary dict (also written to ``<run>/summary.json``)."""
    return offline.run(config, GroupRobustTrainer)
