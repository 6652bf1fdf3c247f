"""Reward-model losses: pure functions of the rewards a model gives the chosen and rejected completions.

Every pairwise function here is registered with ``kind="reward_model"`` and returns `LossOutput(loss, metrics)`
with the unreduced per-pair loss `(B,)` (the recipe takes the mean, so gradient accumulation stays exact) and
the metrics of `pair_metrics` (chosen/rejected reward means, mean margin, pair accuracy).

Inputs, by name (the reward-model recipe passes those a loss's signature asks for):

- ``chosen_rewards``, ``rejected_rewards``: r(x, y_w), r(x, y_l), float `(B,)`;
- ``chosen_quantiles``, ``rejected_quantiles``: K quantiles of a distributional reward head, float `(B, K)`;
- ``margin``: an optional per-pair margin `(B,)` (Llama 2's preference-strength margin);
- ``chosen_scores``, ``rejected_scores``: quality scores `(B,)` for soft labels (MMPO).

Reward centring is a separate term (`reward_centering_penalty`) added by the recipe, not a loss variant.
`pinball_loss` is the quantile-regression loss for a quantile head with scalar targets (ratings); the pairwise
recipe trains quantile heads with `quantile_bt_loss` instead. The maths runs in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rlxf.objectives.base import LossOutput, check_pair_tensors, pair_metrics
from rlxf.objectives.registry import register

__all__ = [
    "bradley_terry_loss",
    "soft_bt_loss",
    "reward_centering_penalty",
    "quantile_bt_loss",
    "pinball_loss",
    "quantile_levels",
]


@register("bradley_terry", kind="reward_model")
def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, *, margin: Tensor | None = None) -> LossOutput:
    """Bradley-Terry reward-model loss, with Llama 2's optional margin (Touvron et al. 2023, "Llama 2: Open
    Foundation and Fine-Tuned Chat Models", Sec. 3.2.2, eq. 1 without and eq. 2 with the margin):

        L = -log sigma( r(x, y_w) - r(x, y_l) - m(r) )

    computed as ``softplus(-(r_w - r_l - m))`` (= -logsigmoid), finite for any margin.

    Shapes: `chosen_rewards`, `rejected_rewards` `(B,)`; `margin` `(B,)` or None (m = 0, the plain BT loss of
    Ouyang et al. 2022, eq. 1); returns the per-pair loss `(B,)`. Metrics from the rewards (the margin m is not
    subtracted in `reward_margin` / `reward_accuracy`). Deviations: none.
    """
    check_pair_tensors(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, margin=margin)
    logits = chosen_rewards.float() - rejected_rewards.float()
    if margin is not None:
        logits = logits - margin.float()
    return LossOutput(F.softplus(-logits), pair_metrics(chosen_rewards, rejected_rewards))


@register("soft_bt", kind="reward_model")
def soft_bt_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    *,
    gamma: float,
) -> LossOutput:
    """Bradley-Terry with soft labels from quality scores, as in MMPO (Kim et al. 2024, "Margin Matching
    Preference Optimization: Enhanced Model Alignment with Granular Feedback", Sec. 3, the soft-target
    cross-entropy for reward models):

        p* = sigma( gamma * (s_w - s_l) ),   Delta = r(x, y_w) - r(x, y_l)
        L  = -[ p* log sigma(Delta) + (1 - p*) log sigma(-Delta) ]
           = p* softplus(-Delta) + (1 - p*) softplus(Delta)

    The loss is minimised at Delta = gamma * (s_w - s_l): the reward margin matches the (scaled) quality margin.
    Equal scores give p* = 1/2 (no preference); gamma -> inf recovers the hard BT loss when s_w > s_l.

    Shapes: all inputs `(B,)`; returns the per-pair loss `(B,)`. `gamma` >= 0 is the paper's gamma (the
    temperature of the score margin). Deviations: none; the paper states the target, we write its
    cross-entropy with softplus for stability.
    """
    check_pair_tensors(
        chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
        chosen_scores=chosen_scores, rejected_scores=rejected_scores,
    )
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    target = torch.sigmoid(gamma * (chosen_scores.float() - rejected_scores.float())).detach()  # a constant
    delta = chosen_rewards.float() - rejected_rewards.float()
    loss = target * F.softplus(-delta) + (1.0 - target) * F.softplus(delta)
    metrics = pair_metrics(chosen_rewards, rejected_rewards)
    metrics["target_prob"] = target.detach().mean()
    return LossOutput(loss, metrics)


def reward_centering_penalty(chosen_rewards: Tensor, rejected_rewards: Tensor, *, coef: float) -> LossOutput:
    """Reward centring term (Eisenstein et al. 2023, "Helping or Herding? Reward Model Ensembles Mitigate but
    do not Eliminate Reward Hacking", Sec. 2, the auxiliary loss that pins the reward's free offset):

        L_center = eta * ( r(x, y_w) + r(x, y_l) )^2

    The BT likelihood only sees reward differences, so a per-prompt offset is unidentified; this term pulls
    the pair's mean reward to 0. Added to the BT loss by the recipe; its mean over pairs is
    ``coef * mean((r_w + r_l)^2)``.

    Shapes: `(B,)` each; returns the per-pair penalty `(B,)`; `coef` is the paper's eta (>= 0).
    Metrics: `center_mean` (the mean of (r_w + r_l) / 2). Deviations: none.
    """
    check_pair_tensors(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    if not (coef >= 0 and math.isfinite(coef)):
        raise ValueError(f"coef must be a finite number >= 0, got {coef!r}")
    total = chosen_rewards.float() + rejected_rewards.float()
    return LossOutput(coef * total.square(), {"center_mean": (total.detach() / 2).mean()})


def quantile_levels(k: int) -> Tensor:
    """The K quantile levels tau_k = (2k - 1) / (2K), k = 1..K, float32 `(K,)` (QR-DQN's midpoints)."""
    if k < 1:
        raise ValueError(f"need at least one quantile, got {k}")
    return (torch.arange(k, dtype=torch.float32) * 2 + 1) / (2 * k)


def _check_quantiles(chosen_quantiles: Tensor, rejected_quantiles: Tensor) -> None:
    for name, q in (("chosen_quantiles", chosen_quantiles), ("rejected_quantiles", rejected_quantiles)):
        if q.dim() != 2:
            raise ValueError(f"{name} must be (B, K), got shape {tuple(q.shape)}")
        if not q.dtype.is_floating_point:
            raise ValueError(f"{name} must be a float tensor, got dtype {q.dtype}")
    if chosen_quantiles.shape != rejected_quantiles.shape:
        raise ValueError(
            f"chosen_quantiles {tuple(chosen_quantiles.shape)} and rejected_quantiles "
            f"{tuple(rejected_quantiles.shape)} must have the same (B, K) shape"
        )


@register("quantile_bt", kind="reward_model")
def quantile_bt_loss(chosen_quantiles: Tensor, rejected_quantiles: Tensor) -> LossOutput:
    """Pairwise likelihood of a distributional (quantile) reward model.

    The reward of a completion is a random variable U(x, y) (hidden context, annotator disagreement), as in
    Distributional Preference Learning (Siththaranjan, Laidlaw & Hadfield-Menell 2023, "Distributional
    Preference Learning: Understanding and Accounting for Hidden Context in RLHF", Sec. 4): the preference
    probability is that of an independent draw from U_w beating one from U_l. We parametrise U by K equally
    weighted atoms at its quantiles q_k = F^-1(tau_k), tau_k = (2k - 1) / (2K) (the quantile representation of
    Dabney et al. 2018, "Distributional RL with Quantile Regression", Sec. 3), and compare each pair of atoms
    with the Bradley-Terry link:

        P(y_w > y_l | x) = 1/K^2 * sum_j sum_k sigma( q_w,j - q_l,k )
        L = -log P = -( logsumexp_{j,k} log sigma(q_w,j - q_l,k) - 2 log K )

    With K = 1 this is exactly the BT loss. The reward reported for a completion is the distribution's mean,
    (1/K) sum_k q_k; its spread (std over atoms) is the uncertainty.

    Shapes: `chosen_quantiles`, `rejected_quantiles` `(B, K)`; returns the per-pair loss `(B,)`. Metrics of
    `pair_metrics` from the mean rewards, plus `quantile_spread` (mean std over atoms).
    Deviation from DPL: DPL's categorical model compares draws with a hard step (P(U_w > U_l) + 1/2 P(=)) over
    fixed reward values with learnt probabilities; here the atom locations are learnt, so the step is smoothed
    by the logistic link to give them a gradient. The head keeps the atoms sorted (see rlxf.models.reward).
    """
    _check_quantiles(chosen_quantiles, rejected_quantiles)
    qw, ql = chosen_quantiles.float(), rejected_quantiles.float()
    k = qw.shape[1]
    pairwise = F.logsigmoid(qw.unsqueeze(2) - ql.unsqueeze(1))  # (B, K, K): atom j of y_w vs atom k of y_l
    loss = -(torch.logsumexp(pairwise.flatten(1), dim=1) - 2 * math.log(k))
    metrics = pair_metrics(qw.mean(dim=1), ql.mean(dim=1))
    metrics["quantile_spread"] = torch.cat([qw, ql]).detach().std(dim=1, unbiased=False).mean()
    return LossOutput(loss, metrics)


def pinball_loss(quantiles: Tensor, targets: Tensor, *, taus: Tensor | None = None) -> LossOutput:
    """Quantile-regression (pinball) loss for a quantile head with scalar targets (Koenker & Bassett 1978,
    "Regression Quantiles", the check function rho_tau of Sec. 1; used for reward models on ratings by Dorka
    2024, "Quantile Regression for Distributional Reward Models in RLHF"):

        rho_tau(u) = u * (tau - 1[u < 0]) = max(tau * u, (tau - 1) * u),   u = y - q_tau
        L = (1/K) sum_k rho_{tau_k}(y - q_k)

    Shapes: `quantiles` `(B, K)`, `targets` `(B,)`, `taus` `(K,)` in (0, 1) (default `quantile_levels(K)`);
    returns the per-row loss `(B,)`. Metrics: `below_median` (fraction of targets at or below their row's median atom).
    Deviations: none (no Huber smoothing).
    """
    if quantiles.dim() != 2 or not quantiles.dtype.is_floating_point:
        raise ValueError(f"quantiles must be a float (B, K) tensor, got {quantiles.dtype} {tuple(quantiles.shape)}")
    check_pair_tensors(targets=targets)
    if targets.shape[0] != quantiles.shape[0]:
        raise ValueError(f"targets has {targets.shape[0]} rows, quantiles {quantiles.shape[0]}")
    k = quantiles.shape[1]
    taus = quantile_levels(k) if taus is None else taus.float()
    if taus.shape != (k,) or bool(((taus <= 0) | (taus >= 1)).any()):
        raise ValueError(f"taus must be ({k},) with values in (0, 1), got {taus.tolist()}")
    u = targets.float().unsqueeze(1) - quantiles.float()
    rho = torch.maximum(taus.to(u.device) * u, (taus.to(u.device) - 1) * u)
    median = quantiles.detach().float().median(dim=1).values
    return LossOutput(rho.mean(dim=1), {"below_median": (targets.detach().float() <= median).float().mean()})
