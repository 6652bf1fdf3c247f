"""Advantage estimators (rlxf.ops.advantages) against hand values and the loop references."""

import math

import pytest
import torch

from rlxf.ops import ADVANTAGE_ESTIMATORS, gae, group_center, group_zscore, leave_one_out
from rlxf.ops.advantages import kl_shaped_rewards, reinforce_pp, remax
from rlxf.testing import (
    gae_reference,
    group_center_reference,
    group_zscore_reference,
    leave_one_out_reference,
)


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), rtol=rtol, atol=atol
    )


REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_group_advantages_by_hand():
    """Group 1 = (1, 0, 0, 1): mean 1/2, population std 1/2, so z = +-(1/2) / (1/2 + 1e-6); centred +-1/2;
    leave-one-out: 1 - (0+0+1)/3 = 2/3 and 0 - 2/3. Group 2 is all ones: every advantage 0."""
    z = 0.5 / (0.5 + 1e-6)
    _close(group_zscore(REWARDS, 4), [z, -z, -z, z, 0, 0, 0, 0])
    _close(group_center(REWARDS, 4), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    _close(leave_one_out(REWARDS, 4), [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])
    assert set(ADVANTAGE_ESTIMATORS) == {"group_zscore", "group_center", "leave_one_out"}


@pytest.mark.parametrize("group_size", [2, 3, 5])
def test_group_advantages_match_loop_reference(group_size):
    rewards = torch.randn(4 * group_size, generator=torch.Generator().manual_seed(group_size))
    _close(group_zscore(rewards, group_size), group_zscore_reference(rewards, group_size))
    _close(group_center(rewards, group_size), group_center_reference(rewards, group_size))
    _close(leave_one_out(rewards, group_size), leave_one_out_reference(rewards, group_size))


def test_leave_one_out_equals_scaled_centring():
    """r_i - (sum - r_i)/(G-1) = G/(G-1) (r_i - mean)."""
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(3))
    _close(leave_one_out(rewards, 4), group_center(rewards, 4) * 4 / 3)


def test_group_advantages_validate_and_detach():
    with pytest.raises(ValueError, match="group_size >= 2"):
        leave_one_out(REWARDS, 1)
    with pytest.raises(ValueError, match="groups of size 3"):
        group_zscore(REWARDS, 3)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        group_center(REWARDS.view(2, 4), 4)
    rewards = REWARDS.clone().requires_grad_()
    for fn in ADVANTAGE_ESTIMATORS.values():
        out = fn(rewards, 4)
        assert not out.requires_grad and out.dtype == torch.float32


def test_gae_by_hand():
    """Row 0: r = (0, 0, 1), V = (0.5, 0.5, 0.5), gamma 0.9, lam 0.5, episode ends after t=2:
    delta_2 = 1 - 0.5 = 0.5; delta_1 = delta_0 = 0.9*0.5 - 0.5 = -0.05;
    A_2 = 0.5; A_1 = -0.05 + 0.45*0.5 = 0.175; A_0 = -0.05 + 0.45*0.175 = 0.02875; R = A + V.
    Row 1 is right-padded after t=1, with garbage (100) in the padding that must not leak:
    delta_1 = 1 - 0.5 = 0.5 = A_1; A_0 = (0 + 0.9*0.5 - 0.5) + 0.45*0.5 = 0.175."""
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 100.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 100.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    _close(adv, [[0.02875, 0.175, 0.5], [0.175, 0.5, 0.0]])
    _close(ret, [[0.52875, 0.675, 1.0], [0.675, 1.0, 0.0]])


def test_gae_monte_carlo_limit():
    """gamma = lam = 1: A_t = sum_{t' >= t} r_t' - V_t and returns are the reward-to-go."""
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[1.0, 1.0, 1.0]])
    adv, ret = gae(rewards, values, torch.ones(1, 3, dtype=torch.bool), gamma=1.0, lam=1.0)
    _close(ret, [[6.0, 5.0, 3.0]])
    _close(adv, [[5.0, 4.0, 2.0]])


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.0), (0.99, 1.0)])
def test_gae_matches_loop_reference(gamma, lam):
    """Random rewards/values; right padding, an empty row and masked holes in the middle of rows."""
    g = torch.Generator().manual_seed(int(lam * 100))
    rewards, values = torch.randn(6, 9, generator=g), torch.randn(6, 9, generator=g)
    lengths = torch.tensor([9, 5, 0, 1, 7, 3])
    mask = torch.arange(9)[None, :] < lengths[:, None]
    mask[4, 2] = mask[0, 6] = False  # holes: skipped, the tokens on either side are consecutive steps
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    ref_adv, ref_ret = gae_reference(rewards, values, mask, gamma=gamma, lam=lam)
    _close(adv, ref_adv)
    _close(ret, ref_ret)
    assert not adv.requires_grad


def test_gae_validates_shapes():
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool), gamma=1.0, lam=1.0)


# --- KL-shaped token rewards, ReMax, REINFORCE++ (issue 13) ---------------------------------------------------

NAN = float("nan")


def _kl_shaped_loop(rewards, logps, ref_logps, mask, beta):
    """Slow reference: row by row over plain floats, from the definition (float64 `(B, T)`)."""
    batch, length = mask.shape
    out = torch.zeros(batch, length, dtype=torch.float64)
    for b in range(batch):
        steps = [t for t in range(length) if bool(mask[b, t])]
        for t in steps:
            out[b, t] = -beta * (float(logps[b, t]) - float(ref_logps[b, t]))
        if steps:
            out[b, steps[-1]] += float(rewards[b])
    return out


def _reinforce_pp_loop(rewards, logps, ref_logps, mask, beta, gamma, group_size=None, eps=1e-8):
    """Slow reference: baseline, token rewards, explicit discounted sums, then one mean/var over all tokens."""
    values = [float(r) for r in rewards]
    if group_size is not None:
        for start in range(0, len(values), group_size):
            group = values[start : start + group_size]
            mean = sum(group) / len(group)
            values[start : start + group_size] = [r - mean for r in group]
    token = _kl_shaped_loop(torch.tensor(values, dtype=torch.float64), logps, ref_logps, mask, beta)
    batch, length = mask.shape
    returns = torch.zeros(batch, length, dtype=torch.float64)
    collected = []
    for b in range(batch):
        steps = [t for t in range(length) if bool(mask[b, t])]
        for k, t in enumerate(steps):
            returns[b, t] = sum(gamma ** (j - k) * float(token[b, steps[j]]) for j in range(k, len(steps)))
            collected.append(float(returns[b, t]))
    if not collected:
        return torch.zeros(batch, length, dtype=torch.float64)
    mean = sum(collected) / len(collected)
    var = sum((g - mean) ** 2 for g in collected) / len(collected)
    whitened = (returns - mean) / math.sqrt(var + eps)
    return torch.where(mask, whitened, torch.zeros_like(whitened))


def _random_token_batch(seed, batch=7, length=9):
    """Random log-probs with right padding, an empty row, a one-token row and holes; padding holds 100 and NaN."""
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(batch, length, generator=g) * 3
    ref_logps = -torch.rand(batch, length, generator=g) * 3
    rewards = torch.randn(batch, generator=g)
    lengths = torch.tensor([9, 5, 0, 1, 7, 3, 9])[:batch]
    mask = torch.arange(length)[None, :] < lengths[:, None]
    mask[4, 2] = mask[0, 6] = mask[6, 0] = False  # holes, including a leading one
    logps = torch.where(mask, logps, torch.full_like(logps, 100.0))
    ref_logps = torch.where(mask, ref_logps, torch.full_like(ref_logps, NAN))
    return rewards, logps, ref_logps, mask


def test_kl_shaped_rewards_by_hand():
    """beta = 0.5. Row 0: log-ratios (0.5, -1, 0) -> -beta * ratio = (-0.25, 0.5, 0), reward 2 on the last token:
    (-0.25, 0.5, 2.0, 0); row sum 2.25 = 2 - 0.5 * (0.5 - 1 + 0). Row 1 has a hole at t=1 holding NaN and 100:
    t=0 ratio -1 -> 0.5; t=2 ratio 2 -> -1, plus reward -1 -> -2. Row 2 has no token: all 0, its NaN reward
    dropped. Padding (100 in logps, NaN in ref_logps) must not leak."""
    rewards = torch.tensor([2.0, -1.0, NAN])
    logps = torch.tensor([[-1.0, -2.0, -0.5, 100.0], [-2.0, NAN, -1.0, NAN], [100.0, 100.0, 100.0, 100.0]])
    ref_logps = torch.tensor([[-1.5, -1.0, -0.5, NAN], [-1.0, 100.0, -3.0, 100.0], [NAN, NAN, NAN, NAN]])
    mask = torch.tensor([[True, True, True, False], [True, False, True, False], [False] * 4])
    out = kl_shaped_rewards(rewards, logps, ref_logps, mask, beta=0.5)
    _close(out, [[-0.25, 0.5, 2.0, 0.0], [0.5, 0.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    _close(out.sum(1)[:2], [2.25, -1.5])


@pytest.mark.parametrize("seed,beta", [(0, 0.1), (1, 0.0), (2, 2.0)])
def test_kl_shaped_rewards_match_loop_reference(seed, beta):
    rewards, logps, ref_logps, mask = _random_token_batch(seed)
    out = kl_shaped_rewards(rewards, logps, ref_logps, mask, beta=beta)
    assert torch.isfinite(out).all()
    _close(out, _kl_shaped_loop(rewards, logps, ref_logps, mask, beta))


def test_kl_shaped_rewards_validate_and_detach():
    rewards, logps, ref_logps, mask = _random_token_batch(3)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        kl_shaped_rewards(rewards, logps, ref_logps[:, :-1], mask, beta=0.1)
    with pytest.raises(ValueError, match="bool"):
        kl_shaped_rewards(rewards, logps, ref_logps, mask.float(), beta=0.1)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        kl_shaped_rewards(rewards[:-1], logps, ref_logps, mask, beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        kl_shaped_rewards(rewards, logps, ref_logps, mask, beta=-0.1)
    grad_logps = logps.double().requires_grad_()
    out = kl_shaped_rewards(rewards.double().requires_grad_(), grad_logps, ref_logps.bfloat16(), mask, beta=0.1)
    assert not out.requires_grad and out.dtype == torch.float32
    empty = kl_shaped_rewards(rewards, logps[:, :0], ref_logps[:, :0], mask[:, :0], beta=0.1)
    assert empty.shape == (7, 0)


def test_remax_by_hand():
    """Two prompts of G = 3; greedy rewards 0.5 and 2: A = r - b = (0.5, -0.5, 0 | 0, 1, -1). With G = 1 (the
    paper's one sample per prompt): (1 - 0.5, 2 - 3) = (0.5, -1). A NaN baseline spoils its own group only."""
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0, 3.0, 1.0])
    _close(remax(rewards, torch.tensor([0.5, 2.0]), 3), [0.5, -0.5, 0.0, 0.0, 1.0, -1.0])
    _close(remax(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0]), 1), [0.5, -1.0])
    spoilt = remax(rewards, torch.tensor([NAN, 2.0]), 3)
    assert torch.isnan(spoilt[:3]).all()
    _close(spoilt[3:], [0.0, 1.0, -1.0])


@pytest.mark.parametrize("group_size", [1, 4, 12])
def test_remax_matches_loop_reference(group_size):
    """12 rewards: one sample per prompt, groups of 4, a single group of all 12."""
    g = torch.Generator().manual_seed(group_size)
    rewards, baselines = torch.randn(12, generator=g) * 100, torch.randn(12 // group_size, generator=g)
    expected = [float(rewards[i]) - float(baselines[i // group_size]) for i in range(12)]
    _close(remax(rewards, baselines, group_size), expected)


def test_remax_validates_and_detaches():
    with pytest.raises(ValueError, match=r"\(P,\)"):
        remax(torch.zeros(6), torch.zeros(3), 3)
    with pytest.raises(ValueError, match="groups of size 4"):
        remax(torch.zeros(6), torch.zeros(2), 4)
    out = remax(torch.ones(4, dtype=torch.float64, requires_grad=True), torch.zeros(2, requires_grad=True), 2)
    assert not out.requires_grad and out.dtype == torch.float32


def test_reinforce_pp_by_hand():
    """beta = 0.5, gamma = 0.5. Row 0: reward 1, log-ratios (0, 1, 0) -> token rewards (0, -0.5, 1);
    G_2 = 1, G_1 = -0.5 + 0.5 * 1 = 0, G_0 = 0 + 0.5 * 0 = 0. Row 1 (padded after t=1 with 100 / NaN): reward -1,
    log-ratios (0, 0) -> (0, -1); G_1 = -1, G_0 = 0.5 * -1 = -0.5. Over the 5 tokens G = (0, 0, 1, -0.5, -1):
    mean -0.1, population variance (0.01 + 0.01 + 1.21 + 0.16 + 0.81) / 5 = 0.44, so A = (G + 0.1) / sqrt(0.44 + 1e-8).
    The baseline variant with rewards (3, 1) in one group of 2 subtracts the mean 2: the same (1, -1), same A."""
    logps = torch.tensor([[-1.0, -1.0, -2.0], [-0.5, -0.7, 100.0]])
    ref_logps = torch.tensor([[-1.0, -2.0, -2.0], [-0.5, -0.7, NAN]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    std = math.sqrt(0.44 + 1e-8)
    expected = [[0.1 / std, 0.1 / std, 1.1 / std], [-0.4 / std, -0.9 / std, 0.0]]
    out = reinforce_pp(torch.tensor([1.0, -1.0]), logps, ref_logps, mask, beta=0.5, gamma=0.5)
    _close(out, expected)
    baseline = reinforce_pp(torch.tensor([3.0, 1.0]), logps, ref_logps, mask, beta=0.5, gamma=0.5, group_size=2)
    _close(baseline, expected)


def test_reinforce_pp_undiscounted_is_paper_eq7():
    """gamma = 1: before whitening A_t = r(x, y) - beta sum_{i >= t} KL(i) (REINFORCE++ v1 eq. 7); whitening is
    affine, so the result is that, centred and scaled by the batch token statistics."""
    rewards, logps, ref_logps, mask = _random_token_batch(4)
    kl = torch.where(mask, logps - ref_logps, 0.0)
    raw = rewards[:, None] - 0.2 * kl.flip(1).cumsum(1).flip(1)
    mean = raw[mask].mean()
    std = raw[mask].var(unbiased=False).add(1e-8).sqrt()
    expected = torch.where(mask, (raw - mean) / std, 0.0)
    _close(reinforce_pp(rewards, logps, ref_logps, mask, beta=0.2), expected, atol=1e-5)


@pytest.mark.parametrize("gamma,group_size", [(1.0, None), (0.9, None), (1.0, 7), (0.5, 1)])
def test_reinforce_pp_matches_loop_reference(gamma, group_size):
    """Random batch with holes, an empty row and padding full of 100 / NaN; group_size 7 is a single group."""
    rewards, logps, ref_logps, mask = _random_token_batch(int(gamma * 10))
    out = reinforce_pp(rewards, logps, ref_logps, mask, beta=0.3, gamma=gamma, group_size=group_size)
    assert torch.isfinite(out).all() and not out.requires_grad and out.dtype == torch.float32
    _close(out, _reinforce_pp_loop(rewards, logps, ref_logps, mask, 0.3, gamma, group_size), atol=1e-5)
    _close(out[mask].mean(), 0.0, atol=1e-5)
    _close(out[mask].var(unbiased=False), 1.0, rtol=1e-4)


def test_reinforce_pp_extremes():
    """An all-masked batch gives zeros; a single token whitens to 0; rewards of +-100 stay finite; group_size 1
    subtracts each reward from itself (only the KL terms remain)."""
    rewards, logps, ref_logps, mask = _random_token_batch(5)
    nothing = reinforce_pp(rewards, logps, ref_logps, torch.zeros_like(mask), beta=0.1)
    assert torch.equal(nothing, torch.zeros_like(nothing))
    one = torch.zeros_like(mask)
    one[3, 0] = True
    assert torch.equal(reinforce_pp(rewards, logps, ref_logps, one, beta=0.1), torch.zeros(mask.shape))
    big = reinforce_pp(torch.tensor([100.0, -100.0] * 3 + [100.0]), logps, ref_logps, mask, beta=0.1)
    assert torch.isfinite(big).all()
    alone = reinforce_pp(rewards, logps, ref_logps, mask, beta=0.1, group_size=1)
    _close(alone, reinforce_pp(torch.zeros(7), logps, ref_logps, mask, beta=0.1))
    with pytest.raises(ValueError, match="gamma"):
        reinforce_pp(rewards, logps, ref_logps, mask, beta=0.1, gamma=1.5)
    with pytest.raises(ValueError, match="groups of size 2"):
        reinforce_pp(rewards, logps, ref_logps, mask, beta=0.1, group_size=2)
