"""PNG plots of a run's curves (matplotlib, imported lazily, non-interactive backend): online RL runs, offline
preference runs and reward-model runs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_preference_run", "plot_reward_model_run", "plot_run"]


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


class _Figures:
    """Writes one PNG per figure into ``out_dir`` and remembers the paths."""

    def __init__(self, out_dir: str | Path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.out, self.written = plt, Path(out_dir), []
        self.out.mkdir(parents=True, exist_ok=True)

    def axes(self, *, figsize=(7, 4)):
        return self.plt.subplots(figsize=figsize)

    def save(self, fig, ax, name: str, *, legend: bool = True) -> None:
        for a in (ax if isinstance(ax, tuple | list) else [ax]):
            if legend:
                a.legend()
            a.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.out / name, dpi=110)
        self.plt.close(fig)
        self.written.append(self.out / name)

    def raw_and_mean(self, metrics, key: str, name: str, *, ylabel: str, title: str) -> None:
        """A noisy per-step curve, faint, with its 10-step moving average."""
        fig, ax = self.axes()
        xs, ys = _series(metrics, key)
        ax.plot(xs, ys, alpha=0.35, label="batch" if key == "loss" else "batch mean")
        ax.plot(xs, _moving_average(ys, 10), label="10-step mean")
        ax.set(xlabel="step", ylabel=ylabel, title=title)
        self.save(fig, ax, name)


def plot_run(metrics: list[dict[str, Any]], evals: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``reward.png`` (training reward, raw and 10-step mean), ``accuracy.png`` (held-out accuracy with
    its 95% interval against training time) and ``length_entropy.png``; returns the paths written."""
    figures = _Figures(out_dir)
    figures.raw_and_mean(metrics, "reward_mean", "reward.png", ylabel="reward", title="training reward")
    if evals:
        fig, ax = figures.axes()
        t = [e["train_seconds"] / 60 for e in evals]
        ax.fill_between(t, [100 * e["ci95"][0] for e in evals], [100 * e["ci95"][1] for e in evals], alpha=0.2,
                        label="95% CI")
        ax.plot(t, [100 * e["accuracy"] for e in evals], marker="o", label="greedy held-out accuracy")
        ax.set(xlabel="training time (min)", ylabel="accuracy (%)", title="held-out accuracy", ylim=(0, 100))
        figures.save(fig, ax, "accuracy.png")
    fig, ax1 = figures.axes()
    ax1.plot(*_series(metrics, "completion_len"), color="tab:blue", label="completion length")
    ax1.set(xlabel="step", ylabel="tokens")
    ax2 = ax1.twinx()
    ax2.plot(*_series(metrics, "entropy"), color="tab:orange", label="entropy")
    ax2.set_ylabel("entropy (nats)")
    fig.legend(loc="upper right")
    figures.save(fig, ax1, "length_entropy.png", legend=False)
    return figures.written


def plot_preference_run(metrics: list[dict[str, Any]], evals: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``loss.png`` (training loss, raw and 10-step mean), ``accuracy.png`` (held-out implicit-reward and
    ranking accuracy, training reward accuracy), ``margins.png`` (training and held-out reward margins) and
    ``logps.png`` (held-out mean chosen/rejected log-probs: both falling = likelihood displacement)."""
    figures = _Figures(out_dir)
    steps = [e["step"] for e in evals]
    figures.raw_and_mean(metrics, "loss", "loss.png", ylabel="loss", title="training loss")

    fig, ax = figures.axes()
    xs, ys = _series(metrics, "reward_accuracy")
    if xs:
        ax.plot(xs, [100 * y for y in _moving_average(ys, 10)], alpha=0.6, label="train reward accuracy (10-step)")
    for key, marker, label in (("accuracy", "o", "held-out implicit-reward accuracy"),
                               ("ranking_accuracy", "s", "held-out ranking accuracy pi(y_w) > pi(y_l)")):
        if evals:
            ax.plot(steps, [100 * e[key] for e in evals], marker=marker, label=label)
    ax.set(xlabel="step", ylabel="accuracy (%)", title="preference accuracy", ylim=(0, 100))
    figures.save(fig, ax, "accuracy.png")

    fig, ax = figures.axes()
    xs, ys = _series(metrics, "reward_margin")
    if xs:
        ax.plot(xs, _moving_average(ys, 10), label="train margin (10-step)")
    if evals:
        ax.plot(steps, [e["margin"] for e in evals], marker="o", label="held-out margin")
    ax.set(xlabel="step", ylabel="r_w - r_l", title="implicit reward margin")
    figures.save(fig, ax, "margins.png")

    fig, ax = figures.axes()
    for side, color in (("chosen", "tab:green"), ("rejected", "tab:red")):
        if evals:
            ax.plot(steps, [e[f"{side}_logps"] for e in evals], marker="o", color=color, label=f"held-out {side}")
        xs, ys = _series(metrics, f"policy_{side}_logps")
        if xs:
            ax.plot(xs, _moving_average(ys, 10), color=color, alpha=0.35, label=f"train {side} (10-step)")
    ax.set(xlabel="step", ylabel="summed log-prob", title="chosen / rejected log-probs")
    figures.save(fig, ax, "logps.png")
    return figures.written


def plot_reward_model_run(records: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``accuracy.png`` of a reward-model run: training loss per member, and train / held-out pair accuracy
    (r_w > r_l) per epoch against chance."""
    figures = _Figures(out_dir)
    epochs = [r["epoch"] for r in records]
    fig, (ax1, ax2) = figures.plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in records], label="train")
    ax1.set(xlabel="epoch", ylabel="loss", title="training loss (per member)")
    if "train_accuracy" in records[0]:
        ax2.plot(epochs, [r["train_accuracy"] for r in records], label="train")
    ax2.plot(epochs, [r["heldout_accuracy"] for r in records], label="held out")
    ax2.axhline(0.5, color="grey", linestyle="--", label="chance")
    ax2.set(xlabel="epoch", ylabel="pair accuracy", title="accuracy (r_w > r_l)")
    figures.save(fig, (ax1, ax2), "accuracy.png")
    return figures.written
