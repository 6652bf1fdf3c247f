"""Offline preference optimisation from a fixed set of pairs (``rlxf train dpo objective=<name>``).

One loop (`rlxf.recipes.offline`) serves every loss registered with kind ``preference`` (DPO, IPO, cDPO, SimPO,
ORPO, CPL, pairwise Cringe, ...): the loss is looked up by name, its hyperparameters come from ``loss.<name>=``
and it receives exactly the tensors its signature declares, each computed by one entry of :data:`PROVIDERS`.
Nothing here re-implements a loss, and no loss has a branch of its own.

Per micro-batch: chosen and rejected run in one forward (each prompt once, fused chunked LM head) and give the
summed log-probs and lengths; the reference's come from the cache; anything else the loss declares (the rows'
scores, the rejected completions' full logits) is computed only when it does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlxf.config import ConfigError
from rlxf.models.forward import completion_logits
from rlxf.models.logps import sequence_logps
from rlxf.models.precision import autocast_context
from rlxf.recipes import offline
from rlxf.recipes.offline import OfflineConfig, OfflineTrainer


@dataclass
class Config(OfflineConfig):
    """Offline preference optimisation on a fixed set of pairs (``rlxf train dpo``)."""


class Batch:
    """One micro-batch of pairs and what has been computed for it (each computed on first use)."""

    def __init__(self, trainer: PairedTrainer, idx: list[int], grad: bool):
        self.trainer, self.idx, self.grad = trainer, idx, grad
        self.items = [trainer.data.train[i] for i in idx]
        with torch.set_grad_enabled(grad):
            self.sums, self.lengths, self.slots = sequence_logps(
                trainer.model, [p.prompt_ids for p in self.items], [(p.chosen_ids, p.rejected_ids) for p in self.items],
                pad_token_id=trainer.pad_id, precision=trainer.precision, packed=trainer.packed)
        self.device = self.sums.device
        self._rejected = None

    def rejected_logits(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full-vocabulary logits on the rejected completions, from a second forward (token-level losses)."""
        if self._rejected is None:
            t = self.trainer
            with torch.set_grad_enabled(self.grad), autocast_context(t.device, t.precision):
                self._rejected = completion_logits(t.model, [p.prompt_ids for p in self.items],
                                                   [p.rejected_ids for p in self.items], pad_token_id=t.pad_id)
        return self._rejected

    def scores(self, key: str) -> torch.Tensor:
        return torch.tensor([getattr(p, key) for p in self.items], device=self.device)

    def reference(self, k: int) -> torch.Tensor:
        return self.trainer.ref[f"train.{k}"][self.idx].to(self.device)


# Every tensor a paired loss may declare, and how a micro-batch computes it.
PROVIDERS: dict[str, Callable[[Batch], torch.Tensor]] = {
    "policy_chosen_logps": lambda b: b.sums[:, 0],
    "policy_rejected_logps": lambda b: b.sums[:, 1],
    "ref_chosen_logps": lambda b: b.reference(0),
    "ref_rejected_logps": lambda b: b.reference(1),
    "chosen_lengths": lambda b: b.lengths[:, 0],
    "rejected_lengths": lambda b: b.lengths[:, 1],
    "chosen_scores": lambda b: b.scores("chosen_score"),
    "rejected_scores": lambda b: b.scores("rejected_score"),
    "rejected_logits": lambda b: b.rejected_logits()[0],
    "rejected_ids": lambda b: b.rejected_logits()[1],
    "rejected_mask": lambda b: b.rejected_logits()[2],
}


class PairedTrainer(OfflineTrainer):
    """The offline loop's trainer for paired losses (kind ``preference``)."""

    KIND = "preference"
    COMMAND = "dpo"
    PROVIDES = frozenset(PROVIDERS)

    def check_data(self) -> None:
        if "chosen_scores" in self.tensor_names and any(p.chosen_score is None for p in self.data.train):
            raise ConfigError(f"objective {self.config.objective!r} needs chosen_score and rejected_score in every "
                              f"data row")

    def pair_tensors(self, idx: list[int], *, grad: bool) -> tuple[dict[str, Any], Batch]:
        """The loss's declared tensors for the pairs ``idx``, and the micro-batch they came from."""
        batch = Batch(self, idx, grad)
        return {name: self.provide(name, batch) for name in self.tensor_names}, batch

    def provide(self, name: str, batch: Batch) -> Any:
        return PROVIDERS[name](batch)

    def micro_batch_tensors(self, idx, context):
        tensors, batch = self.pair_tensors(idx, grad=True)
        logged = {"policy_chosen_logps": float(batch.sums[:, 0].detach().float().sum()),
                  "policy_rejected_logps": float(batch.sums[:, 1].detach().float().sum())}
        return tensors, batch.slots, logged


def run(config: Config) -> dict[str, Any]:
    """Train; returns a summary dict (also written to ``<run>/summary.json``)."""
    return offline.run(config, PairedTrainer)
