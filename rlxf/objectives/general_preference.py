"""General-preference (Nash) losses: SPPO, INPO and Nash-MD-PG, pure functions of sequence log-probs `(B,)`.

These methods learn the Nash equilibrium (the von Neumann winner) of a preference P(y > y' | x) that need not
be explained by any scalar reward (it may be intransitive, e.g. rock-paper-scissors). Each is an iterative
scheme, round t playing the current policy against itself or a mixture with the reference; the loss of one
round is a function of log-probs, like the DPO family:

- ``sppo`` (kind ``self_play``): one sampled completion per row and its estimated win rate against pi_t;
- ``nash_md`` (kind ``self_play``): one completion y ~ pi_theta per row and its win rate against an opponent
  drawn from the geometric mixture of pi_theta and the reference (``rlxf.ops.geometric_mixture_logprobs``);
- ``inpo`` (kind ``online_preference``): a labelled pair sampled from pi_t, with log-probs under the policy,
  the reference and the previous iterate pi_t.

Direct Nash Optimization (Rosset et al. 2024, "Direct Nash Optimization: Teaching Language Models to
Self-Improve with General Preferences") has no loss of its own here. Its practical algorithm (DNO-Prct,
Algorithm 2, eq. 13) is the DPO loss with the previous iterate pi_t as the reference, on pairs whose
estimated win rates (``rlxf.ops.win_rates_from_comparisons``) differ by a large margin
(``rlxf.ops.large_margin_pairs``):

    pi_{t+1} = argmax_pi E_{(x, y+, y-)} log sigma( eta log pi(y+|x)/pi_t(y+|x) - eta log pi(y-|x)/pi_t(y-|x) ),

so the online loop calls the registered ``dpo`` loss with ``ref_*_logps`` = log pi_t and ``beta`` = DNO's eta.

Names: ``*_logps`` here are *sequence* log-probs, log pi(y|x) summed over the completion's tokens, `(B,)`
(as in ``rlxf.objectives.preference``); ``prev_`` is the previous iterate pi_t (the policy that sampled the
round's data), ``ref_`` the fixed reference pi_ref. Win rates are constants in [0, 1] (detached). Every loss
returns the unreduced per-row loss `(B,)` (the recipe takes the mean) and detached scalar metrics; the maths
runs in float32 whatever the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlxf.objectives.base import LossOutput, check_pair_tensors, pair_metrics
from rlxf.objectives.registry import register

__all__ = ["inpo_loss", "nash_md_loss", "sppo_loss"]


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


@register("sppo", kind="self_play")
def sppo_loss(policy_logps: Tensor, prev_logps: Tensor, win_rates: Tensor, *, eta: float = 1000.0) -> LossOutput:
    """Self-Play Preference Optimization (Wu et al. 2024, "Self-Play Preference Optimization for Language
    Model Alignment", eq. 3.6, the objective Algorithm 1 minimises each round):

        L_SPPO = ( log pi_theta(y|x) / pi_t(y|x) - eta ( P^(y > pi_t | x) - 1/2 ) )^2,    y ~ pi_t(.|x)

    a regression of the log-ratio to the previous iterate onto the multiplicative-weights step
    pi_{t+1} propto pi_t exp(eta P(y > pi_t)) (eq. 3.2), with the log-partition log Z_{pi_t}(x) replaced by
    eta / 2 (its value when every answer ties). eta is the paper's learning rate: larger eta, larger step.
    The official code writes the same loss with beta = 1 / eta (default beta = 0.001, i.e. eta = 1000, the
    default here); it averages the rows of its chosen and rejected completions, which is this loss on both.

    Args:
        policy_logps: `(B,)` log pi_theta(y|x), summed over the completion's tokens (differentiable).
        prev_logps: `(B,)` log pi_t(y|x) under the iterate that sampled y.
        win_rates: `(B,)` P^(y > pi_t | x) in [0, 1], e.g. `ops.win_rates_from_comparisons` over the
            prompt's K samples (constants).
        eta: the step size eta > 0.

    Returns `LossOutput` with the per-row loss `(B,)` and metrics ``log_ratio`` (mean log pi_theta/pi_t),
    ``target`` (mean eta (P^ - 1/2)) and ``win_rate`` (mean P^).
    Deviations: none from eq. 3.6. The paper's estimate P^ averages over all K samples including y itself;
    ``ops.win_rates_from_comparisons`` leaves y out (see there).
    """
    check_pair_tensors(policy_logps=policy_logps, prev_logps=prev_logps, win_rates=win_rates)
    _check_positive("eta", eta)
    log_ratio = policy_logps.float() - prev_logps.float()
    win = win_rates.detach().float()
    target = eta * (win - 0.5)
    loss = (log_ratio - target).square()
    metrics = {"log_ratio": log_ratio.detach().mean(), "target": target.mean(), "win_rate": win.mean()}
    return LossOutput(loss, metrics)


@register("inpo", kind="online_preference", recipe="inpo")
def inpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    prev_chosen_logps: Tensor,
    prev_rejected_logps: Tensor,
    *,
    eta: float = 0.005,
    tau: float = 0.005 / 3,
) -> LossOutput:
    """Iterative Nash Policy Optimization (Zhang et al. 2024, "Iterative Nash Policy Optimization: Aligning
    LLMs with General Preferences via No-Regret Learning", eq. 8 and Algorithm 1, line 5):

        L_INPO = ( h_t(pi_theta, y_w, y_l) - 1 / (2 eta) )^2,    y, y' ~ pi_t, (y_w, y_l) labelled by P,
        h_t(pi, y, y') = log pi(y)/pi(y') - (tau/eta) log pi_ref(y)/pi_ref(y') - (1 - tau/eta) log pi_t(y)/pi_t(y').

    Its minimiser over the labelled pairs is the online-mirror-descent step (eq. 5)
    pi_{t+1} propto pi_t^{1 - tau/eta} pi_ref^{tau/eta} exp(P(y > pi_t) / eta) on the tau-KL-regularised
    game (eq. 3), without estimating any win rate: eq. 8 equals eq. 7 (whose target is
    (P(y > pi_t) - P(y' > pi_t)) / eta) up to a constant (Prop. 6). tau is the KL regularisation towards
    pi_ref and eta the OMD regulariser towards pi_t (1/eta is the learning rate); 0 <= tau <= eta.
    Defaults are the paper's (App. B: eta = 0.005, tau = eta / 3).

    Args:
        policy_chosen_logps, policy_rejected_logps: `(B,)` log pi_theta of y_w and y_l, summed over tokens.
        ref_chosen_logps, ref_rejected_logps: `(B,)` the same under pi_ref.
        prev_chosen_logps, prev_rejected_logps: `(B,)` the same under pi_t, the iterate that sampled the pair.
        eta, tau: as above.

    Returns `LossOutput` with the per-pair loss `(B,)` and the `pair_metrics` of the implicit rewards
    r(y) = eta log pi_theta(y) - tau log pi_ref(y) - (eta - tau) log pi_t(y): r_w - r_l = eta h_t, which at the
    round's optimum equals the win-rate gap P(y_w > pi_t) - P(y_l > pi_t) (eq. 6).
    Deviations: none.
    """
    check_pair_tensors(
        policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
        prev_chosen_logps=prev_chosen_logps, prev_rejected_logps=prev_rejected_logps,
    )
    _check_positive("eta", eta)
    if not 0 <= tau <= eta:
        raise ValueError(f"tau must be in [0, eta] = [0, {eta}], got {tau}")

    weight = tau / eta

    def log_ratio(policy: Tensor, ref: Tensor, prev: Tensor) -> Tensor:
        """log pi_theta(y) - (tau/eta) log pi_ref(y) - (1 - tau/eta) log pi_t(y): h_t = this(y_w) - this(y_l)."""
        return policy.float() - weight * ref.float() - (1.0 - weight) * prev.float()

    chosen = log_ratio(policy_chosen_logps, ref_chosen_logps, prev_chosen_logps)
    rejected = log_ratio(policy_rejected_logps, ref_rejected_logps, prev_rejected_logps)
    loss = (chosen - rejected - 1.0 / (2.0 * eta)).square()
    return LossOutput(loss, pair_metrics(eta * chosen, eta * rejected))


@register("nash_md", kind="self_play", recipe="nash-md")
def nash_md_loss(policy_logps: Tensor, ref_logps: Tensor, win_rates: Tensor, *, beta: float = 0.1) -> LossOutput:
    """Nash-MD-PG (Munos et al. 2023, "Nash Learning from Human Feedback", sec. 7, the policy gradient of the
    regularised preference game):

        grad = E_{y ~ pi_theta, y' ~ pi_theta^alpha}[ ( P(y > y'|x) - 1/2 - beta log pi_theta(y|x)/pi_ref(y|x) )
                                                      grad log pi_theta(y|x) ],

    where the opponent y' comes from the geometric mixture pi_theta^alpha propto pi_theta^{1-alpha} pi_ref^alpha
    (App. F.3; ``ops.geometric_mixture_logprobs``, per token). The bracket A is a constant (detached): its
    -(P - 1/2) log pi part is REINFORCE on the win rate with baseline 1/2, and its beta sg(log pi_theta/pi_ref)
    log pi part has the gradient of KL(pi_theta || pi_ref), since grad KL = E_{y~pi}[log(pi/pi_ref) grad log pi].
    The loss is written -A exp(log pi_theta - sg(log pi_theta)): the on-policy ratio is 1, so its gradient is
    -A grad log pi_theta and its value is -A, whose mean estimates -(P(pi_theta > pi_theta^alpha) - 1/2 -
    beta KL(pi_theta || pi_ref)), minus the regularised objective.

    Args:
        policy_logps: `(B,)` log pi_theta(y|x) of a completion sampled from pi_theta, summed over its tokens.
        ref_logps: `(B,)` log pi_ref(y|x).
        win_rates: `(B,)` P(y > y'|x) against the opponent's sample (a judge's probability or a 0/1 label).
        beta: the KL coefficient (the paper's tau; TRL's ``beta``). The paper's mixture coefficient beta is
            the opponent sampler's ``mixture_coef`` (TRL's ``mixture_coef``), not an argument here.

    Returns `LossOutput` with the per-row loss `(B,)` and metrics ``win_rate`` (mean P), ``kl`` (mean
    log pi_theta/pi_ref: the k1 estimate of KL(pi_theta || pi_ref), y being sampled from pi_theta) and
    ``advantage`` (mean A).
    Deviations: the baseline 1/2 is the paper's; the paper uses the exact per-sequence gradient, here the
    sequence is one action (its summed log-prob), as in TRL's NashMDTrainer; TRL's value is -(P - 1/2) log pi
    + beta sg(log pi/pi_ref) log pi (same gradient, a value without meaning).
    """
    check_pair_tensors(policy_logps=policy_logps, ref_logps=ref_logps, win_rates=win_rates)
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    policy = policy_logps.float()
    log_ratio = (policy - ref_logps.float()).detach()
    win = win_rates.detach().float()
    advantage = win - 0.5 - beta * log_ratio
    loss = -advantage * torch.exp(policy - policy.detach())
    metrics = {"win_rate": win.mean(), "kl": log_ratio.mean(), "advantage": advantage.mean()}
    return LossOutput(loss, metrics)
