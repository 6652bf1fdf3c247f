"""Meta-Rewarding's length-controlled pair selector (rlxf.ops.pairs.length_controlled_pairs): tiers, ties, invalid
groups by hand, and a loop reference on many ties."""

import math

import pytest
import torch

from rlxf.ops import PAIR_SELECTORS, best_vs_worst
from rlxf.ops.pairs import length_controlled_pairs

NAN, INF = float("nan"), float("inf")


def _as_list(pairs):
    return [t.tolist() for t in pairs]


def test_length_controlled_by_hand():
    """rho = 0.1.
    Row 0: S_max 5, S_min 1, gap 4: top tier s >= 4.6 = {4.9 (len 8), 5.0 (len 30)} -> the shorter, index 1;
      bottom tier s <= 1.4 = {1.0 (len 50), 1.2 (len 40)} -> the longer, index 3. (best_vs_worst: 2 vs 3.)
    Row 1: all equal -> invalid (Self-Rewarding discards equal scores).
    Row 2: gap 5, top s >= 4.5 = {5.0, 4.8}, both 7 long -> the higher score, index 0; bottom s <= 0.5 = {0.0} -> 3.
    Row 3: gap 4, bottom s <= 1.4 = {1.0, 1.1}, both 20 long -> the lower score, index 1; top {5.0} -> 0.
    Row 4: a NaN score -> invalid. Row 5: an infinite length -> invalid."""
    scores = torch.tensor([[3.0, 4.9, 5.0, 1.0, 1.2], [2.0, 2.0, 2.0, 2.0, 2.0], [5.0, 4.8, 2.0, 0.0, 3.0],
                           [5.0, 1.0, 1.1, 3.0, 3.0], [NAN, 1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    lengths = torch.tensor([[10, 8, 30, 50, 40], [1, 2, 3, 4, 5], [7, 7, 3, 3, 9],
                            [1, 20, 20, 9, 9], [1, 2, 3, 4, 5], [1, 2, 3, 4, INF]])
    chosen, rejected, valid = length_controlled_pairs(scores, lengths, rho=0.1)
    rows = [0, 2, 3]  # the valid ones (an invalid row's indices mean nothing)
    assert chosen[rows].tolist() == [1, 0, 0] and rejected[rows].tolist() == [3, 3, 1]
    assert valid.tolist() == [True, False, True, True, False, False]
    assert chosen.dtype == torch.long and valid.dtype == torch.bool


def test_rho_zero_is_best_vs_worst_with_length_breaking_ties():
    """rho = 0: the tiers are the best and the worst scores. Row 0 has unique extremes -> best_vs_worst's pair.
    Row 1: two best (4.0 at 0, len 5; at 1, len 2) -> the shorter, index 1 (best_vs_worst takes index 0); two
    worst (1.0 at 2, len 3; at 3, len 9) -> the longer, index 3. Row 2: two best of equal length -> the first."""
    scores = torch.tensor([[3.0, 4.9, 5.0, 1.0], [4.0, 4.0, 1.0, 1.0], [4.0, 4.0, 1.0, 2.0]])
    lengths = torch.tensor([[10, 8, 30, 50], [5, 2, 3, 9], [5, 5, 9, 1]])
    assert _as_list(length_controlled_pairs(scores, lengths, rho=0.0)) == [[2, 1, 0], [3, 3, 2], [True] * 3]
    assert best_vs_worst(scores).chosen.tolist() == [2, 0, 0]


def _reference(scores, lengths, rho):
    """Loop reference: filter each tier, then sort by (length, score, index) as the docstring states."""
    chosen, rejected, valid = [], [], []
    for s, n in zip(scores.tolist(), lengths.tolist(), strict=True):
        hi, lo = max(s), min(s)
        top = [k for k in range(len(s)) if s[k] >= (1 - rho) * hi + rho * lo]
        bottom = [k for k in range(len(s)) if s[k] <= (1 - rho) * lo + rho * hi]
        chosen.append(min(top, key=lambda k: (n[k], -s[k], k)))
        rejected.append(min(bottom, key=lambda k: (-n[k], s[k], k)))
        valid.append(hi > lo)
    return [chosen, rejected, valid]


@pytest.mark.parametrize("rho", [0.0, 0.1, 0.25, 0.49])
def test_length_controlled_against_loop(rho):
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (64, 6), generator=g).float() / 2  # many ties of score
    lengths = torch.randint(1, 4, (64, 6), generator=g)  # and of length
    pairs = length_controlled_pairs(scores, lengths, rho=rho)
    assert _as_list(pairs) == _reference(scores, lengths, rho)
    c, r, v = pairs
    s = scores.gather(1, torch.stack([c, r], dim=1))
    assert bool((s[v, 0] > s[v, 1]).all())  # rho < 0.5: the chosen always scores strictly higher


def test_checks_and_registry():
    scores = torch.tensor([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"rho must be in \[0, 0.5\)"):
        length_controlled_pairs(scores, torch.tensor([[1, 2]]), rho=0.5)
    with pytest.raises(ValueError, match="lengths must have the scores' shape"):
        length_controlled_pairs(scores, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="K >= 2"):
        length_controlled_pairs(torch.tensor([[1.0]]), torch.tensor([[1]]))
    assert PAIR_SELECTORS["length_controlled"] is length_controlled_pairs
    # the selector's call as the recipe must make it: scores first, then the (G, K) lengths, then rho
    pairs = PAIR_SELECTORS["length_controlled"](torch.tensor([[1.0, 2.0, 1.9]]), torch.tensor([[1, 9, 2]]), 0.2)
    assert _as_list(pairs) == [[2], [0], [True]] and not math.isnan(float(pairs.chosen))
