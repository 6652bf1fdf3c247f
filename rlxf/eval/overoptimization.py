"""Reward over-optimisation curves: best-of-n and RL gold/proxy reward against sqrt(KL), their fits, the finding.

The measurement side of ``rlxf eval overoptimization`` (the command, which trains proxies and runs RL through the
recipes, is `rlxf.recipes.overoptimization`): small pure functions, a plot and a printout.

Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization" (arXiv:2210.10760):

* best-of-n: of n samples of pi_ref the one the proxy scores highest; its KL from pi_ref is
  KL_bon(n) = log n - (n - 1) / n (Sec. 2, a bound that is tight for continuous rewards), d = sqrt(KL);
* the scores of the selected sample are estimated without bias from a pool of m >= n samples per prompt
  (Appendix I): rank the pool by proxy reward; the i-th smallest (1-based) is the maximum of a uniformly random
  n-subset with probability C(i - 1, n - 1) / C(m, n);
* functional forms of the gold reward against d = sqrt(KL): R_bon(d) = d (alpha - beta d) (eq. 1) and
  R_RL(d) = d (alpha - beta log d) (eq. 2), both linear in (alpha, beta), so fitted by least squares.

The finding's booleans (`peak_and_fall`, `compare_peaks`) read the curves the harness measures.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FORMS", "analyse_curve", "bon_curve", "bon_expectation", "bon_form", "bon_kl", "bon_weights", "compare_peaks",
    "findings", "fit_bon", "fit_rl", "flip_labels", "format_report", "pairwise_agreement", "peak_and_fall",
    "plot_overoptimization",
    "rl_form", "sequence_kl", "standard_error",
]


def bon_kl(n: int) -> float:
    """KL(pi_bon || pi_ref) = log n - (n - 1) / n of best-of-n (Gao et al. 2023, Sec. 2); 0 at n = 1."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def bon_weights(m: int, n: int) -> np.ndarray:
    """w_i = C(i - 1, n - 1) / C(m, n) for ranks i = 1..m (ascending proxy): the probability that the i-th
    smallest of m pooled samples is the maximum of a uniform random n-subset. float64 `(m,)`, sums to 1.

    Each ratio is of exact integers (Python's int / int rounds once), so the weights are correct to float64
    rounding for any pool size."""
    if not 1 <= n <= m:
        raise ValueError(f"need 1 <= n <= m, got n={n}, m={m}")
    total = math.comb(m, n)
    return np.array([math.comb(i - 1, n - 1) / total for i in range(1, m + 1)], dtype=np.float64)


def bon_expectation(proxy: Sequence[float], values: Sequence[float], n: int) -> float:
    """Unbiased estimate, from one pool, of E[value of the proxy-best of n samples] (Gao et al. 2023, App. I).

    proxy, values: `(m,)` proxy rewards and the values to average (gold or proxy) of the m pooled samples.
    Ties in the proxy are broken by pool order (a stable sort), as if the earlier sample scored lower.
    """
    p, v = np.asarray(proxy, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if p.ndim != 1 or p.shape != v.shape:
        raise ValueError(f"proxy and values must be (m,) of one length, got {p.shape} and {v.shape}")
    order = np.argsort(p, kind="stable")
    return float(bon_weights(len(p), n) @ v[order])


def bon_curve(proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]) -> list[dict[str, float]]:
    """Best-of-n curve over prompts: proxy, gold `(P, m)` (a pool of m samples for each of P prompts).

    One point per n: ``n``, ``kl`` (`bon_kl`), ``d`` = sqrt(kl), and ``gold``/``proxy`` = the mean over prompts
    of each prompt's `bon_expectation`, with ``gold_se``/``proxy_se`` their standard errors over prompts
    (std with ddof=1 / sqrt(P); 0 for one prompt)."""
    proxy, gold = np.asarray(proxy, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if proxy.ndim != 2 or proxy.shape != gold.shape:
        raise ValueError(f"proxy and gold must be (P, m) of one shape, got {proxy.shape} and {gold.shape}")
    points = []
    for n in ns:
        point = {"n": int(n), "kl": bon_kl(n), "d": math.sqrt(bon_kl(n))}
        for name, values in (("gold", gold), ("proxy", proxy)):
            per_prompt = np.array([bon_expectation(p, v, n) for p, v in zip(proxy, values, strict=True)])
            point[name] = float(per_prompt.mean())
            point[f"{name}_se"] = standard_error(per_prompt)
        points.append(point)
    return points


def standard_error(values: np.ndarray) -> float:
    """std (ddof=1) / sqrt(len) of a 1-D array; 0 for fewer than two values."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def sequence_kl(policy_logps: np.ndarray, ref_logps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-sample k1 estimate of the sequence-level KL(pi || pi_ref): sum_t mask (log pi(y_t) - log pi_ref(y_t)).

    policy_logps, ref_logps: `(N, T)` log-probs of samples y ~ pi; mask `(N, T)` bool. Returns `(N,)` float64;
    its mean over samples of pi is an unbiased estimate of KL(pi || pi_ref) (each term may be negative)."""
    policy_logps, ref_logps = np.asarray(policy_logps, dtype=np.float64), np.asarray(ref_logps, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if policy_logps.ndim != 2 or policy_logps.shape != ref_logps.shape or mask.shape != policy_logps.shape:
        raise ValueError(f"need (N, T) log-probs and mask, got {policy_logps.shape}, {ref_logps.shape}, {mask.shape}")
    return np.where(mask, policy_logps - ref_logps, 0.0).sum(axis=1)


def pairwise_agreement(proxy: np.ndarray, gold: np.ndarray) -> float:
    """How often a proxy orders two samples of one prompt as the gold reward does: over every pair i < j within each
    row of `(P, m)` scores whose gold rewards differ, 1 when sign(proxy_i - proxy_j) = sign(gold_i - gold_j), 1/2
    for a proxy tie; NaN when no pair's gold rewards differ."""
    proxy, gold = np.asarray(proxy, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if proxy.ndim != 2 or proxy.shape != gold.shape:
        raise ValueError(f"proxy and gold must be (P, m) of one shape, got {proxy.shape} and {gold.shape}")
    i, j = np.triu_indices(proxy.shape[1], k=1)
    g, p = np.sign(gold[:, i] - gold[:, j]), np.sign(proxy[:, i] - proxy[:, j])
    counted = g != 0
    if not counted.any():
        return math.nan
    return float(np.where(p == 0, 0.5, (p == g).astype(np.float64))[counted].mean())


# ----------------------------------------------------------------------------------------------- fits


def bon_form(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """R_bon(d) = d (alpha - beta d) (Gao et al. 2023, eq. 1)."""
    d = np.asarray(d, dtype=np.float64)
    return d * (alpha - beta * d)


def rl_form(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """R_RL(d) = d (alpha - beta log d) (Gao et al. 2023, eq. 2), with d log d = 0 at d = 0."""
    d = np.asarray(d, dtype=np.float64)
    return d * alpha - beta * _xlogx(d)


def _xlogx(d: np.ndarray) -> np.ndarray:
    return np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)


def _fit(columns: np.ndarray, r: np.ndarray) -> dict[str, float]:
    (alpha, beta), *_ = np.linalg.lstsq(columns, r, rcond=None)
    return {"alpha": float(alpha), "beta": float(beta)}


def fit_bon(d: Sequence[float], r: Sequence[float]) -> dict[str, float]:
    """Least-squares (alpha, beta) of R = alpha d - beta d^2 (`bon_form`); r is the reward relative to d = 0."""
    d, r = np.asarray(d, dtype=np.float64), np.asarray(r, dtype=np.float64)
    return _fit(np.stack([d, -d * d], axis=1), r)


def fit_rl(d: Sequence[float], r: Sequence[float]) -> dict[str, float]:
    """Least-squares (alpha, beta) of R = alpha d - beta d log d (`rl_form`); r is the reward relative to d = 0."""
    d, r = np.asarray(d, dtype=np.float64), np.asarray(r, dtype=np.float64)
    return _fit(np.stack([d, -_xlogx(d)], axis=1), r)


# ----------------------------------------------------------------------------------------------- labels


def flip_labels(rows: list[dict[str, Any]], fraction: float, *, seed: int) -> tuple[list[dict[str, Any]], list[int]]:
    """Swap chosen and rejected (and their scores) in exactly round(fraction * N) of the N preference rows, drawn
    without replacement with ``random.Random(seed)``; returns the new rows (the input is not changed) and the
    sorted indices that were flipped. A flipped row's ``flipped`` is True, every other row's False; the fields of
    `rlxf.feedback.make_synthetic_pairs` (``p_chosen``, ``agrees_with_gold``) are updated to match."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    flipped = sorted(random.Random(seed).sample(range(len(rows)), round(fraction * len(rows))))
    out, which = [], set(flipped)
    for i, row in enumerate(rows):
        row = {**row, "flipped": i in which}
        if i in which:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            if "chosen_score" in row or "rejected_score" in row:
                row["chosen_score"], row["rejected_score"] = row.get("rejected_score"), row.get("chosen_score")
            if "p_chosen" in row:  # make_synthetic_pairs' fields stay true of the flipped row
                row["p_chosen"] = 1.0 - row["p_chosen"]
            if "agrees_with_gold" in row:
                row["agrees_with_gold"] = bool(row["chosen_score"] > row["rejected_score"])
        out.append(row)
    return out, flipped


# ----------------------------------------------------------------------------------------------- the finding


def peak_and_fall(points: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Whether a curve over-optimises: the proxy keeps rising while the gold reward peaks and falls.

    points: ordered by d, each with ``gold``, ``gold_se``, ``proxy``. With k the index of the gold maximum and L
    the last point: ``gold_interior_peak`` = 0 < k < L; ``gold_falls`` = gold[k] - gold[L] > sqrt(se_k^2 + se_L^2)
    (the drop exceeds its standard error); ``proxy_keeps_rising`` = proxy[L] >= proxy[k]; ``overoptimized`` is
    all three. Also ``peak_index``, ``gold_peak``, ``gold_last``, ``gold_drop`` and ``drop_se``."""
    if not points:
        raise ValueError("no points")
    gold = [p["gold"] for p in points]
    k, last = int(np.argmax(gold)), len(points) - 1
    drop = gold[k] - gold[last]
    drop_se = math.hypot(points[k].get("gold_se", 0.0), points[last].get("gold_se", 0.0))
    interior = 0 < k < last
    falls = bool(drop > drop_se) and interior
    rising = bool(points[last]["proxy"] >= points[k]["proxy"])
    return {"peak_index": k, "gold_peak": gold[k], "gold_last": gold[last], "gold_drop": drop, "drop_se": drop_se,
            "gold_interior_peak": interior, "gold_falls": falls, "proxy_keeps_rising": rising,
            "overoptimized": interior and falls and rising}


def compare_peaks(single: dict[str, Any], ensemble: dict[str, Any]) -> dict[str, bool]:
    """Coste et al. 2024's claims for one ensemble against the single proxy, from two `peak_and_fall` results:
    ``peak_at_least_single`` = the ensemble's gold peak >= the single proxy's; ``falls_less`` = its gold drop
    from the peak to the last point is smaller."""
    return {"peak_at_least_single": bool(ensemble["gold_peak"] >= single["gold_peak"]),
            "falls_less": bool(ensemble["gold_drop"] < single["gold_drop"])}


# ----------------------------------------------------------------------------------------------- a whole curve

# kind of curve -> (fit, functional form)
FORMS = {"bon": (fit_bon, bon_form), "rl": (fit_rl, rl_form)}


def analyse_curve(points: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """One measured curve (``points`` ordered by d, each with ``d``, ``gold``, ``gold_se``, ``proxy``, ...) of kind
    ``bon`` or ``rl``: its points, the fitted (alpha, beta) of gold and of proxy reward relative to the first point
    (d = 0 for best-of-1; the initial policy for RL), and its `peak_and_fall` shape."""
    fit, _ = FORMS[kind]
    d = [p["d"] for p in points]
    fits = {name: fit(d, [p[name] - points[0][name] for p in points]) for name in ("gold", "proxy")}
    return {"points": points, "fits": fits, "shape": peak_and_fall(points)}


def findings(curves: dict[str, dict[str, Any]], *, single: str = "single") -> dict[str, Any]:
    """The finding's booleans for the curves of one kind (proxy name -> `analyse_curve`): per proxy whether it
    over-optimised (`peak_and_fall`), and per ensemble proxy its `compare_peaks` against ``single``."""
    out: dict[str, Any] = {"overoptimized": {name: c["shape"]["overoptimized"] for name, c in curves.items()}}
    if single in curves:
        out["vs_single"] = {name: compare_peaks(curves[single]["shape"], c["shape"])
                            for name, c in curves.items() if name != single}
    return out


# ----------------------------------------------------------------------------------------------- plot and text


def plot_overoptimization(result: dict[str, Any], path: str | Path) -> Path:
    """PNG of the gold (filled markers, solid fitted curve) and proxy (open markers, dashed fitted curve) reward
    relative to d = 0 against d = sqrt(KL), one colour per proxy, best-of-n and RL side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("bon", "rl") if result.get(k)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.8), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind in zip(axes[0], kinds, strict=True):
        _, form = FORMS[kind]
        for i, (name, curve) in enumerate(result[kind].items()):
            colour, points = colours[i % len(colours)], curve["points"]
            d = np.array([p["d"] for p in points])
            grid = np.linspace(0.0, float(d.max()) if len(d) else 1.0, 200)
            for what, marker, style in (("gold", "o", "-"), ("proxy", "s", "--")):
                r = np.array([p[what] - points[0][what] for p in points])
                se = np.array([p.get(f"{what}_se", 0.0) for p in points])
                ax.errorbar(d, r, yerr=se, fmt=marker, color=colour, mfc=colour if what == "gold" else "none",
                            ms=4, lw=0.8, capsize=2)
                fit = curve["fits"][what]
                ax.plot(grid, form(grid, fit["alpha"], fit["beta"]), style, color=colour, lw=1.4,
                        label=f"{name} {what}")
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_xlabel("d = sqrt(KL(pi || pi_ref)) (nats^0.5)")
        ax.set_ylabel("reward - reward at d = 0")
        ax.set_title({"bon": "best-of-n (fits: d (alpha - beta d))", "rl": "RL (fits: d (alpha - beta log d))"}[kind])
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def format_report(result: dict[str, Any]) -> str:
    """A readable printout: per kind and proxy a table of the points, the fitted coefficients and the findings."""
    lines = []
    for kind, title, x in (("bon", "best-of-n", "n"), ("rl", "RL against the proxy", "step")):
        if not result.get(kind):
            continue
        lines.append(f"== {title} ==")
        for name, curve in result[kind].items():
            lines.append(f"-- proxy {name} --")
            lines.append(f"{x:>6} {'KL':>8} {'d':>6} {'gold':>16} {'proxy':>16}")
            for p in curve["points"]:
                lines.append(f"{p[x]:>6} {p['kl']:>8.3f} {p['d']:>6.3f} {p['gold']:>8.3f} +- {p['gold_se']:<5.3f} "
                             f"{p['proxy']:>8.3f} +- {p['proxy_se']:<5.3f}")
            for what in ("gold", "proxy"):
                fit = curve["fits"][what]
                lines.append(f"fit {what:<5}: alpha {fit['alpha']:+.4f}  beta {fit['beta']:+.4f}")
            s = curve["shape"]
            lines.append(f"gold peak {s['gold_peak']:.3f} at point {s['peak_index']}, last {s['gold_last']:.3f} "
                         f"(drop {s['gold_drop']:.3f} +- {s['drop_se']:.3f}); interior peak "
                         f"{_yes(s['gold_interior_peak'])}, falls {_yes(s['gold_falls'])}, proxy keeps rising "
                         f"{_yes(s['proxy_keeps_rising'])}")
        found = result["findings"][kind]
        for name, flag in found["overoptimized"].items():
            lines.append(f"finding [{kind}] proxy {name}: proxy keeps rising while gold peaks and falls: {_yes(flag)}")
        for name, cmp in found.get("vs_single", {}).items():
            lines.append(f"finding [{kind}] ensemble {name}: gold peak >= single's: "
                         f"{_yes(cmp['peak_at_least_single'])}; falls less than single: {_yes(cmp['falls_less'])}")
    return "\n".join(lines)
