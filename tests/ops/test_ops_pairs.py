"""Pair selectors and win rates (rlxf.ops.pairs) against hand values and loop references; ties, duplicates and
non-finite scores."""

import itertools
import math

import pytest
import torch

from rlxf.ops import (
    PAIR_SELECTORS,
    Pairs,
    all_pairs,
    best_vs_worst,
    large_margin_pairs,
    pair_rows,
    random_pair,
    win_rates_from_comparisons,
)

NAN = float("nan")


def _as_list(pairs):
    return [t.tolist() for t in pairs]


def test_best_vs_worst_by_hand():
    """Row 0: best 0.9 (index 1), worst 0.1 (index 0). Row 1: all equal -> invalid. Row 2: two best (3 at 0 and 2)
    -> the first, index 0; worst index 1. Row 3: two worst (1 at 0 and 1) -> the first, index 0. Row 4: a NaN ->
    invalid. Row 5: +inf -> invalid."""
    scores = torch.tensor([[0.1, 0.9, 0.5], [2.0, 2.0, 2.0], [3.0, 1.0, 3.0], [1.0, 1.0, 5.0],
                           [NAN, 1.0, 2.0], [float("inf"), 1.0, 2.0]])
    chosen, rejected, valid = best_vs_worst(scores)
    assert chosen.tolist()[:4] == [1, 0, 0, 2] and rejected.tolist()[:4] == [0, 0, 1, 0]
    assert valid.tolist() == [True, False, True, True, False, False]
    assert chosen.dtype == torch.long and valid.dtype == torch.bool


def _all_pairs_reference(scores):
    """Loop reference: for each group and each i < j, (higher, lower, valid) with ties and non-finite invalid."""
    rows = [[], [], []]
    for s in scores.tolist():
        finite = all(math.isfinite(v) for v in s)
        c, r, v = [], [], []
        for i, j in itertools.combinations(range(len(s)), 2):
            c.append(i if s[i] > s[j] else j)
            r.append(j if s[i] > s[j] else i)
            v.append(finite and s[i] != s[j])
        for row, values in zip(rows, (c, r, v), strict=True):
            row.append(values)
    return rows


def test_all_pairs_by_hand_and_against_loop():
    """[0.2, 0.7, 0.7]: pairs (0,1) -> 1 over 0, (0,2) -> 2 over 0, (1,2) tie -> invalid."""
    pairs = all_pairs(torch.tensor([[0.2, 0.7, 0.7]]))
    assert _as_list(pairs) == [[[1, 2, 2]], [[0, 0, 1]], [[True, True, False]]]
    scores = torch.randint(0, 3, (6, 5), generator=torch.Generator().manual_seed(0)).float()  # many ties
    scores[2, 3] = NAN
    assert _as_list(all_pairs(scores)) == _all_pairs_reference(scores)


def test_identical_completions_are_never_paired():
    """Two copies of one completion score alike under a deterministic scorer: no selector pairs them."""
    scores = torch.tensor([[0.4, 0.9, 0.4, 0.1]])  # samples 0 and 2 are duplicates
    for pairs in (all_pairs(scores), large_margin_pairs(scores, 0.0)):
        valid = {(c, r) for c, r, v in zip(*[t[0].tolist() for t in pairs], strict=True) if v}
        assert (0, 2) not in valid and (2, 0) not in valid and len(valid) == 5
    for seed in range(20):
        chosen, rejected, valid = random_pair(scores, torch.Generator().manual_seed(seed))
        if {chosen.item(), rejected.item()} == {0, 2}:
            assert not valid.item()


def test_random_pair_is_seeded_distinct_oriented_and_uniform():
    g = 6000
    scores = torch.arange(4.0).expand(g, 4)  # score = index, so chosen > rejected always
    first = random_pair(scores, torch.Generator().manual_seed(1))
    again = random_pair(scores, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    chosen, rejected, valid = first
    assert (chosen > rejected).all() and valid.all() and chosen.shape == (g,)
    counts = torch.bincount(chosen * 4 + rejected, minlength=16).view(4, 4)
    upper = counts[torch.triu_indices(4, 4, 1)[1], torch.triu_indices(4, 4, 1)[0]]  # (j, i) for i < j
    assert upper.sum() == g and (upper - g / 6).abs().max() < 4 * math.sqrt(g / 6)  # 6 pairs, each ~1000


def test_large_margin_pairs_by_hand():
    """Win rates [0.8, 0.5, 0.45]: gaps (0,1) 0.3, (0,2) 0.35, (1,2) 0.05; margin 0.1 keeps the first two
    (strictly: margin 0.3 drops (0,1)); margin 0 is all_pairs."""
    w = torch.tensor([[0.8, 0.5, 0.45]])
    assert _as_list(large_margin_pairs(w, 0.1)) == [[[0, 0, 1]], [[1, 2, 2]], [[True, True, False]]]
    assert large_margin_pairs(w, 0.3).valid.tolist() == [[False, True, False]]
    assert _as_list(large_margin_pairs(w, 0.0)) == _as_list(all_pairs(w))
    with pytest.raises(ValueError, match="margin must be >= 0"):
        large_margin_pairs(w, -0.1)


def test_win_rates_from_comparisons_by_hand():
    """prefs[k, j] = P(y_k > y_j); the diagonal holds 100 (or NaN) and must not leak. K = 3:
    w_0 = (0.9 + 0.6) / 2 = 0.75, w_1 = (0.1 + 0.2) / 2 = 0.15, w_2 = (0.4 + 0.8) / 2 = 0.6. Samples 1 and 3 of
    the second group are duplicates (P = 1/2 between them): each counts the other as one more draw."""
    prefs = torch.tensor([[[100.0, 0.9, 0.6], [0.1, 100.0, 0.2], [0.4, 0.8, 100.0]]])
    torch.testing.assert_close(win_rates_from_comparisons(prefs), torch.tensor([[0.75, 0.15, 0.6]]))
    prefs[0].fill_diagonal_(NAN)
    torch.testing.assert_close(win_rates_from_comparisons(prefs), torch.tensor([[0.75, 0.15, 0.6]]))
    dup = torch.tensor([[[0.5, 1.0, 0.0, 1.0], [0.0, 0.5, 1.0, 0.5], [1.0, 0.0, 0.5, 0.0], [0.0, 0.5, 1.0, 0.5]]])
    torch.testing.assert_close(win_rates_from_comparisons(dup), torch.tensor([[2 / 3, 0.5, 1 / 3, 0.5]]))


def test_win_rates_match_loop_and_detach():
    prefs = torch.rand(4, 5, 5, generator=torch.Generator().manual_seed(2), requires_grad=True)
    expected = [[sum(prefs[g, k, j].item() for j in range(5) if j != k) / 4 for k in range(5)] for g in range(4)]
    out = win_rates_from_comparisons(prefs)
    torch.testing.assert_close(out, torch.tensor(expected))
    assert not out.requires_grad and out.dtype == torch.float32


def test_pair_rows_and_registry():
    """Group g's completions are rows g*K .. g*K + K - 1; only valid pairs come back, group-major."""
    scores = torch.tensor([[0.1, 0.9, 0.5], [2.0, 2.0, 2.0], [3.0, 1.0, 0.0]])
    chosen_rows, rejected_rows = pair_rows(best_vs_worst(scores), 3)
    assert chosen_rows.tolist() == [1, 6] and rejected_rows.tolist() == [0, 8]
    chosen_rows, rejected_rows = pair_rows(all_pairs(scores), 3)
    assert chosen_rows.tolist() == [1, 2, 1, 6, 6, 7] and rejected_rows.tolist() == [0, 0, 2, 7, 8, 8]
    assert set(PAIR_SELECTORS) == {"best_vs_worst", "all_pairs", "random_pair", "large_margin", "length_controlled"}
    assert PAIR_SELECTORS["large_margin"] is large_margin_pairs
    assert isinstance(best_vs_worst(scores), Pairs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"must be \(G, K\)"):
        best_vs_worst(torch.zeros(4))
    with pytest.raises(ValueError, match="K >= 2"):
        all_pairs(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="float tensor"):
        random_pair(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must be \(G, K, K\)"):
        win_rates_from_comparisons(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="K >= 2"):
        win_rates_from_comparisons(torch.zeros(2, 1, 1))
