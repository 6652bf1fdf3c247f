"""Unpaired preference optimisation (``rlxf train kto``): completions labelled desirable or not, KTO's loss.

The loop is the offline one (`rlxf.recipes.offline`); what differs is the data and the reference point. Rows are
``prompt/completion/label`` (a paired file is read as two rows per pair: chosen desirable, rejected not). KTO's
reference point z0 is the batch's KL estimate from mismatched pairs (x_i, y_j), j != i (Ethayarajh et al. 2024,
sec. 4.1): row i's KL completion is the next row's of its fixed batch (:func:`rlxf.data.kl_partners`). Per step::

    kl = log-probs of every row's KL completion, whole batch, no gradient (z0 is a constant in the loss)
    for each micro-batch: loss = kto(policy_logps, ref_logps, kl (the whole batch's), desirable, ...)

so every micro-batch sees the whole batch's z0 and accumulation is exact. Held-out evaluation uses pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlxf.config import option
from rlxf.data import kl_partners
from rlxf.models.logps import sequence_logps
from rlxf.recipes import offline
from rlxf.recipes.offline import OfflineConfig, OfflineTrainer

PROVIDES = frozenset({"policy_logps", "ref_logps", "policy_kl_logps", "ref_kl_logps", "desirable", "lengths"})


@dataclass
class Config(OfflineConfig):
    """Unpaired preference optimisation (``rlxf train kto``)."""

    objective: str = option("kto", "Loss by name: an `unpaired` loss (see `rlxf list`).")


class UnpairedTrainer(OfflineTrainer):
    """The offline loop's trainer for unpaired losses (kind ``unpaired``)."""

    KIND = "unpaired"
    COMMAND = "kto"
    PROVIDES = PROVIDES

    def __init__(self, config: Config):
        self.partners: list[int] | None = None
        super().__init__(config)

    def completions(self, item) -> tuple:
        return (item.completion_ids,)

    def reference_key_extra(self) -> Any:
        return self._partners()

    def _partners(self) -> list[int]:
        if self.partners is None:
            self.partners = kl_partners(len(self.data.train), self.batches)
        return self.partners

    def reference_jobs(self) -> dict[str, tuple]:
        """Each row's completion and its KL partner's completion, given the row's prompt."""
        train, partners = self.data.train, self._partners()
        return {"train": ([r.prompt_ids for r in train],
                          [(r.completion_ids, train[partners[i]].completion_ids) for i, r in enumerate(train)])}

    @torch.no_grad()
    def before_batch(self, batch: list[int]) -> dict[str, torch.Tensor]:
        """KTO's mismatched pairs of the whole batch, without gradient (the same (M,) tensors for every
        micro-batch, so z0 is the whole batch's estimate)."""
        items, partners = self.data.train, self._partners()
        per = self.config.micro_batch_size or len(batch)
        parts = []
        for start in range(0, len(batch), per):
            idx = batch[start:start + per]
            sums, _, _ = sequence_logps(
                self.model, [items[i].prompt_ids for i in idx], [(items[partners[i]].completion_ids,) for i in idx],
                pad_token_id=self.pad_id, precision=self.precision, packed=self.packed)
            parts.append(sums[:, 0].float())
        return {"policy_kl_logps": torch.cat(parts), "ref_kl_logps": self.ref["train.1"][batch]}

    def micro_batch_tensors(self, idx, context):
        items = [self.data.train[i] for i in idx]
        sums, lengths, slots = sequence_logps(
            self.model, [r.prompt_ids for r in items], [(r.completion_ids,) for r in items],
            pad_token_id=self.pad_id, precision=self.precision, packed=self.packed)
        dev = sums.device
        available = {
            "policy_logps": sums[:, 0], "ref_logps": self.ref["train.0"][idx].to(dev), "lengths": lengths[:, 0],
            "desirable": torch.tensor([r.label for r in items], dtype=torch.bool, device=dev),
            **{k: v.to(dev) for k, v in context.items()},
        }
        return {name: available[name] for name in self.tensor_names}, slots, {}


def run(config: Config) -> dict[str, Any]:
    """Train; returns a summary dict (also written to ``<run>/summary.json``)."""
    return offline.run(config, UnpairedTrainer)
