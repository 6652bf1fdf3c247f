"""What one step of the online preference loop feeds its loss: each tensor a loss may declare, computed on first use.

`rlxf.recipes.online_preference` builds a :class:`Batch` per step and calls :data:`PROVIDERS` for exactly the
tensors its loss declares. The log-probs are sums over completion tokens at temperature 1 (the policy's own
probability), from one forward per model and part: the pairs (and Meta-Rewarding's judgement pairs after them),
every trained sample, one fresh policy sample per pair, or one sample of the reference per pair.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from rlxf.recipes.comparisons import Comparisons, rows_of, sequence_logps

__all__ = ["PROVIDERS", "Batch", "Gathered"]


class Gathered(NamedTuple):
    """One step's prompt rows, their samples and the comparisons among them, and how long each part took (and,
    with meta_rewarding, the judge-preference pairs and their metrics)."""

    rows: list[dict]
    rollout: Any
    comparisons: Comparisons
    seconds: dict[str, float]
    judge_pairs: Any = None
    judge_metrics: dict[str, float] = {}


class Batch:
    """What one step feeds the loss, each tensor computed on first use (:data:`PROVIDERS`).

    ``trainer`` is the loop's Trainer: it supplies ``models(which)`` (``policy``, ``ref`` or ``prev``), ``pad_id``,
    ``precision``, ``device``, ``config``, ``sampling_rng`` and ``reference_generator()``.
    """

    def __init__(self, trainer: Any, rows: list[dict], rollout, comparisons: Comparisons, pairs: list[tuple],
                 judge_pairs=None):
        self.t, self.rows, self.rollout, self.comparisons, self.pairs = trainer, rows, rollout, comparisons, pairs
        self.judge_pairs = judge_pairs  # Meta-Rewarding's pairs of judgements, trained after the replies' pairs
        self._cache: dict[str, torch.Tensor] = {}
        self._parts: dict[str, tuple] = {}

    def _logps(self, which: str, part: str) -> torch.Tensor:
        """Summed log-probs ``(B,)`` of ``part`` (``pair``: chosen and rejected; ``samples``: every trained sample;
        ``fresh``: one policy sample per pair; ``ref_samples``: one reference sample per pair) under ``which``."""
        key = f"{which}.{part}"
        if key not in self._cache:
            t, model = self.t, self.t.models(which)
            prompts, ids, mask, n = self._part(part)
            with torch.set_grad_enabled(which == "policy"):
                self._cache[key] = sequence_logps(model, prompts, ids, mask, n=n, pad_token_id=t.pad_id,
                                                  precision=t.precision).float()
        return self._cache[key]

    def _part(self, part: str):
        if part not in self._parts:
            self._parts[part] = self._make_part(part)
        return self._parts[part]

    def _make_part(self, part: str):
        r, n = self.rollout, self.rollout.n
        if part == "pair":
            ids, mask = rows_of(r, [g * n + k for g, i, j in self.pairs for k in (i, j)])
            prompts = [r.prompt_ids[g] for g, _, _ in self.pairs]
            if self.judge_pairs:
                judge_ids, judge_mask = self.judge_pairs.completion_tensors(self.t.pad_id)
                ids, mask = _stack_right_padded([(ids, mask), (judge_ids, judge_mask)], self.t.pad_id)
                prompts += self.judge_pairs.prompt_ids
            return prompts, ids, mask, 2
        if part == "samples":
            groups = self.trained_groups()
            ids, mask = rows_of(r, [g * n + k for g in groups for k in range(n)])
            return [r.prompt_ids[g] for g in groups], ids, mask, n
        if part == "fresh":  # sample 0 of the pair's group: drawn from pi_theta like all of them
            ids, mask = rows_of(r, [g * n for g, _, _ in self.pairs])
            return [r.prompt_ids[g] for g, _, _ in self.pairs], ids, mask, 1
        if part == "ref_samples":
            prompts = [r.prompt_ids[g] for g, _, _ in self.pairs]
            ref_rollout = self.t.reference_generator().generate(
                prompts, n=1, max_new_tokens=self.t.config.max_new_tokens, temperature=self.t.config.temperature,
                rng=self.t.sampling_rng)
            ids, mask = rows_of(ref_rollout, list(range(len(prompts))))
            return prompts, ids, mask, 1
        raise KeyError(part)

    def pair_side(self, which: str, side: int) -> torch.Tensor:
        return self._logps(which, "pair").view(-1, 2)[:, side]

    def trained_groups(self) -> list[int]:
        return [g for g in range(len(self.rows)) if bool(self.comparisons.valid[g])]

    def win_rates(self) -> torch.Tensor:
        return self.comparisons.win_rates[self.trained_groups()].reshape(-1).to(self.t.device)


def _stack_right_padded(parts: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise concatenation of ``(ids, mask)`` blocks of different widths, right-padded to the widest."""
    width = max(ids.shape[1] for ids, _ in parts)
    ids = torch.cat([torch.nn.functional.pad(i, (0, width - i.shape[1]), value=pad_id) for i, _ in parts])
    mask = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1]), value=False) for _, m in parts])
    return ids, mask


PROVIDERS: dict[str, Callable[[Batch], torch.Tensor]] = {
    "policy_chosen_logps": lambda b: b.pair_side("policy", 0),
    "policy_rejected_logps": lambda b: b.pair_side("policy", 1),
    "ref_chosen_logps": lambda b: b.pair_side("ref", 0),
    "ref_rejected_logps": lambda b: b.pair_side("ref", 1),
    "prev_chosen_logps": lambda b: b.pair_side("prev", 0),
    "prev_rejected_logps": lambda b: b.pair_side("prev", 1),
    "policy_sample_logps": lambda b: b._logps("policy", "fresh"),
    "ref_sample_logps": lambda b: b._logps("ref", "fresh"),
    "policy_ref_sample_logps": lambda b: b._logps("policy", "ref_samples"),
    "ref_ref_sample_logps": lambda b: b._logps("ref", "ref_samples"),
    "policy_logps": lambda b: b._logps("policy", "samples"),
    "prev_logps": lambda b: b._logps("prev", "samples"),
    "ref_logps": lambda b: b._logps("ref", "samples"),
    "win_rates": lambda b: b.win_rates(),
}
