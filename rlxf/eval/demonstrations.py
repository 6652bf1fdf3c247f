"""Held-out evaluation of a policy on demonstrations, and the plots of a supervised run.

For tokenised demonstrations (`rlxf.data.demonstrations`) it reports, over the assistant tokens of all of them
(each predicted from the true tokens before it, i.e. teacher-forced):

* ``nll``: mean negative log-likelihood per token (nats), and ``perplexity = exp(nll)``;
* ``accuracy``: token accuracy, the fraction of tokens that are the policy's top choice (argmax);
* ``tokens`` / ``sequences``: what was scored.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from rlxf.data.demonstrations import TokenizedDemonstration
from rlxf.eval.plots import _Figures, _moving_average, _series
from rlxf.models.token_logps import labelled_token_logps

__all__ = ["evaluate_demonstrations", "format_demonstration_eval", "plot_sft_run"]


@torch.no_grad()
def evaluate_demonstrations(
    model, rows: list[TokenizedDemonstration], *, pad_token_id: int, batch_size: int = 16, precision: str = "fp32",
    packed: bool | None = None,
) -> dict[str, Any]:
    """The metrics of the module docstring for ``rows``, in batches of ``batch_size`` taken in order of length.
    The model is put in eval mode (no dropout) and back to the mode it was in."""
    if not rows:
        raise ValueError("evaluate_demonstrations needs at least one row")
    was_training = model.training
    model.eval()
    nll, correct, tokens = 0.0, 0, 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))
    for start in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[start:start + batch_size]]
        out = labelled_token_logps(model, [r.ids for r in batch], [r.labels for r in batch],
                                   pad_token_id=pad_token_id, precision=precision, packed=packed)
        nll -= float(out.logps.sum())
        correct += int((out.correct & out.mask).sum())
        tokens += int(out.mask.sum())
    model.train(was_training)
    mean = nll / max(tokens, 1)
    return {"nll": mean, "perplexity": math.exp(min(mean, 700.0)), "accuracy": correct / max(tokens, 1),
            "tokens": tokens, "sequences": len(rows)}


def format_demonstration_eval(e: dict[str, Any]) -> str:
    return (f"token accuracy {100 * e['accuracy']:.1f}%, NLL {e['nll']:.4f} nats/token (perplexity "
            f"{e['perplexity']:.2f}) on {e['tokens']} tokens of {e['sequences']} demonstrations")


def plot_sft_run(metrics: list[dict[str, Any]], evals: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``loss.png`` (training NLL per token, raw and 10-step mean, with the held-out NLL) and
    ``accuracy.png`` (training and held-out token accuracy); returns the paths written."""
    figures = _Figures(out_dir)
    steps = [e["step"] for e in evals]
    fig, ax = figures.axes()
    xs, ys = _series(metrics, "loss")
    ax.plot(xs, ys, alpha=0.35, label="train batch")
    ax.plot(xs, _moving_average(ys, 10), label="train (10-step mean)")
    if evals:
        ax.plot(steps, [e["nll"] for e in evals], marker="o", label="held-out")
    ax.set(xlabel="step", ylabel="NLL (nats / token)", title="negative log-likelihood of assistant tokens")
    figures.save(fig, ax, "loss.png")

    fig, ax = figures.axes()
    xs, ys = _series(metrics, "token_accuracy")
    ax.plot(xs, [100 * y for y in _moving_average(ys, 10)], alpha=0.6, label="train (10-step mean)")
    if evals:
        ax.plot(steps, [100 * e["accuracy"] for e in evals], marker="o", label="held-out")
    ax.set(xlabel="step", ylabel="token accuracy (%)", title="token accuracy (argmax = demonstration)", ylim=(0, 100))
    figures.save(fig, ax, "accuracy.png")
    return figures.written
