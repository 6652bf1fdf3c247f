"""Accuracy of a policy on a verifier-backed prompt set: greedy accuracy and pass@k, with 95% intervals.

``rlxf eval arithmetic model=runs/<name>/final`` measures the held-out set the main job reports: 200
"What is a+b?" problems (seed 12345), rendered through the chat template, greedy, at most 48 new tokens,
correct when the last integer of the reply is a+b.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import torch

from rlxf.config import option
from rlxf.data import arithmetic_rows, context_of, encode_prompts
from rlxf.eval.stats import pass_at_k, wilson_interval
from rlxf.feedback import make_feedback
from rlxf.models import load_policy
from rlxf.rollout import Generator, make_generator


def _correct(scores) -> list[bool]:
    if "correct" in scores.info:
        return [bool(c) for c in scores.info["correct"]]
    return [float(v) >= 0.5 for v in scores.values]


def evaluate_accuracy(
    model,
    tokenizer,
    rows: list[dict[str, Any]],
    feedback,
    *,
    batch_size: int = 100,
    max_new_tokens: int = 48,
    samples: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    prompt_ids: list[list[int]] | None = None,
    generator: Generator | None = None,
) -> dict[str, Any]:
    """Greedy accuracy (``samples == 1``) or pass@1..k from ``samples`` sampled replies per prompt.

    Replies come from ``generator`` (default: ``rlxf.rollout.make_generator`` on ``model`` with ``autocast_dtype``:
    the fast llama sampler where the model allows it, else transformers).

    Returns ``n``, ``correct``, ``accuracy``, ``ci95`` (Wilson), ``mean_completion_tokens``, ``seconds``,
    ``replies`` (text and verdict per item) and, when sampling, ``pass@k`` for k = 1, 2, 4, ... <= samples.
    """
    prompt_ids = prompt_ids if prompt_ids is not None else encode_prompts(tokenizer, rows)
    generator = generator or make_generator(
        model, eos_token_ids={tokenizer.eos_token_id}, pad_token_id=tokenizer.pad_token_id,
        autocast_dtype=autocast_dtype)
    rng = torch.Generator().manual_seed(seed)
    greedy = samples == 1
    texts, lengths, t0 = [], [], time.perf_counter()
    per_batch = max(1, batch_size // samples)
    for i in range(0, len(rows), per_batch):
        out = generator.generate(
            prompt_ids[i:i + per_batch], n=samples, max_new_tokens=max_new_tokens, greedy=greedy,
            temperature=temperature, rng=rng,
        )
        for tokens in out.completion_token_lists():
            texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
            lengths.append(len(tokens))
    seconds = time.perf_counter() - t0
    prompts = [r.get("prompt", "") for r in rows for _ in range(samples)]
    verdicts = _correct(feedback(prompts, texts, **context_of(rows, samples)))
    per_prompt = [sum(verdicts[j * samples:(j + 1) * samples]) for j in range(len(rows))]
    n = len(rows)
    if greedy:
        correct = sum(verdicts)
        accuracy = correct / n
    else:
        correct = sum(per_prompt)
        accuracy = correct / (n * samples)
    report = {
        "n": n,
        "samples": samples,
        "correct": correct,
        "accuracy": accuracy,
        "ci95": wilson_interval(correct, n * samples) if not greedy else wilson_interval(correct, n),
        "mean_completion_tokens": sum(lengths) / max(1, len(lengths)),
        "seconds": seconds,
        "replies": [{"reply": t, "correct": v} for t, v in zip(texts, verdicts, strict=True)],
    }
    if not greedy:
        k = 1
        while k <= samples:
            report[f"pass@{k}"] = sum(pass_at_k(samples, c, k) for c in per_prompt) / n
            k *= 2
    return report


def format_accuracy(report: dict[str, Any]) -> str:
    lo, hi = report["ci95"]
    return f"{100 * report['accuracy']:.1f}% ({report['correct']}/{report['n']}) [95% CI {100 * lo:.1f}-{100 * hi:.1f}]"


@dataclass
class Config:
    """``rlxf eval arithmetic``: held-out accuracy of a policy on 'What is a+b?'."""

    model: str = option("smollm2", "Policy: 'smollm2' (embedded default), 'tiny', or a saved directory.")
    eval_size: int = option(200, "Number of held-out problems.", ge=1)
    eval_seed: int = option(12345, "Seed of the held-out problems (the anchor's set is 12345).", ge=0)
    max_new_tokens: int = option(48, "Longest reply in tokens.", ge=1)
    batch_size: int = option(100, "Prompts per generation batch.", ge=1)
    samples: int = option(1, "1 = greedy accuracy; k > 1 = k sampled replies per prompt and pass@k.", ge=1)
    temperature: float = option(1.0, "Sampling temperature when samples > 1.", gt=0)
    seed: int = option(0, "Sampling seed when samples > 1.", ge=0)
    output: str | None = option(None, "Write the full report (every reply) as JSON here.")


def run(config: Config) -> dict[str, Any]:
    model, tokenizer = load_policy(config.model)
    rows = arithmetic_rows(config.eval_size, seed=config.eval_seed)
    report = evaluate_accuracy(
        model, tokenizer, rows, make_feedback("arithmetic"), batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens, samples=config.samples, temperature=config.temperature,
        seed=config.seed,
    )
    print(f"accuracy {format_accuracy(report)}  ({report['seconds']:.1f} s)")
    for key in sorted(k for k in report if k.startswith("pass@")):
        print(f"{key} {100 * report[key]:.1f}%")
    if config.output:
        with open(config.output, "w") as f:
            json.dump(report, f, indent=1)
    return report
