"""Group robust DPO (rlxf.objectives.group_robust): hand values, DPO limits, the mirror-ascent update, group
means, a toy min-max problem, extremes and input checks."""

import math

import pytest
import torch

from rlxf.objectives import (
    dpo_loss,
    get_objective,
    group_mean_losses,
    group_robust_dpo_loss,
    update_group_weights,
)


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), rtol=rtol, atol=atol
    )


def _softplus(x):
    return math.log1p(math.exp(x))


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _three_pairs():
    """Reference log-probs 0, policy chosen (-1, -2, -3), rejected (-2, -2, -1): h_w - h_l = (1, 0, -2)."""
    chosen = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    rejected = torch.tensor([-2.0, -2.0, -1.0])
    zeros = torch.zeros(3)
    return chosen, rejected, zeros, zeros.clone()


def test_group_robust_by_hand():
    """beta = 0.5: DPO losses softplus(-0.5 (1, 0, -2)) = (sp(-0.5), log 2, sp(1)). Groups (0, 1, 0) with
    alpha = (0.25, 0.75): loss = (0.25 sp(-0.5), 0.75 log 2, 0.25 sp(1)); d/d logp_w = -alpha_g beta sigma(-z).
    With group sizes N_g = (30, 10), N = 40, the scales N/N_g = (4/3, 4) multiply alpha.
    Metrics: unweighted mean of the three DPO losses; worst group = max((sp(-0.5) + sp(1)) / 2, log 2)."""
    chosen, rejected, ref_w, ref_l = _three_pairs()
    groups, weights = torch.tensor([0, 1, 0]), torch.tensor([0.25, 0.75])
    out = group_robust_dpo_loss(chosen, rejected, ref_w, ref_l, groups, weights, beta=0.5)
    l0, l1, l2 = _softplus(-0.5), math.log(2.0), _softplus(1.0)
    _close(out.loss, [0.25 * l0, 0.75 * l1, 0.25 * l2])
    (grad,) = torch.autograd.grad(out.loss.sum(), chosen)
    _close(grad, [-0.25 * 0.5 * _sigmoid(-0.5), -0.75 * 0.5 * 0.5, -0.25 * 0.5 * _sigmoid(1.0)])
    _close(out.metrics["unweighted_loss"], (l0 + l1 + l2) / 3)
    _close(out.metrics["worst_group_loss"], max((l0 + l2) / 2, l1))
    _close(out.metrics["reward_margin"], 0.5 * (1 + 0 - 2) / 3)

    sized = group_robust_dpo_loss(chosen, rejected, ref_w, ref_l, groups, weights, beta=0.5,
                                  group_sizes=torch.tensor([30.0, 10.0]))
    _close(sized.loss, [0.25 * 4 / 3 * l0, 0.75 * 4 * l1, 0.25 * 4 / 3 * l2])


def test_limits_are_scaled_dpo():
    """One group with weight 1 is DPO; uniform weights 1/G with every pair in one group is DPO / G; in-batch
    counts as group_sizes with all pairs in one group scale by B / B = 1."""
    g = torch.Generator().manual_seed(0)
    logps = [-5 * torch.rand(5, generator=g) for _ in range(4)]
    dpo = dpo_loss(*logps, beta=0.2).loss
    one = torch.zeros(5, dtype=torch.long)
    _close(group_robust_dpo_loss(*logps, one, torch.ones(1), beta=0.2).loss, dpo)
    _close(group_robust_dpo_loss(*logps, one, torch.full((3,), 1 / 3), beta=0.2).loss, dpo / 3)
    _close(group_robust_dpo_loss(*logps, one, torch.ones(1), beta=0.2, group_sizes=torch.tensor([5.0])).loss, dpo)


def test_update_group_weights_by_hand():
    """alpha = (0.5, 0.3, 0.2), L = (1, 2, 0), eta = 0.5: alpha' = (0.5 e^0.5, 0.3 e^1, 0.2), renormalised."""
    new = update_group_weights(torch.tensor([0.5, 0.3, 0.2]), torch.tensor([1.0, 2.0, 0.0]), step_size=0.5)
    raw = [0.5 * math.exp(0.5), 0.3 * math.exp(1.0), 0.2]
    _close(new, [r / sum(raw) for r in raw])
    assert new.dtype == torch.float32 and not new.requires_grad


def test_update_group_weights_edges():
    """eta = 0 only renormalises; a zero weight stays zero; eta L = 1e4 does not overflow (all mass on the
    worst group)."""
    _close(update_group_weights(torch.tensor([2.0, 1.0, 1.0]), torch.tensor([5.0, 1.0, 0.0]), step_size=0.0),
           [0.5, 0.25, 0.25])
    _close(update_group_weights(torch.tensor([0.0, 0.5, 0.5]), torch.tensor([9.0, 1.0, 0.0]), step_size=1.0),
           [0.0, math.e / (math.e + 1), 1 / (math.e + 1)])
    big = update_group_weights(torch.tensor([0.5, 0.5]), torch.tensor([1e4, 0.0]), step_size=1.0)
    assert torch.isfinite(big).all()
    _close(big, [1.0, 0.0])


def test_group_mean_losses_and_absent_groups():
    """Losses (1, 2, 3, 4) in groups (0, 0, 2, 2) of G = 3: means (1.5, 0, 3.5). Group 1 has no pairs: its loss
    is 0, so the update multiplies it by e^0 = 1 and only the renormalisation moves it."""
    means = group_mean_losses(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 2, 2]), 3)
    _close(means, [1.5, 0.0, 3.5])
    weights = torch.tensor([0.2, 0.3, 0.5])
    new = update_group_weights(weights, means, step_size=0.1)
    raw = [0.2 * math.exp(0.15), 0.3, 0.5 * math.exp(0.35)]
    _close(new, [r / sum(raw) for r in raw])


def test_minmax_toy_problem_protects_the_minority():
    """One parameter theta = log pi(A)/pi(B) (reference uniform). Group 0 (90% of pairs) prefers A, group 1
    (10%) prefers B, so h_w - h_l = +theta for group 0 and -theta for group 1. DPO drives sigma(beta theta) to
    0.9 and the minority's loss to log 10 = 2.30; group robust DPO (Algorithm 1 with batches: update alpha
    with the group means, then step theta) must keep the worst group's loss below 0.8 (the min-max optimum is
    theta = 0, loss log 2 = 0.69)."""

    def train(robust):
        theta = torch.zeros((), requires_grad=True)
        optimizer = torch.optim.SGD([theta], lr=0.5)
        groups = torch.tensor([0] * 9 + [1])
        weights = torch.full((2,), 0.5)
        for _ in range(300):
            log_a, log_b = torch.nn.functional.logsigmoid(theta), torch.nn.functional.logsigmoid(-theta)
            sign = torch.where(groups == 0, 1.0, -1.0)
            chosen = torch.where(sign > 0, log_a, log_b).expand(10)
            rejected = torch.where(sign > 0, log_b, log_a).expand(10)
            zeros = torch.zeros(10)
            if robust:
                pair_loss = dpo_loss(chosen, rejected, zeros, zeros, beta=1.0).loss
                weights = update_group_weights(weights, group_mean_losses(pair_loss, groups, 2), step_size=0.1)
                loss = group_robust_dpo_loss(chosen, rejected, zeros, zeros, groups, weights, beta=1.0,
                                             group_sizes=torch.tensor([9.0, 1.0])).loss.mean()
            else:
                loss = dpo_loss(chosen, rejected, zeros, zeros, beta=1.0).loss.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return max(_softplus(-float(theta)), _softplus(float(theta)))

    assert train(robust=False) > 2.0
    assert train(robust=True) < 0.8


@pytest.mark.parametrize("margin", [100.0, -100.0])
def test_extreme_margins_are_finite(margin):
    chosen = torch.tensor([margin, -margin], requires_grad=True)
    zeros = torch.zeros(2)
    out = group_robust_dpo_loss(chosen, zeros, zeros, zeros, torch.tensor([0, 1]), torch.tensor([0.5, 0.5]), beta=1.0)
    (grad,) = torch.autograd.grad(out.loss.sum(), chosen)
    assert torch.isfinite(out.loss).all() and torch.isfinite(grad).all()
    assert all(torch.isfinite(v) for v in out.metrics.values())


def test_bad_inputs():
    v = torch.zeros(3)
    w = torch.tensor([0.5, 0.5])
    with pytest.raises(ValueError, match="group_ids must be a long"):
        group_robust_dpo_loss(v, v, v, v, torch.zeros(3), w)
    with pytest.raises(ValueError, match=r"group_ids must be a long \(B,\)"):
        group_robust_dpo_loss(v, v, v, v, torch.zeros(2, dtype=torch.long), w)
    with pytest.raises(ValueError, match=r"group_ids must lie in \[0, G = 2\)"):
        group_robust_dpo_loss(v, v, v, v, torch.tensor([0, 1, 2]), w)
    with pytest.raises(ValueError, match="group_weights must be finite and >= 0"):
        group_robust_dpo_loss(v, v, v, v, torch.tensor([0, 1, 1]), torch.tensor([-0.5, 1.5]))
    with pytest.raises(ValueError, match=r"group_weights must be a non-empty float \(G,\)"):
        group_robust_dpo_loss(v, v, v, v, torch.tensor([0, 1, 1]), torch.ones(2, 1))
    with pytest.raises(ValueError, match="group_sizes must be > 0 for every group"):
        group_robust_dpo_loss(v, v, v, v, torch.tensor([0, 1, 1]), w, group_sizes=torch.tensor([3.0, 0.0]))
    with pytest.raises(ValueError, match=r"group_sizes must be \(G,\)"):
        group_robust_dpo_loss(v, v, v, v, torch.tensor([0, 1, 1]), w, group_sizes=torch.ones(3))
    with pytest.raises(ValueError, match="group_losses must be a float"):
        update_group_weights(w, torch.ones(3), step_size=0.1)
    with pytest.raises(ValueError, match="positive sum"):
        update_group_weights(torch.zeros(2), torch.ones(2), step_size=0.1)
    with pytest.raises(ValueError, match="step_size must be >= 0"):
        update_group_weights(w, torch.ones(2), step_size=-1.0)
    with pytest.raises(ValueError, match="group_losses must be finite"):
        update_group_weights(w, torch.tensor([1.0, float("nan")]), step_size=1.0)
    with pytest.raises(ValueError, match="num_groups must be >= 1"):
        group_mean_losses(v, torch.zeros(3, dtype=torch.long), 0)


def test_registered_as_preference():
    assert get_objective("group_robust_dpo", kind="preference") is group_robust_dpo_loss
