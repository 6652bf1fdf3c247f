"""PNG plots of a preference run: loss, accuracy, margins and chosen/rejected log-probs (matplotlib, lazily)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rlxf.eval.plots import _moving_average, _save, _series


def _held_out(evals: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    return [e["step"] for e in evals], [e[key] for e in evals]


def plot_preference_run(metrics: list[dict[str, Any]], evals: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``loss.png`` (training loss, raw and 10-step mean), ``accuracy.png`` (held-out implicit-reward and
    ranking accuracy, training reward accuracy), ``margins.png`` (training and held-out reward margins) and
    ``logps.png`` (held-out mean chosen/rejected log-probs: both falling = likelihood displacement)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    fig, ax = plt.subplots(figsize=(7, 4))
    xs, ys = _series(metrics, "loss")
    ax.plot(xs, ys, alpha=0.35, label="batch")
    ax.plot(xs, _moving_average(ys, 10), label="10-step mean")
    ax.set(xlabel="step", ylabel="loss", title="training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out / "loss.png", written)

    fig, ax = plt.subplots(figsize=(7, 4))
    xs, ys = _series(metrics, "reward_accuracy")
    if xs:
        ax.plot(xs, [100 * y for y in _moving_average(ys, 10)], alpha=0.6, label="train reward accuracy (10-step)")
    if evals:
        xs, ys = _held_out(evals, "accuracy")
        ax.plot(xs, [100 * y for y in ys], marker="o", label="held-out implicit-reward accuracy")
        xs, ys = _held_out(evals, "ranking_accuracy")
        ax.plot(xs, [100 * y for y in ys], marker="s", label="held-out ranking accuracy pi(y_w) > pi(y_l)")
    ax.set(xlabel="step", ylabel="accuracy (%)", title="preference accuracy", ylim=(0, 100))
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out / "accuracy.png", written)

    fig, ax = plt.subplots(figsize=(7, 4))
    xs, ys = _series(metrics, "reward_margin")
    if xs:
        ax.plot(xs, _moving_average(ys, 10), label="train margin (10-step)")
    if evals:
        xs, ys = _held_out(evals, "margin")
        ax.plot(xs, ys, marker="o", label="held-out margin")
    ax.set(xlabel="step", ylabel="r_w - r_l", title="implicit reward margin")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out / "margins.png", written)

    fig, ax = plt.subplots(figsize=(7, 4))
    if evals:
        xs, ys = _held_out(evals, "chosen_logps")
        ax.plot(xs, ys, marker="o", color="tab:green", label="held-out chosen")
        xs, ys = _held_out(evals, "rejected_logps")
        ax.plot(xs, ys, marker="o", color="tab:red", label="held-out rejected")
    for key, color in (("policy_chosen_logps", "tab:green"), ("policy_rejected_logps", "tab:red")):
        xs, ys = _series(metrics, key)
        if xs:
            ax.plot(xs, _moving_average(ys, 10), color=color, alpha=0.35, label=f"train {key.split('_')[1]} (10-step)")
    ax.set(xlabel="step", ylabel="summed log-prob", title="chosen / rejected log-probs")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out / "logps.png", written)
    return written
