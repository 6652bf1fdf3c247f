"""Choosing preference pairs inside a group of completions, and estimating each one's win rate.

An online preference loop samples K completions for each of G prompts, scores them (a reward, a judge's
verdicts, or win rates against the group) and turns each group into training pairs. Every selector here takes
the scores as a `(G, K)` tensor (row g = prompt g's K completions, in sampling order) and returns `Pairs`:
``chosen`` and ``rejected`` (long indices into the group's K completions) and ``valid`` (bool), each `(G,)`
for one pair per group or `(G, P)` for several. Selectors are pure and detached (scores are data, not
parameters); `pair_rows` turns a result into flat row indices of the `(G * K,)` completion batch.

Ties and duplicates: a pair whose two scores are equal carries no preference and is never valid, so two
copies of one completion (which a deterministic scorer scores alike) are never paired; a group whose scores
are all equal has no valid pair. When several completions share the best (or worst) score, the first in
sampling order is taken. A non-finite score (NaN, +-inf) makes every pair of its group invalid, so a scorer's
failure cannot silently pick a pair.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "PAIR_SELECTORS",
    "Pairs",
    "all_pairs",
    "best_vs_worst",
    "large_margin_pairs",
    "length_controlled_pairs",
    "pair_rows",
    "random_pair",
    "win_rates_from_comparisons",
]


class Pairs(NamedTuple):
    """Indices into each group's K completions: `chosen` is preferred to `rejected` where `valid` is True."""

    chosen: Tensor
    rejected: Tensor
    valid: Tensor


def _scores(scores: Tensor, name: str = "scores") -> Tensor:
    if scores.dim() != 2:
        raise ValueError(f"{name} must be (G, K), got shape {tuple(scores.shape)}")
    if scores.shape[1] < 2:
        raise ValueError(f"{name} needs K >= 2 completions per group to form a pair, got K = {scores.shape[1]}")
    if not scores.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor, got dtype {scores.dtype}")
    return scores.detach()


def _oriented(scores: Tensor, first: Tensor, second: Tensor) -> Pairs:
    """Order each pair (first, second) `(G, P)` by score, higher = chosen; equal or non-finite -> invalid."""
    a, b = scores.gather(1, first), scores.gather(1, second)
    chosen = torch.where(a > b, first, second)
    rejected = torch.where(a > b, second, first)
    finite = torch.isfinite(scores).all(dim=1, keepdim=True)
    return Pairs(chosen, rejected, (a != b) & finite)


def best_vs_worst(scores: Tensor) -> Pairs:
    """The best against the worst completion of each group (as in iterative DPO and INPO's experiments).

    `scores` `(G, K)` -> `Pairs` of `(G,)`; invalid where the best and worst tie (all K equal) or a score is
    not finite. Of several equally best (worst) completions the first is chosen (rejected).
    """
    s = _scores(scores)
    chosen, rejected = s.argmax(dim=1, keepdim=True), s.argmin(dim=1, keepdim=True)
    pairs = _oriented(s, chosen, rejected)
    return Pairs(*(t.squeeze(1) for t in pairs))


def all_pairs(scores: Tensor) -> Pairs:
    """Every unordered pair {i, j}, i < j, of each group, oriented by score.

    `scores` `(G, K)` -> `Pairs` of `(G, P)`, P = K (K - 1) / 2, the pairs in row-major order of (i, j)
    ((0, 1), (0, 2), ..., (K-2, K-1)); a tied pair is invalid.
    """
    s = _scores(scores)
    groups, k = s.shape
    first, second = torch.triu_indices(k, k, offset=1, device=s.device)
    return _oriented(s, first.expand(groups, -1), second.expand(groups, -1))


def random_pair(scores: Tensor, generator: torch.Generator | None = None) -> Pairs:
    """One pair of distinct completions per group, drawn uniformly, oriented by score (as OAIF and online DPO
    pair two samples). `scores` `(G, K)` -> `Pairs` of `(G,)`; a tied pair is invalid. Draws with `generator`
    (on its device; torch's default generator when None), so a seeded generator gives the same pairs."""
    s = _scores(scores)
    groups, k = s.shape
    device = generator.device if generator is not None else s.device
    first = torch.randint(k, (groups, 1), generator=generator, device=device)
    offset = torch.randint(1, k, (groups, 1), generator=generator, device=device)
    first, second = first.to(s.device), ((first + offset) % k).to(s.device)
    return Pairs(*(t.squeeze(1) for t in _oriented(s, first, second)))


def large_margin_pairs(win_rates: Tensor, margin: float) -> Pairs:
    """DNO's filter (Rosset et al. 2024, Algorithm 2, line 6): every pair whose estimated win rates differ by
    more than `margin`, the higher win rate chosen.

    `win_rates` `(G, K)` (e.g. `win_rates_from_comparisons`), `margin` >= 0 -> `Pairs` of `(G, P)` in the
    order of `all_pairs`; valid iff |w_i - w_j| > margin (strictly, so margin 0 is `all_pairs`).
    """
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    pairs = all_pairs(win_rates)
    w = win_rates.detach()
    gap = w.gather(1, pairs.chosen) - w.gather(1, pairs.rejected)
    return Pairs(pairs.chosen, pairs.rejected, pairs.valid & (gap > margin))


def length_controlled_pairs(scores: Tensor, lengths: Tensor, rho: float = 0.1) -> Pairs:
    """Meta-Rewarding's length control (Wu et al. 2024, Sec. 2.1, "length-control mechanism"): among responses
    of similar quality prefer the shorter one, so that a judge that likes long answers cannot make the policy's
    answers grow without end.

    Per group, with S_max and S_min its best and worst scores and a quality tier rho in [0, 0.5):

        top tier    = {k : s_k >= (1 - rho) S_max + rho S_min}     chosen   = the shortest of the top tier
        bottom tier = {k : s_k <= (1 - rho) S_min + rho S_max}     rejected = the longest of the bottom tier

    `scores` `(G, K)` float, `lengths` `(G, K)` (token counts; any real dtype), `rho` -> `Pairs` of `(G,)`.
    Invalid where S_max == S_min (Self-Rewarding, Yuan et al. 2024, Sec. 2.3: a pair whose scores are equal is
    discarded; here all K equal) or a score or length is not finite. Ties inside a tier: for the chosen the
    shortest, then the higher score, then the first in sampling order; for the rejected the longest, then the
    lower score, then the first. Because rho < 0.5 the tiers are disjoint, so the chosen always scores strictly
    higher than the rejected. rho = 0 is Self-Rewarding's best-vs-worst selection with length breaking ties
    among equally best (worst) responses (`best_vs_worst` takes the first).
    Deviation: the paper allows rho up to 1; above 0.5 the tiers overlap and a "chosen" could score below its
    "rejected", so this function refuses rho >= 0.5.
    """
    if not 0.0 <= rho < 0.5:
        raise ValueError(f"rho must be in [0, 0.5) (the tiers must not overlap), got {rho}")
    s = _scores(scores).double()
    if lengths.shape != scores.shape:
        raise ValueError(f"lengths must have the scores' shape {tuple(scores.shape)}, got {tuple(lengths.shape)}")
    n = lengths.detach().to(device=s.device, dtype=torch.float64)
    finite = torch.isfinite(s).all(dim=1) & torch.isfinite(n).all(dim=1)
    s_max, s_min = s.max(dim=1, keepdim=True).values, s.min(dim=1, keepdim=True).values
    top = (s >= (1 - rho) * s_max + rho * s_min) | (s == s_max)  # the best is in its tier despite rounding
    bottom = (s <= (1 - rho) * s_min + rho * s_max) | (s == s_min)
    chosen, rejected = _first_by(top, -n, s), _first_by(bottom, n, -s)
    return Pairs(chosen, rejected, finite & (s_max > s_min).squeeze(1))


def _first_by(tier: Tensor, key: Tensor, tiebreak: Tensor) -> Tensor:
    """`(G,)` index of the tier member with the highest `key`, then the highest `tiebreak`, then the first."""
    lowest = torch.full_like(key, -math.inf)
    best = tier & (key == torch.where(tier, key, lowest).max(dim=1, keepdim=True).values)
    best &= tiebreak == torch.where(best, tiebreak, lowest).max(dim=1, keepdim=True).values
    return best.int().argmax(dim=1)


def win_rates_from_comparisons(prefs: Tensor) -> Tensor:
    """P^(y_k > pi_t | x), each sample's win rate against the policy that drew the group, from its
    comparisons with the other K - 1 samples (SPPO, Wu et al. 2024, eq. 3.5; DNO's r_t, Algorithm 2, line 5).

    `prefs` `(G, K, K)`, prefs[g, k, j] = P(y_k > y_j | x_g) (a judge's probability or a 0/1 outcome) ->
    `(G, K)` float32, w[g, k] = mean_{j != k} prefs[g, k, j]. The diagonal is never read (a sample against
    itself says nothing; any value there, NaN included, is ignored). Only row k is used: a judge whose
    P(a > b) + P(b > a) != 1 (position bias) should be symmetrised first. A duplicate of y_k among the others
    counts as one more draw from pi_t, which it is. Deviation: SPPO's formula and official code average over
    all K samples including y_k itself at 1/2, i.e. (K-1)/K w + 1/(2K), shrunk towards 1/2; leaving y_k out
    gives an unbiased estimate given y_k.
    """
    if prefs.dim() != 3 or prefs.shape[1] != prefs.shape[2]:
        raise ValueError(f"prefs must be (G, K, K), got shape {tuple(prefs.shape)}")
    k = prefs.shape[1]
    if k < 2:
        raise ValueError(f"win rates need K >= 2 samples per group, got K = {k}")
    diagonal = torch.eye(k, dtype=torch.bool, device=prefs.device)
    return torch.where(diagonal, 0.0, prefs.detach().float()).sum(dim=2) / (k - 1)


def pair_rows(pairs: Pairs, group_size: int) -> tuple[Tensor, Tensor]:
    """The valid pairs as flat row indices into the `(G * K,)` completion batch (group g's completions in rows
    g*K .. g*K + K - 1): `(chosen_rows, rejected_rows)`, each `(N,)` for the N valid pairs, group-major."""
    chosen, rejected, valid = pairs
    groups = chosen.shape[0]
    offset = (torch.arange(groups, device=chosen.device) * group_size).view(groups, *([1] * (chosen.dim() - 1)))
    return (chosen + offset)[valid], (rejected + offset)[valid]


PAIR_SELECTORS = {
    "best_vs_worst": best_vs_worst,
    "all_pairs": all_pairs,
    "random_pair": random_pair,
    "large_margin": large_margin_pairs,
    "length_controlled": length_controlled_pairs,
}
"""Selector name -> function; each takes the `(G, K)` scores first (``random_pair`` also a generator,
``large_margin`` a margin, ``length_controlled`` the `(G, K)` completion lengths and rho)."""
