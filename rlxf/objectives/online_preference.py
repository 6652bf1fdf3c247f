"""Online preference losses: DPO on a labelled pair plus a term on samples that only an online loop has.

Every function here is registered with ``kind="online_preference"`` and returns `LossOutput(loss, metrics)` with
the unreduced per-pair loss `(B,)` (the recipe takes the mean, so gradient accumulation stays exact), the metrics
of `pair_metrics` from DPO's implicit rewards beta * h, ``dpo_loss`` (the mean DPO term) and loss-specific ones.
The DPO term is `dpo_loss` itself (not a copy of its maths).

Inputs, by name (the online recipe passes those a loss's signature asks for), all `(B,)`, log-probs summed over
completion tokens, row i of every tensor belonging to the same prompt x_i:

- ``policy_chosen_logps``, ``policy_rejected_logps``, ``ref_chosen_logps``, ``ref_rejected_logps``: the labelled
  pair (y_w, y_l), as for `dpo_loss`;
- ``policy_ref_sample_logps``, ``ref_ref_sample_logps``: log pi_theta(y~|x) and log pi_ref(y~|x) of one sample
  y~ ~ pi_ref per pair;
- ``policy_sample_logps``, ``ref_sample_logps``: log pi_theta(y|x) and log pi_ref(y|x) of one fresh sample
  y ~ pi_theta per pair.

Notation: h = log pi_theta(y|x) - log pi_ref(y|x) for any completion y, sigma the logistic function,
L_DPO = -log sigma(beta (h_w - h_l)) (Rafailov et al. 2023, eq. 7). Maths in float32 whatever the input dtype.
"""

from __future__ import annotations

from torch import Tensor

from rlxf.objectives.base import LossOutput, check_pair_tensors
from rlxf.objectives.preference import dpo_loss
from rlxf.objectives.registry import register

__all__ = ["hypo_loss", "vpo_loss", "xpo_loss"]


def _check_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _with_dpo(dpo: LossOutput, extra: Tensor, **metrics: Tensor) -> LossOutput:
    """DPO's per-pair loss plus `extra` `(B,)`; DPO's metrics, its mean loss and the given (detached) metrics."""
    out = {**dpo.metrics, "dpo_loss": dpo.loss.detach().mean()}
    out.update({k: v.detach() for k, v in metrics.items()})
    return LossOutput(dpo.loss + extra, out)


@register("xpo", kind="online_preference", recipe="xpo")
def xpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    policy_ref_sample_logps: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 1e-5,
) -> LossOutput:
    """Exploratory Preference Optimization (Xie et al. 2024, "Exploratory Preference Optimization: Harnessing
    Implicit Q*-Approximation for Sample-Efficient RLHF", Algorithm 1, the update "DPO with global optimism"):

        pi_(t+1) = argmin_pi  alpha * sum_i log pi(y~_i | x_i)  -  sum_(x, y+, y-) log sigma( beta h(y+) - beta h(y-) )

    with y~_i ~ pi_ref. Per pair: L_XPO = L_DPO(y_w, y_l) + alpha * log pi_theta(y~|x).

    Sign: the bonus is *added* to the loss, so gradient descent lowers the likelihood of what the reference
    samples; mass leaves the reference's support (optimism: explore where pi_ref does not go). TRL's XPOTrainer
    does the same (`dpo_losses + alpha * model_logprobs_ref_data_sum`, no beta factor), so `alpha` here is TRL's
    `alpha` (default 1e-5, TRL's). Summaries that write the bonus as alpha * beta * log pi(y~) (the optimism
    term before beta is folded into alpha) are this function with `alpha * beta` in place of `alpha`.

    Shapes: all inputs `(B,)` summed over completion tokens; returns `(B,)`. `alpha` >= 0 (0 is DPO).
    Implicit rewards: beta * h_w, beta * h_l. Extra metrics: `dpo_loss`, `ref_sample_logp` (mean log pi_theta(y~|x)).
    Deviations: the sum over all past reference samples becomes the mean over this batch's (the recipe's mean
    over rows); y~ is whatever reference sample the recipe passes (Algorithm 1 pairs it with the policy sample in
    the labelled pair). The equation/line numbering of the paper was not checked offline.
    """
    _check_non_negative("alpha", alpha)
    check_pair_tensors(policy_chosen_logps=policy_chosen_logps, policy_ref_sample_logps=policy_ref_sample_logps)
    dpo = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)
    ref_sample_logp = policy_ref_sample_logps.float()
    return _with_dpo(dpo, alpha * ref_sample_logp, ref_sample_logp=ref_sample_logp.mean())


@register("vpo", kind="online_preference", recipe="vpo")
def vpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    policy_ref_sample_logps: Tensor,
    ref_ref_sample_logps: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.1,
    optimistic: bool = True,
) -> LossOutput:
    """Value-Incentivized Preference Optimization (Cen et al. 2024, "Value-Incentivized Preference Optimization:
    A Unified Approach to Online and Offline RLHF", the VPO objective): the Bradley-Terry loss of a reward r
    regularised by its optimal value J*(r) = max_pi E[r(x, y)] - beta KL(pi || pi_ref),

        r^ = argmin_r  l_BT(r; D) - sign * alpha * J*(r),     sign = +1 online (optimism), -1 offline (pessimism).

    In the DPO parameterisation r = beta log pi/pi_ref + beta log Z(x) the shift beta log Z(x) is pinned by VPO's
    calibration E_(y ~ pi_cal)[r(x, y)] = 0, so J*(r) = beta log Z(x) = -beta E_(y ~ pi_cal)[h(y)] and

        L_VPO = L_DPO(y_w, y_l) + sign * alpha * beta * ( log pi_theta(y~|x) - log pi_ref(y~|x) ),   y~ ~ pi_cal.

    pi_cal = pi_ref here (the paper's choice for its experiments): `policy_ref_sample_logps` and
    `ref_ref_sample_logps` are one reference sample per pair. Optimistic VPO lowers pi_theta(y~) like XPO (its
    gradient is XPO's with XPO's alpha = alpha * beta; the log pi_ref term is a constant that makes the value
    exact); pessimistic VPO (`optimistic=False`) raises it, a forward-KL pull towards pi_ref (E_(pi_ref)[-h] is
    KL(pi_ref || pi_theta)).

    Shapes: all inputs `(B,)` summed over completion tokens; returns `(B,)`. `alpha` >= 0 (0 is DPO), default 0.1
    (no default in the paper's text available here). Implicit rewards: beta * h_w, beta * h_l. Extra metrics:
    `dpo_loss`, `value` (mean J*(r_theta) estimate -beta h(y~), the quantity optimism raises).
    Deviations: the expectation over pi_cal is one sample per pair; the paper's equation number was not checked
    offline.
    """
    _check_non_negative("alpha", alpha)
    check_pair_tensors(policy_chosen_logps=policy_chosen_logps, policy_ref_sample_logps=policy_ref_sample_logps,
                       ref_ref_sample_logps=ref_ref_sample_logps)
    dpo = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)
    value = -beta * (policy_ref_sample_logps.float() - ref_ref_sample_logps.float())
    sign = 1.0 if optimistic else -1.0
    return _with_dpo(dpo, -sign * alpha * value, value=value.mean())


@register("hypo", kind="online_preference", recipe="hypo")
def hypo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    policy_sample_logps: Tensor,
    ref_sample_logps: Tensor,
    *,
    beta: float = 0.1,
    lam: float = 0.01,
) -> LossOutput:
    """Hybrid Preference Optimization (Song et al. 2024, "The Importance of Online Data: Understanding Preference
    Fine-tuning via Coverage", Algorithm 1, HyPO): offline DPO on the labelled pairs plus a reverse KL to the
    reference on the policy's own (unlabelled) samples,

        L_HyPO = L_DPO(y_w, y_l) + lambda * KL( pi_theta(.|x) || pi_ref(.|x) ).

    The KL is estimated on one fresh sample y ~ pi_theta per pair with the score-function (REINFORCE) estimator:
    the term is k1 = h(y) = log pi_theta(y|x) - log pi_ref(y|x) in value, and its gradient is sg(h(y)) * grad
    log pi_theta(y|x), computed as sg(h) * (log pi - sg(log pi)) + sg(h). Since E_(y ~ pi)[grad log pi(y)] = 0,
    E_(y ~ pi)[sg(h(y)) grad log pi(y)] = grad KL(pi || pi_ref) exactly (the pathwise part of grad h averages to
    zero), so the expected gradient is the KL's while the reported value is the unbiased k1 estimate of it.

    Shapes: all inputs `(B,)` summed over completion tokens; returns `(B,)`. `lam` (the paper's lambda; not the
    Python keyword) >= 0, 0 is DPO; default 0.01 (not from the paper). Implicit rewards: beta * h_w, beta * h_l.
    Extra metrics: `dpo_loss`, `kl` (mean k1 estimate of KL(pi_theta || pi_ref) on the fresh samples).
    Deviations: the paper estimates the KL gradient with RLOO over k samples per prompt; with one sample per pair
    there is no leave-one-out baseline, so this is plain REINFORCE (same expectation, more variance; a baseline
    across rows would couple the rows, and micro-batching would change the result). The sample must come from the
    current policy (one update per sample): no importance weight corrects a stale one. The paper's equation number
    was not checked offline.
    """
    _check_non_negative("lam", lam)
    check_pair_tensors(policy_chosen_logps=policy_chosen_logps, policy_sample_logps=policy_sample_logps,
                       ref_sample_logps=ref_sample_logps)
    dpo = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)
    logp = policy_sample_logps.float()
    kl = (logp - ref_sample_logps.float()).detach()
    kl_term = kl * (logp - logp.detach()) + kl  # value k1, gradient k1 * grad log pi (score function)
    return _with_dpo(dpo, lam * kl_term, kl=kl.mean())
