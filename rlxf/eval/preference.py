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

``rlxf eval preference`` runs it on a trained run directory (its held-out split, its reference, its final or
latest weights) or on any model and preference file.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlxf.config import option

__all__ = ["Config", "evaluate_preferences", "run", "sequence_logps"]


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast for ``precision="bf16"``, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def sequence_logps(
    model, prompt_ids: Sequence[Sequence[int]], completions: Sequence[Sequence[Sequence[int]]], *,
    pad_token_id: int, precision: str = "fp32", packed: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """Summed log-probs of each prompt's completions, all in one forward.

    ``completions[p]`` holds ``n`` token lists answering ``prompt_ids[p]`` (n = 2 for a pair: chosen, rejected).
    Each prompt runs once. For a plain Llama model (``packed=None`` or True) the batch is one packed row of real
    tokens with no padding (`rlxf.models.packed`); otherwise (``packed=False``, or another architecture, or a peft
    wrapper) the ``n`` completions run on the prompt's KV cache, right-padded and concatenated along the batch
    (`rlxf.models.forward.completion_logprobs`). Both use the fused chunked LM head: no full-vocabulary logits.

    Returns ``(sums (P, n) float32, lengths (P, n) float32, slots)`` where ``slots`` counts the token positions
    run (``total``) and how many of them were padding (``padding``).
    """
    from rlxf.models.forward import completion_logprobs
    from rlxf.models.packed import packed_sequence_logps, supports_packed_forward
    from rlxf.rollout.base import pad_right

    device = next(model.parameters()).device
    if packed is None:
        packed = supports_packed_forward(model)
    if packed:
        with autocast_context(device, precision):
            return packed_sequence_logps(model, prompt_ids, completions)

    n = len(completions[0])
    flat = [list(c) for group in completions for c in group]
    if any(len(group) != n for group in completions):
        raise ValueError("every prompt needs the same number of completions")
    ids, mask = pad_right(flat, pad_token_id)
    with autocast_context(device, precision):
        logps, _ = completion_logprobs(model, [list(p) for p in prompt_ids], ids, n=n, pad_token_id=pad_token_id)
    mask = mask.to(logps.device)
    sums = torch.where(mask, logps, 0.0).sum(dim=1)
    lengths = mask.sum(dim=1).float()
    return sums.view(-1, n), lengths.view(-1, n), padding_slots(prompt_ids, completions)


def padding_slots(prompt_ids, completions) -> dict[str, int]:
    """Token positions that :func:`sequence_logps` runs for this batch (``total``: left-padded prompts once,
    right-padded completions) and how many of them are padding."""
    flat = [c for group in completions for c in group]
    width = max(1, max(len(c) for c in flat))
    total = len(prompt_ids) * max(len(p) for p in prompt_ids) + len(flat) * width
    real = sum(len(p) for p in prompt_ids) + sum(len(c) for c in flat)
    return {"total": total, "padding": total - real}


@torch.no_grad()
def pair_logps(model, pairs, *, pad_token_id: int, batch_size: int, precision: str = "fp32",
               packed: bool | None = None):
    """Policy log-probs of every pair, in order: ``(chosen (N,), rejected (N,), chosen_len (N,), rejected_len)``.
    Batches go in length order to keep padding small; results come back in the input order."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].prompt_ids) + max(
        len(pairs[i].chosen_ids), len(pairs[i].rejected_ids)))
    sums = torch.zeros(len(pairs), 2)
    lengths = torch.zeros(len(pairs), 2)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        s, n_tok, _ = sequence_logps(
            model, [pairs[i].prompt_ids for i in idx], [(pairs[i].chosen_ids, pairs[i].rejected_ids) for i in idx],
            pad_token_id=pad_token_id, precision=precision, packed=packed,
        )
        sums[idx] = s.float().cpu()
        lengths[idx] = n_tok.cpu()
    return sums[:, 0], sums[:, 1], lengths[:, 0], lengths[:, 1]


@torch.no_grad()
def evaluate_preferences(
    model, pairs, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, *, beta: float, pad_token_id: int,
    batch_size: int = 16, precision: str = "fp32", packed: bool | None = None,
) -> dict[str, Any]:
    """The held-out metrics of the module docstring for tokenised ``pairs`` (`TokenizedPair`) with reference
    log-probs ``ref_chosen``/``ref_rejected`` `(N,)`. The model is put in eval mode and back."""
    if not pairs:
        raise ValueError("evaluate_preferences needs at least one pair")
    if ref_chosen.shape != (len(pairs),) or ref_rejected.shape != (len(pairs),):
        raise ValueError(f"reference log-probs must be ({len(pairs)},), got {tuple(ref_chosen.shape)}, "
                         f"{tuple(ref_rejected.shape)}")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        chosen, rejected, chosen_len, rejected_len = pair_logps(
            model, pairs, pad_token_id=pad_token_id, batch_size=batch_size, precision=precision, packed=packed)
    finally:
        model.train(was_training)
    return preference_metrics(chosen, rejected, ref_chosen.float(), ref_rejected.float(), chosen_len,
                              rejected_len, beta=beta, seconds=time.perf_counter() - start)


# Relative size of a tie: float32 sums of a few hundred token log-probs carry rounding of about 1e-6 of their
# magnitude; 1e-5 of the four sums' total covers that with room, and is far below any learned margin.
TIE_RTOL = 1e-5


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


# ------------------------------------------------------------------------------------------- rlxf eval preference


@dataclass
class Config:
    """``rlxf eval preference``: held-out preference accuracy of a policy against its reference."""

    run: str | None = option(
        None, "A `rlxf train dpo` run directory: evaluates its final (else latest checkpoint) weights on its own "
        "held-out split against its reference; the fields below are then read from the run's config.",
    )
    model: str | None = option(None, "Policy to evaluate (without run=): 'smollm2', 'tiny' or a directory.")
    reference: str = option("smollm2", "Reference policy (without run=).")
    data: str = option("hh_harmless_512", "Preference JSONL (without run=); every row is evaluated.")
    max_prompt_tokens: int = option(256, "Prompt truncation (from the left), without run=.")
    max_completion_tokens: int = option(128, "Completion truncation (from the right), without run=.")
    beta: float = option(0.1, "beta of the implicit reward (without run=; with run= the run's loss's beta).")
    batch_size: int = option(16, "Pairs per forward.")
    precision: str = option("fp32", "fp32 or bf16.", choices=("fp32", "bf16"))
    output: str | None = option(None, "Write the report as JSON here.")


def run(config: Config) -> dict[str, Any]:
    import json

    if config.run:
        from rlxf.recipes.preference import evaluate_run

        report = evaluate_run(config.run, batch_size=config.batch_size)
    else:
        if not config.model:
            raise ValueError("give run=<run directory> or model=<policy to evaluate>")
        from rlxf.data.preferences import load_preferences, tokenize_pairs
        from rlxf.models import load_policy
        from rlxf.recipes.preference import reference_pair_logps

        data = load_preferences(config.data)
        if not data.paired:
            raise ValueError(f"{config.data}: preference evaluation needs paired rows, got unpaired ones")
        reference, tokenizer = load_policy(config.reference)
        pairs = tokenize_pairs(data.rows, tokenizer, max_prompt_tokens=config.max_prompt_tokens,
                               max_completion_tokens=config.max_completion_tokens)
        ref_chosen, ref_rejected = reference_pair_logps(
            reference, pairs, pad_token_id=tokenizer.pad_token_id, batch_size=config.batch_size,
            precision=config.precision)
        del reference
        model, _ = load_policy(config.model)
        report = evaluate_preferences(model, pairs, ref_chosen, ref_rejected, beta=config.beta,
                                      pad_token_id=tokenizer.pad_token_id, batch_size=config.batch_size,
                                      precision=config.precision)
    print(format_preference_eval(report))
    if config.output:
        with open(config.output, "w") as f:
            json.dump(report, f, indent=1)
    return report
