"""Constrained RLHF: several reward components, each held to a threshold by its own Lagrange multiplier.

Moskovitz et al. 2024, "Confronting Reward Model Overoptimization with Constrained RLHF" (ICLR 2024), sec. 4. Each
component reward model r_i (i = 1..K) is useful only up to its proxy point theta_i. The paper's canonical problem
and its Lagrangian relaxation are

    max_pi v_0 s.t. v_i >= theta_i                                                     (4.1)
    max_pi min_{mu >= 0} L(pi, mu) = v_0 + sum_i mu_i (v_i - theta_i)                   (4.2)

with -grad_{mu_i} L = theta_i - v_i, and the policy ascends the mixed value v_0 + sum_i mu_i v_i -
sum_i mu_i theta_i (4.3); the ">=" may be reversed for behaviour to be limited (Table 1: mu-PPO keeps the RMs
high enough with the negative KL as task reward r_0, All-PPO maximises sum_i alpha_i v_i s.t. v_i <= theta_i).

This module writes every constraint in the standard form J_i <= theta_i ("do not exceed the proxy point"):

    max_pi min_{lambda >= 0} v_0 - sum_i lambda_i (J_i - theta_i),

so the policy's reward is r_0 - sum_i lambda_i (r_i - theta_i) (`lagrangian_rewards`) and the multipliers take
the projected descent step lambda_i <- [lambda_i + lr (J_i - theta_i)]_+ (`update_multipliers`): a multiplier
grows while its component's expected value J_i exceeds its threshold and decays to 0 once it is below. A lower
bound J_i >= theta_i (eq. 4.1, mu-PPO) is the upper bound -J_i <= -theta_i: pass the negated components,
estimates and thresholds to both functions. That gives eq. 4.3's reward r_0 + sum_i mu_i (r_i - theta_i) and the
paper's step mu_i <- [mu_i + lr (theta_i - J_i)]_+ exactly.

*Deviations* from the paper's practical algorithm: it bounds the multipliers with a sigmoid (tanh for the
equality constraints of xi-PPO), mixes advantages as (N - sum_i sigma(mu_i)) A_0 + sum_i sigma(mu_i) A_i
(eq. 4.4, N = K here) and steps the pre-sigmoid parameter with SGD (momentum 0.1). Here the multipliers are
unbounded, the step is the plain projected gradient step above and the mixing is at the reward level; equality
constraints (an unprojected step) are not provided. J_i is whatever the caller estimates; the paper uses Monte
Carlo returns (for a sequence-level reward: the batch mean of the component) rather than the critic's values,
which it found inaccurate early in training.
All functions are pure, detached and float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["lagrangian_rewards", "update_multipliers"]


def _check_vector(name: str, x: Tensor, k: int) -> None:
    if x.dim() != 1 or x.shape[0] != k:
        raise ValueError(f"{name} must be (K,) with K = {k}, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite, got {x.tolist()}")


def lagrangian_rewards(
    components: Tensor,
    multipliers: Tensor,
    thresholds: Tensor,
    *,
    task_rewards: Tensor | None = None,
) -> Tensor:
    """The reward the policy maximises for fixed multipliers: r_b = r_0,b - sum_i lambda_i (c_b,i - theta_i).

    `components`: `(B, K)` the K component rewards of each sample; `multipliers` lambda, `thresholds` theta:
    `(K,)`, finite; `task_rewards`: `(B,)` the task reward r_0 (0 when None: the task is then carried elsewhere,
    e.g. the negative KL of `kl_shaped_rewards`, as in mu-PPO). Returns `(B,)` float32, detached, whose batch mean
    estimates the Lagrangian L(pi, lambda) (eq. 4.3 with the constraints as J_i <= theta_i; negate components and
    thresholds for lower bounds, see the module docstring). Multipliers of either sign are accepted. A non-finite
    component or task reward makes that sample's reward non-finite and no other.
    """
    if components.dim() != 2:
        raise ValueError(f"components must be (B, K), got shape {tuple(components.shape)}")
    batch, k = components.shape
    _check_vector("multipliers", multipliers, k)
    _check_vector("thresholds", thresholds, k)
    violation = components.detach().float() - thresholds.detach().float()
    penalty = (violation * multipliers.detach().float()).sum(dim=1)
    if task_rewards is None:
        return -penalty
    if task_rewards.dim() != 1 or task_rewards.shape[0] != batch:
        raise ValueError(f"task_rewards must be (B,) with B = {batch}, got shape {tuple(task_rewards.shape)}")
    return task_rewards.detach().float() - penalty


def update_multipliers(multipliers: Tensor, estimates: Tensor, thresholds: Tensor, *, lr: float) -> Tensor:
    """One projected gradient step on the multipliers: lambda_i <- max(0, lambda_i + lr (J_i - theta_i)).

    `multipliers` lambda, `estimates` J (the current estimate of each component's expected value), `thresholds`
    theta: `(K,)`, finite; `lr` >= 0. Returns the new `(K,)` float32 multipliers, detached. This is descent on the
    Lagrangian of the constraints J_i <= theta_i; for the paper's lower bounds J_i >= theta_i (eq. 4.1, whose
    step is mu_i <- [mu_i + lr (theta_i - J_i)]_+) pass -J and -theta. A non-finite estimate is an error rather
    than a multiplier that stays NaN for the rest of the run.
    """
    if multipliers.dim() != 1:
        raise ValueError(f"multipliers must be (K,), got shape {tuple(multipliers.shape)}")
    k = multipliers.shape[0]
    _check_vector("multipliers", multipliers, k)
    _check_vector("estimates", estimates, k)
    _check_vector("thresholds", thresholds, k)
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"lr must be finite and >= 0, got {lr}")
    step = lr * (estimates.detach().float() - thresholds.detach().float())
    return (multipliers.detach().float() + step).clamp(min=0.0)
