"""Metrics of a pairwise scorer on preference pairs: accuracy with ties, margin, calibration, length bias.

Every function is small and pure (plain Python floats in, floats out), so each can be checked by hand.
A scorer's verdict on pair i is summarised by

* ``margin[i]``: how much it prefers the chosen (better) response. For a pointwise scorer (reward model,
  judge, verifier) ``margin = r_w - r_l``; for a pairwise scorer that returns ``p = P(chosen better)``
  ``margin = logit(p)`` (p clamped to [1e-6, 1 - 1e-6]), so that ``sigmoid(margin) = p`` either way.
* ``p[i]``: its probability that the chosen response is better: ``sigmoid(r_w - r_l)`` (the Bradley-Terry
  reading of a reward difference) or the pairwise scorer's own P.

A pair is a win when ``margin > 0``, a tie when ``margin == 0`` (within ``tie_tol``), a loss otherwise.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "pair_accuracy",
    "expected_calibration_error",
    "pairwise_ece",
    "pearson",
    "spearman",
    "ranks",
    "logit",
    "sigmoid",
    "prefers_longer_rate",
]

EPS = 1e-6


def sigmoid(x: float) -> float:
    """``1 / (1 + exp(-x))`` without overflow for any finite or infinite x."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def logit(p: float, eps: float = EPS) -> float:
    """``log(p / (1 - p))`` of p clamped to ``[eps, 1 - eps]`` (finite for p = 0 or 1); odd: logit(1-p) = -logit(p)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"logit needs a probability in [0, 1], got {p!r}")
    if p > 0.5:
        return -logit(1.0 - p, eps)
    p = max(p, eps)
    return math.log(p) - math.log1p(-p)


def pair_accuracy(margins: Sequence[float], *, tie_tol: float = 0.0) -> dict[str, float]:
    """Wins, ties and losses of ``margins`` (margin > tie_tol: win; |margin| <= tie_tol: tie).

    Returns ``n``, ``wins``, ``ties``, ``losses``, ``accuracy`` (ties count 0.5: ``(wins + ties/2) / n``),
    ``accuracy_ties_wrong`` (``wins / n``), ``accuracy_no_ties`` (``wins / (wins + losses)``, nan when every
    pair is a tie), ``tie_rate`` (``ties / n``) and ``mean_margin``. Empty input gives nan rates.
    """
    _check_finite(margins, "margins")
    if tie_tol < 0:
        raise ValueError(f"tie_tol must be >= 0, got {tie_tol}")
    n = len(margins)
    wins = sum(1 for m in margins if m > tie_tol)
    ties = sum(1 for m in margins if abs(m) <= tie_tol)
    losses = n - wins - ties
    return {
        "n": n,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "accuracy": (wins + 0.5 * ties) / n if n else math.nan,
        "accuracy_ties_wrong": wins / n if n else math.nan,
        "accuracy_no_ties": wins / (wins + losses) if wins + losses else math.nan,
        "tie_rate": ties / n if n else math.nan,
        "mean_margin": math.fsum(margins) / n if n else math.nan,
    }


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[float], *, n_bins: int = 10, lo: float = 0.0, hi: float = 1.0
) -> float:
    """ECE (Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 3).

    ``ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` over ``n_bins`` equal-width bins of ``[lo, hi]``,
    where ``acc(B_b)`` is the mean of ``correct`` (1, 0, or 0.5 for a tie) and ``conf(B_b)`` the mean
    confidence of the items in bin b. Bins are half-open ``[edge_b, edge_{b+1})`` except the last, which
    includes ``hi``. nan for empty input.
    """
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences for {len(correct)} outcomes")
    if n_bins < 1 or not hi > lo:
        raise ValueError(f"need n_bins >= 1 and hi > lo, got n_bins={n_bins}, lo={lo}, hi={hi}")
    _check_finite(confidences, "confidences")
    n = len(confidences)
    if n == 0:
        return math.nan
    sums = [[0, 0.0, 0.0] for _ in range(n_bins)]  # count, sum of confidence, sum of correct
    for c, y in zip(confidences, correct, strict=True):
        if not lo <= c <= hi:
            raise ValueError(f"confidence {c} outside [{lo}, {hi}]")
        b = min(int((c - lo) / (hi - lo) * n_bins), n_bins - 1)
        sums[b][0] += 1
        sums[b][1] += c
        sums[b][2] += y
    return math.fsum(abs(s_y - s_c) for _, s_c, s_y in sums) / n


def pairwise_ece(p_chosen: Sequence[float], *, n_bins: int = 10) -> float:
    """Calibration of ``p = P(chosen better)`` on pairs whose chosen response is known to be better.

    The scorer's verdict is the response it gives more than 0.5; its confidence is ``max(p, 1 - p)`` and it
    is correct when ``p > 0.5`` (0.5 credit at ``p == 0.5``, as in ``pair_accuracy``). ECE over ``n_bins``
    equal bins of ``[0.5, 1]`` (the confidence of a binary verdict is never below 0.5). With this reading the
    order in which a pair is presented does not matter, and a perfectly calibrated scorer has ECE 0.
    """
    for p in p_chosen:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"P(chosen better) must be in [0, 1], got {p!r}")
    confidences = [max(p, 1.0 - p) for p in p_chosen]
    correct = [1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for p in p_chosen]
    return expected_calibration_error(confidences, correct, n_bins=n_bins, lo=0.5, hi=1.0)


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks with ties given their average rank: ``[10, 20, 20, 5] -> [2, 3.5, 3.5, 1]``."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r = cov(x, y) / (sd(x) sd(y)); nan with fewer than 2 points or a constant input."""
    if len(x) != len(y):
        raise ValueError(f"pearson: {len(x)} x values for {len(y)} y values")
    _check_finite(x, "x")
    _check_finite(y, "y")
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return math.nan
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r of the average ranks (so ties are handled exactly)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} x values for {len(y)} y values")
    return pearson(ranks(x), ranks(y))


def prefers_longer_rate(margins: Sequence[float], chosen_lengths: Sequence[int], rejected_lengths: Sequence[int]):
    """Among pairs of unequal length where the scorer is not tied, the fraction where it prefers the longer.

    nan when no pair qualifies. A length-blind scorer sits near the data's own rate of "chosen is longer".
    """
    if not len(margins) == len(chosen_lengths) == len(rejected_lengths):
        raise ValueError("prefers_longer_rate: margins and lengths must have the same length")
    longer, counted = 0, 0
    for m, lw, ll in zip(margins, chosen_lengths, rejected_lengths, strict=True):
        if lw == ll or m == 0:
            continue
        counted += 1
        longer += (m > 0) == (lw > ll)
    return longer / counted if counted else math.nan


def _check_finite(values: Sequence[float], name: str) -> None:
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise ValueError(f"{name}[{i}] is not finite: {v!r}")
