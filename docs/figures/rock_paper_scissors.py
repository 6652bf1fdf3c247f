"""Rock-paper-scissors: the policy over time under SPPO and under DPO, and every method's exploitability.

    python docs/figures/rock_paper_scissors.py [OUT.png]

Runs the tabular games of `rlxf.eval.games` (deterministic: exact expectations, no sampling; about 20 s on two
CPU cores) and writes docs/figures/rock_paper_scissors.png unless told otherwise:

(a) SPPO's iterates circle the uniform equilibrium while their running average (dashed) closes in on it;
(b) plain DPO on Bradley-Terry labels of the same oracle collapses onto paper, the answer its data favours;
(c) the exploitability of each method's last iterate (solid) and of its running average (dashed).
"""
from __future__ import annotations

import sys
from pathlib import Path

from rlxf.eval.games import ANSWERS, play

ROUNDS = 400
METHODS = ("sppo", "dno", "inpo", "nash_md", "dpo", "online_dpo")
FLOOR = 1e-5  # exploitability is plotted on a log scale, clipped here


def _policy_panel(ax, history, title):
    rounds = range(len(history.policies))
    average = history.policies.cumsum(0) / history.policies.new_tensor(range(1, len(rounds) + 1)).unsqueeze(1)
    for k, (answer, color) in enumerate(zip(ANSWERS, ("tab:gray", "tab:blue", "tab:red"), strict=True)):
        ax.plot(rounds, history.policies[:, k], color=color, lw=0.8, label=answer)
        ax.plot(rounds, average[:, k], color=color, lw=2, ls="--")
    ax.axhline(1 / 3, color="black", lw=0.5)
    ax.set(title=title, xlabel="round", ylabel="probability (dashed: running average)", ylim=(0, 1))
    ax.legend(loc="upper right")


def main(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {m: play(m, ROUNDS) for m in METHODS}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    _policy_panel(axes[0], histories["sppo"], "(a) SPPO: the iterates cycle, their average converges")
    _policy_panel(axes[1], histories["dpo"], "(b) DPO on Bradley-Terry labels: collapse onto paper")
    ax = axes[2]
    for i, (method, history) in enumerate(histories.items()):
        color = f"C{i}"
        ax.plot(history.exploitability().clamp(min=FLOOR), color=color, lw=1, label=method)
        ax.plot(history.average_exploitability().clamp(min=FLOOR), color=color, lw=2, ls="--")
    ax.axhline(0.05, color="black", lw=0.5, ls=":")
    ax.set(yscale="log", ylim=(FLOOR, 0.6), xlabel="round", title="(c) exploitability: last (solid), average (dashed)",
           ylabel="max_y P(y > pi) - 1/2")
    ax.legend(loc="lower left", ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_suffix(".png"))
