"""Constrained RLHF (rlxf.ops.constraints) against hand values, a looped reference and a toy dual ascent."""

import pytest
import torch

from rlxf.ops.constraints import lagrangian_rewards, update_multipliers

NAN = float("nan")


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), rtol=rtol, atol=atol
    )


COMPONENTS = torch.tensor([[0.3, 0.5], [0.1, 0.9]])
THRESHOLDS = torch.tensor([0.2, 0.6])


def test_lagrangian_rewards_by_hand():
    """lambda = (2, 0.5), theta = (0.2, 0.6), task (1, 0). Row 0: violations (0.1, -0.1), penalty
    2 * 0.1 + 0.5 * -0.1 = 0.15, reward 1 - 0.15 = 0.85. Row 1: violations (-0.1, 0.3), penalty -0.2 + 0.15 = -0.05,
    reward 0.05. Without a task the reward is minus the penalty. The paper's lower bounds (eq. 4.3:
    r_0 + sum_i mu_i (r_i - theta_i)) come from negated components and thresholds: (1.15, -0.05)."""
    multipliers = torch.tensor([2.0, 0.5])
    task = torch.tensor([1.0, 0.0])
    _close(lagrangian_rewards(COMPONENTS, multipliers, THRESHOLDS, task_rewards=task), [0.85, 0.05])
    _close(lagrangian_rewards(COMPONENTS, multipliers, THRESHOLDS), [-0.15, 0.05])
    _close(lagrangian_rewards(-COMPONENTS, multipliers, -THRESHOLDS, task_rewards=task), [1.15, -0.05])


def test_update_multipliers_by_hand():
    """lr 2: lambda = (0, 1, 0.5), J - theta = (0.1, -0.5, 0) -> (0.2, 0, 0.5); a step below 0 is projected:
    0.3 + 1 * -1 = -0.7 -> 0. The paper's step for lower bounds, mu <- [mu + lr (theta - J)]_+, via negation:
    mu = 0.5, theta 0.6, J 0.4, lr 2 -> 0.9."""
    lam = update_multipliers(
        torch.tensor([0.0, 1.0, 0.5]), torch.tensor([0.3, 0.1, 0.4]), torch.tensor([0.2, 0.6, 0.4]), lr=2.0
    )
    _close(lam, [0.2, 0.0, 0.5])
    _close(update_multipliers(torch.tensor([0.3]), torch.tensor([0.0]), torch.tensor([1.0]), lr=1.0), [0.0])
    _close(update_multipliers(torch.tensor([0.5]), -torch.tensor([0.4]), -torch.tensor([0.6]), lr=2.0), [0.9])


@pytest.mark.parametrize("k", [1, 3])
def test_constraints_match_loop_reference(k):
    """Random components (B = 16, one of them +-100) against a loop over plain floats; the batch mean of the
    rewards is the Lagrangian with J = batch mean of the components (linearity)."""
    g = torch.Generator().manual_seed(k)
    components, task = torch.randn(16, k, generator=g), torch.randn(16, generator=g)
    components[0] = 100.0 * (-1) ** torch.arange(k)
    multipliers, thresholds = torch.rand(k, generator=g) * 3, torch.randn(k, generator=g)
    expected = [
        float(task[b]) - sum(float(multipliers[i]) * (float(components[b, i]) - float(thresholds[i])) for i in range(k))
        for b in range(16)
    ]
    out = lagrangian_rewards(components, multipliers, thresholds, task_rewards=task)
    _close(out, expected, atol=1e-5)
    estimates = components.mean(0)
    lagrangian = task.mean() - (multipliers * (estimates - thresholds)).sum()
    _close(out.mean(), lagrangian, atol=1e-5)
    step = [max(0.0, float(multipliers[i]) + 0.3 * (float(estimates[i]) - float(thresholds[i]))) for i in range(k)]
    _close(update_multipliers(multipliers, estimates, thresholds, lr=0.3), step)


def test_dual_ascent_reaches_the_threshold():
    """Toy problem on a grid of actions x in [0, 3] (one 'sample' per action): maximise -(x - 2)^2 s.t. x <= 1.
    The best response to lambda maximises -(x - 2)^2 - lambda (x - 1), x* = 2 - lambda / 2, and the step
    lambda <- lambda + lr (x* - 1) contracts (factor 0.75 at lr 0.5) to lambda = 2, x* = 1. The lower bound
    x >= 1 for -x^2 (negated component and threshold) likewise settles at x* = 1, mu = 2."""
    xs = torch.linspace(0.0, 3.0, 3001)
    for task, components, thresholds in [
        (-((xs - 2) ** 2), xs[:, None], torch.tensor([1.0])),
        (-(xs**2), -xs[:, None], torch.tensor([-1.0])),
    ]:
        lam = torch.zeros(1)
        for _ in range(100):
            best = lagrangian_rewards(components, lam, thresholds, task_rewards=task).argmax()
            lam = update_multipliers(lam, components[best], thresholds, lr=0.5)
        assert abs(float(xs[best]) - 1.0) < 2e-3 and abs(float(lam) - 2.0) < 5e-3


def test_constraints_extremes_validate_and_detach():
    """A NaN component spoils its own sample only; inputs that require grad or are float64 give detached float32;
    non-finite multipliers, thresholds or estimates and a negative lr are errors."""
    components = COMPONENTS.clone()
    components[1, 0] = NAN
    out = lagrangian_rewards(components, torch.tensor([2.0, 0.5]), THRESHOLDS)
    assert torch.isfinite(out[0]) and torch.isnan(out[1])
    grad = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    out = lagrangian_rewards(COMPONENTS.double().requires_grad_(), grad, THRESHOLDS, task_rewards=grad)
    assert not out.requires_grad and out.dtype == torch.float32
    lam = update_multipliers(grad, grad, THRESHOLDS.double(), lr=0.1)
    assert not lam.requires_grad and lam.dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        lagrangian_rewards(COMPONENTS[0], torch.ones(2), THRESHOLDS)
    with pytest.raises(ValueError, match="multipliers must be"):
        lagrangian_rewards(COMPONENTS, torch.ones(3), THRESHOLDS)
    with pytest.raises(ValueError, match="thresholds must be finite"):
        lagrangian_rewards(COMPONENTS, torch.ones(2), torch.tensor([0.2, float("inf")]))
    with pytest.raises(ValueError, match="task_rewards"):
        lagrangian_rewards(COMPONENTS, torch.ones(2), THRESHOLDS, task_rewards=torch.zeros(3))
    with pytest.raises(ValueError, match="estimates must be finite"):
        update_multipliers(torch.ones(2), torch.tensor([0.1, NAN]), THRESHOLDS, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        update_multipliers(torch.ones(2), torch.ones(2), THRESHOLDS, lr=-0.1)
    with pytest.raises(ValueError, match=r"\(K,\)"):
        update_multipliers(torch.ones(2), torch.ones(3), THRESHOLDS, lr=0.1)
