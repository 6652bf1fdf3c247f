"""PNG plots of a run's curves (matplotlib, imported lazily, non-interactive backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        value = r.get(key)
        if isinstance(value, (int, float)):
            xs.append(r["step"])
            ys.append(value)
    return xs, ys


def _moving_average(ys: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def _save(fig, path: Path, written: list[Path]) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)


def plot_run(metrics: list[dict[str, Any]], evals: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``reward.png`` (training reward, raw and 10-step mean), ``accuracy.png`` (held-out accuracy with
    its 95% interval against training time) and ``length_entropy.png``; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    xs, ys = _series(metrics, "reward_mean")
    ax.plot(xs, ys, alpha=0.35, label="batch mean")
    ax.plot(xs, _moving_average(ys, 10), label="10-step mean")
    ax.set(xlabel="step", ylabel="reward", title="training reward")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, out / "reward.png", written)

    if evals:
        fig, ax = plt.subplots(figsize=(7, 4))
        t = [e["train_seconds"] / 60 for e in evals]
        acc = [100 * e["accuracy"] for e in evals]
        lo = [100 * e["ci95"][0] for e in evals]
        hi = [100 * e["ci95"][1] for e in evals]
        ax.fill_between(t, lo, hi, alpha=0.2, label="95% CI")
        ax.plot(t, acc, marker="o", label="greedy held-out accuracy")
        ax.set(xlabel="training time (min)", ylabel="accuracy (%)", title="held-out accuracy", ylim=(0, 100))
        ax.legend()
        ax.grid(alpha=0.3)
        _save(fig, out / "accuracy.png", written)

    fig, ax1 = plt.subplots(figsize=(7, 4))
    xs, ys = _series(metrics, "completion_len")
    ax1.plot(xs, ys, color="tab:blue", label="completion length")
    ax1.set(xlabel="step", ylabel="tokens")
    ax2 = ax1.twinx()
    xs, ys = _series(metrics, "entropy")
    ax2.plot(xs, ys, color="tab:orange", label="entropy")
    ax2.set_ylabel("entropy (nats)")
    fig.legend(loc="upper right")
    _save(fig, out / "length_entropy.png", written)
    return written


def plot_reward_model_run(records: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``accuracy.png`` of a reward-model run: training loss per member, and train / held-out pair accuracy
    (r_w > r_l) per epoch against chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    epochs = [r["epoch"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in records])
    ax1.set(xlabel="epoch", ylabel="loss", title="training loss (per member)")
    ax1.grid(alpha=0.3)
    if "train_accuracy" in records[0]:
        ax2.plot(epochs, [r["train_accuracy"] for r in records], label="train")
    ax2.plot(epochs, [r["heldout_accuracy"] for r in records], label="held out")
    ax2.axhline(0.5, color="grey", linestyle="--", label="chance")
    ax2.set(xlabel="epoch", ylabel="pair accuracy", title="accuracy (r_w > r_l)")
    ax2.legend()
    ax2.grid(alpha=0.3)
    _save(fig, out / "accuracy.png", written)
    return written
