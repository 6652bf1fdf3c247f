"""PF-PPO policy filtration (rlxf.ops.filtration) against hand values and a looped reference."""

import pytest
import torch

from rlxf.ops.filtration import (
    FILTRATION_STRATEGIES,
    filter_best,
    filter_best_random,
    filter_best_worst,
    policy_filtration,
)

NAN, INF = float("nan"), float("inf")

# Group 0: plain. Group 1: one finite reward among NaN, +inf, -inf. Group 2: four-way tie. Group 3: all NaN.
REWARDS = torch.tensor(
    [0.2, 0.9, 0.1, 0.5] + [NAN, 0.3, INF, -INF] + [0.7, 0.7, 0.7, 0.7] + [NAN, NAN, NAN, NAN]
)


def _kept(mask):
    return set(torch.nonzero(mask).flatten().tolist())


def _reference(rewards, group_size, strategy, draws=None):
    """Slow reference: rank each group's finite rewards with Python's stable sort (descending reward, ties in
    sampling order); best = first rank, worst = last rank; best_random's other = the eligible with the largest
    `draws` value (the same uniform numbers the fast path draws)."""
    keep = [False] * len(rewards)
    for n, start in enumerate(range(0, len(rewards), group_size)):
        values = [float(r) for r in rewards[start : start + group_size]]
        ranked = sorted((i for i, r in enumerate(values) if r == r and abs(r) != INF), key=lambda i: -values[i])
        if not ranked:
            continue
        chosen = {ranked[0]}
        if strategy == "best_worst":
            chosen.add(ranked[-1])
        if strategy == "best_random" and len(ranked) > 1:
            others = ranked[1:]
            chosen.add(max(others, key=lambda i: float(draws[n, i])))
        for i in chosen:
            keep[start + i] = True
    return torch.tensor(keep)


def test_policy_filtration_by_hand():
    """Group 0 (0.2, 0.9, 0.1, 0.5): best 1, worst 2. Group 1: only index 5 (0.3) is finite, so every strategy
    keeps it alone (NaN and +-inf are never kept). Group 2 ties: the earliest (8) is best, the latest (11) worst.
    Group 3 keeps nothing. best_random keeps the best and exactly one other finite completion of groups 0 and 2."""
    assert set(FILTRATION_STRATEGIES) == {"best", "best_random", "best_worst"}
    assert _kept(policy_filtration(REWARDS, 4, strategy="best")) == {1, 5, 8}
    assert _kept(policy_filtration(REWARDS, 4, strategy="best_worst")) == {1, 2, 5, 8, 11}
    kept = _kept(policy_filtration(REWARDS, 4, strategy="best_random", rng=torch.Generator().manual_seed(0)))
    assert {1, 5, 8} <= kept and len(kept & {0, 2, 3}) == 1 and len(kept & {9, 10, 11}) == 1 and len(kept) == 5


@pytest.mark.parametrize("group_size", [1, 2, 5, 40])
def test_filtration_matches_loop_reference(group_size):
    """40 rewards rounded to one decimal (many ties) with NaN/inf sprinkled in; group_size 40 is a single group
    and group_size 1 keeps exactly the finite rewards."""
    g = torch.Generator().manual_seed(group_size)
    rewards = (torch.randn(40, generator=g) * 3).round() / 10
    rewards[torch.rand(40, generator=g) < 0.15] = NAN
    rewards[3], rewards[17] = INF, -INF
    for strategy, fn in FILTRATION_STRATEGIES.items():
        out = fn(rewards, group_size, rng=torch.Generator().manual_seed(7))
        draws = torch.rand(40 // group_size, group_size, generator=torch.Generator().manual_seed(7))
        assert out.dtype == torch.bool and out.shape == (40,)
        assert torch.equal(out, _reference(rewards, group_size, strategy, draws)), strategy
        assert not out[~torch.isfinite(rewards)].any()
    if group_size == 1:
        assert torch.equal(filter_best_worst(rewards, 1), torch.isfinite(rewards))


def test_best_random_is_uniform_and_reproducible():
    """3000 groups ranked (best, 3 others): each other is drawn a third of the time (binomial sd ~26); the same
    seed gives the same mask, another seed a different one."""
    rewards = torch.tensor([3.0, 1.0, 2.0, 0.0]).repeat(3000)
    mask = filter_best_random(rewards, 4, rng=torch.Generator().manual_seed(1)).view(3000, 4)
    assert mask[:, 0].all() and torch.equal(mask.sum(1), torch.full((3000,), 2))
    assert (mask[:, 1:].sum(0) - 1000).abs().max() < 130
    again = filter_best_random(rewards, 4, rng=torch.Generator().manual_seed(1)).view(3000, 4)
    other = filter_best_random(rewards, 4, rng=torch.Generator().manual_seed(2)).view(3000, 4)
    assert torch.equal(mask, again) and not torch.equal(mask, other)


def test_filtration_is_data_not_graph():
    """Rewards that require grad (or are float64) give the same bool mask; the deterministic strategies ignore rng."""
    rewards = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64, requires_grad=True)
    assert _kept(filter_best(rewards, 4)) == {1}
    assert _kept(filter_best_worst(rewards, 4, rng=torch.Generator().manual_seed(3))) == {0, 1}


def test_filtration_validates():
    with pytest.raises(ValueError, match="unknown filtration strategy"):
        policy_filtration(REWARDS, 4, strategy="worst")
    with pytest.raises(ValueError, match="groups of size 3"):
        policy_filtration(REWARDS, 3, strategy="best")
    with pytest.raises(ValueError, match=r"\(B,\)"):
        policy_filtration(REWARDS.view(4, 4), 4, strategy="best")
    with pytest.raises(ValueError, match="float"):
        policy_filtration(torch.arange(4), 2, strategy="best")
