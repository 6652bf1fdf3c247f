"""Advantage estimators (rlxf.ops.advantages) against hand values and the loop references."""

import pytest
import torch

from rlxf.ops import ADVANTAGE_ESTIMATORS, gae, group_center, group_zscore, leave_one_out
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
