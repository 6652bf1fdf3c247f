"""Held-out preference evaluation: does the policy prefer the chosen response, and by how much?

For pairs (x, y_w, y_l) with summed completion log-probs under the policy and the reference, it reports

* ``accuracy``: fraction of pairs whose implicit DPO reward r = beta * log(pi/pi_ref) ranks y_w above y_l.
  Ties count as wrong, so an untrained policy scores 0, and a tie is a log-ratio difference within float32
  rounding of the four summed log-probs (:data:`TIE_RTOL` of their total magnitude), so that last-bit noise
  between two computations of the same number is never read as a preference (``ties`` counts them);
* ``margin``: mean of r_w - r_l (beta times the mean log-ratio difference);
* ``ranking_accuracy``: fraction with log pi(y_w|x) > log pi(y_l|x), reference-free;
* ``chosen_logps`` / ``rejected_logps``: mean summed log-probs (their trend over training shows likelihood
  displacement: both falling while the margin grows), and the same per token (``*_token_logps``).

``rlxf eval preference`` (`rlxf.recipes.preference_eval`) runs it on a trained run directory (its held-out
split, its reference, its latest weights) or on any model and preference file (:func:`evaluate_models`).
"""
from __future__ import annotations

import time
from typing import Any

import torch

from rlxf.data.preferences import load_preferences, tokenize_pairs
from rlxf.models import load_policy
from rlxf.models.logps import length_ordered_logps

__all__ = ["TIE_RTOL", "evaluate_models", "evaluate_preferences", "format_preference_eval", "preference_metrics"]


@torch.no_grad()
def evaluate_preferences(
    model, pairs, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, *, beta: float, pad_token_id: int,
    batch_size: int = 16, precision: str = "fp32", packed: bool | None = None,
) -> dict[str, Any]:
    """The held-out metrics of the module docstring for tokenised ``pairs`` (`TokenizedPair`) with reference
    log-probs ``ref_chosen``/``ref_rejected`` `(N,)`. The model is put in eval mode and back. The policy's
    log-probs come from :func:`rlxf.models.logps.length_ordered_logps`, as a run's reference log-probs do."""
    if not pairs:
        raise ValueError("evaluate_preferences needs at least one pair")
    if ref_chosen.shape != (len(pairs),) or ref_rejected.shape != (len(pairs),):
        raise ValueError(f"reference log-probs must be ({len(pairs)},), got {tuple(ref_chosen.shape)}, "
                         f"{tuple(ref_rejected.shape)}")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        sums, lengths = length_ordered_logps(
            model, [p.prompt_ids for p in pairs], [(p.chosen_ids, p.rejected_ids) for p in pairs],
            pad_token_id=pad_token_id, batch_size=batch_size, precision=precision, packed=packed)
    finally:
        model.train(was_training)
    return preference_metrics(sums[:, 0], sums[:, 1], ref_chosen.float(), ref_rejected.float(), lengths[:, 0],
                              lengths[:, 1], beta=beta, seconds=time.perf_counter() - start)


# Relative size of a tie. Last-bit noise in the four float32 sums is ~1e-7 of their total; the same sequence
# through another batch shape or forward path differs by up to ~1e-6 of it (GEMM blocking). 1e-6 covers that and
# stays far below learned differences: on HH pairs with summed log-probs near -70 it is 3e-4 nats.
TIE_RTOL = 1e-6


def preference_metrics(chosen, rejected, ref_chosen, ref_rejected, chosen_len, rejected_len, *, beta: float,
                       seconds: float = 0.0) -> dict[str, Any]:
    """Metrics from summed log-probs `(N,)` (see the module docstring)."""
    log_ratio_diff = (chosen - ref_chosen) - (rejected - ref_rejected)
    tie = log_ratio_diff.abs() <= TIE_RTOL * (chosen.abs() + ref_chosen.abs() + rejected.abs() + ref_rejected.abs())
    margin = beta * log_ratio_diff
    return {
        "n": int(chosen.numel()),
        "accuracy": float(((margin > 0) & ~tie).float().mean()),
        "ties": int(tie.sum()),
        "margin": float(margin.mean()),
        "ranking_accuracy": float((chosen > rejected).float().mean()),
        "chosen_logps": float(chosen.mean()),
        "rejected_logps": float(rejected.mean()),
        "chosen_token_logps": float((chosen / chosen_len.clamp(min=1)).mean()),
        "rejected_token_logps": float((rejected / rejected_len.clamp(min=1)).mean()),
        "chosen_reward": float((beta * (chosen - ref_chosen)).mean()),
        "rejected_reward": float((beta * (rejected - ref_rejected)).mean()),
        "seconds": seconds,
    }


def format_preference_eval(e: dict[str, Any]) -> str:
    return (f"accuracy {100 * e['accuracy']:.1f}% (n={e['n']})  margin {e['margin']:+.4f}  ranking accuracy "
            f"{100 * e['ranking_accuracy']:.1f}%  log-probs chosen {e['chosen_logps']:.2f} rejected "
            f"{e['rejected_logps']:.2f}")


def evaluate_models(model: str, reference: str, data: str, *, beta: float, max_prompt_tokens: int,
                    max_completion_tokens: int, batch_size: int, precision: str) -> dict[str, Any]:
    """The held-out metrics of policy ``model`` against ``reference`` (names or directories, as
    ``rlxf.models.load_policy`` reads them) on every pair of the preference file ``data``."""
    loaded = load_preferences(data)
    if not loaded.paired:
        raise ValueError(f"{data}: preference evaluation needs paired rows, got unpaired ones")
    ref_model, tokenizer = load_policy(reference)
    pairs = tokenize_pairs(loaded.rows, tokenizer, max_prompt_tokens=max_prompt_tokens,
                           max_completion_tokens=max_completion_tokens)
    ref_model.eval()
    sums, _ = length_ordered_logps(ref_model, [p.prompt_ids for p in pairs],
                                   [(p.chosen_ids, p.rejected_ids) for p in pairs],
                                   pad_token_id=tokenizer.pad_token_id, batch_size=batch_size, precision=precision)
    del ref_model
    policy, _ = load_policy(model)
    return evaluate_preferences(policy, pairs, sums[:, 0], sums[:, 1], beta=beta,
                                pad_token_id=tokenizer.pad_token_id, batch_size=batch_size, precision=precision)
