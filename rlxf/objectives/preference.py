"""Offline preference losses (the DPO family): pure functions of summed sequence log-probs `(B,)`.

Every function here is registered with ``kind="preference"`` and returns `LossOutput(loss, metrics)` with the
unreduced per-pair loss `(B,)` (the recipe takes the mean, so gradient accumulation stays exact) and the
metrics of `pair_metrics` computed from the loss's own implicit rewards, plus any loss-specific metrics.

Inputs, by name (the preference recipe passes those a loss's signature asks for):

- ``policy_chosen_logps``, ``policy_rejected_logps``: log pi_theta(y | x) summed over completion tokens, `(B,)`;
- ``ref_chosen_logps``, ``ref_rejected_logps``: the same under the frozen reference, `(B,)`;
- ``chosen_lengths``, ``rejected_lengths``: completion token counts `(B,)` (float), for length-normalised losses;
  a count of 0 (an empty completion) is treated as 1, so its mean log-prob is its (zero) sum;
- ``chosen_scores``, ``rejected_scores``: scalar quality scores `(B,)` of the two completions (MMPO only).

Notation in the docstrings: h_w = log pi(y_w|x) - log pi_ref(y_w|x), h_l the same for y_l, and sigma the
logistic function. Hyperparameters are keyword-only and named as in the papers. The maths runs in float32
whatever the input dtype; every `exp` has its exponent clamped to at most `MAX_EXPONENT`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rlxf.objectives.base import LossOutput, check_pair_tensors, pair_metrics
from rlxf.objectives.registry import register

__all__ = [
    "FDPO_DIVERGENCES",
    "MAX_EXPONENT",
    "cdpo_loss",
    "discopop_loss",
    "dpo_loss",
    "fdpo_alpha_loss",
    "fdpo_forward_kl_loss",
    "fdpo_js_loss",
    "fdpo_loss",
    "fdpo_reverse_kl_loss",
    "hdpo_loss",
    "hinge_loss",
    "ipo_loss",
    "mmpo_loss",
    "orpo_loss",
    "robust_dpo_loss",
    "rpo_loss",
    "simpo_loss",
]

MAX_EXPONENT = 20.0
"""Largest exponent passed to `exp` (e^20 ~ 4.9e8): beyond it the value is held and the gradient is 0."""

ORPO_MAX_MEAN_LOGP = -1e-6
"""ORPO's mean token log-prob is clamped to at most this, so that the odds p/(1-p) stay finite as p -> 1."""


def _log_ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    """(log pi/pi_ref)(y_w|x), (log pi/pi_ref)(y_l|x) in float32, after the shape checks."""
    check_pair_tensors(
        policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
    )
    chosen = policy_chosen_logps.float() - ref_chosen_logps.float()
    rejected = policy_rejected_logps.float() - ref_rejected_logps.float()
    return chosen, rejected


def _lengths(lengths: Tensor) -> Tensor:
    """Token counts as float32, with empty completions (0) counted as 1."""
    return lengths.float().clamp(min=1.0)


def _check_epsilon(epsilon: float) -> None:
    if not 0.0 <= epsilon < 0.5:
        raise ValueError(f"epsilon (the label flip rate) must be in [0, 0.5), got {epsilon}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


@register("dpo", kind="preference")
def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your Language
    Model is Secretly a Reward Model", eq. 7):

        L_DPO = -log sigma( beta * log pi(y_w|x)/pi_ref(y_w|x) - beta * log pi(y_l|x)/pi_ref(y_l|x) )

    computed as ``softplus(-beta * (h_w - h_l))`` (= -logsigmoid), finite for any margin.

    Shapes: all inputs `(B,)`; returns the per-pair loss `(B,)`. Implicit rewards (Sec. 5):
    r_w = beta * h_w, r_l = beta * h_l with h = log pi - log pi_ref. Deviations: none.
    """
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logits = beta * (chosen_ratio - rejected_ratio)
    loss = F.softplus(-logits)
    return LossOutput(loss, pair_metrics(beta * chosen_ratio, beta * rejected_ratio))


@register("ipo", kind="preference")
def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    tau: float = 0.1,
) -> LossOutput:
    """Identity Preference Optimization (Azar et al. 2023, "A General Theoretical Paradigm to Understand
    Learning from Human Preferences", the sampled IPO loss, eq. 17):

        L_IPO = ( h_w - h_l - 1 / (2 tau) )^2

    a regression of the log-ratio margin onto the fixed target 1/(2 tau) (tau is the KL regularisation).

    Shapes: all inputs `(B,)` (sequence log-probs summed over tokens); returns `(B,)`.
    Implicit rewards: tau * h_w, tau * h_l (the optimum of the IPO objective has tau * log pi/pi_ref equal to
    the preference probability up to a constant). Deviations: none. TRL divides h by the completion length
    before squaring; that length-normalised variant is not what eq. 17 says and is not done here.
    """
    _check_positive("tau", tau)
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    loss = (chosen_ratio - rejected_ratio - 1.0 / (2.0 * tau)) ** 2
    return LossOutput(loss, pair_metrics(tau * chosen_ratio, tau * rejected_ratio))


@register("cdpo", kind="preference")
def cdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    epsilon: float = 0.1,
) -> LossOutput:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO", the cDPO
    loss): DPO against label-smoothed targets, for preferences flipped with probability epsilon,

        L_cDPO = (1 - epsilon) * L_DPO(y_w, y_l) + epsilon * L_DPO(y_l, y_w)
               = (1 - epsilon) * softplus(-beta (h_w - h_l)) + epsilon * softplus(beta (h_w - h_l)).

    Its minimum is at sigma(beta (h_w - h_l)) = 1 - epsilon, so past that the gradient pushes the margin back.

    Shapes: all inputs `(B,)`; returns `(B,)`. `epsilon` in [0, 0.5) (0 is DPO; at 0.5 the labels carry no
    information). Implicit rewards: beta * h_w, beta * h_l. Deviations: none.
    """
    _check_epsilon(epsilon)
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logits = beta * (chosen_ratio - rejected_ratio)
    loss = (1.0 - epsilon) * F.softplus(-logits) + epsilon * F.softplus(logits)
    return LossOutput(loss, pair_metrics(beta * chosen_ratio, beta * rejected_ratio))


@register("robust_dpo", kind="preference")
def robust_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    epsilon: float = 0.1,
) -> LossOutput:
    """Robust DPO, rDPO (Chowdhury, Kini & Natarajan 2024, "Provably Robust DPO: Aligning Language Models
    with Noisy Feedback", ICML 2024, the de-biased loss): with labels flipped at random with known rate epsilon,

        L_rDPO = [ (1 - epsilon) * L_DPO(y_w, y_l) - epsilon * L_DPO(y_l, y_w) ] / (1 - 2 epsilon)

    is an unbiased estimate of the DPO loss on the clean labels. Unlike cDPO its gradient always raises the
    margin (d L / d (h_w - h_l) = -beta [(1-eps) sigma(-x) + eps sigma(x)] / (1 - 2 eps) < 0, x = beta (h_w - h_l)),
    and the loss is unbounded below (it decreases linearly in the margin once x >> 0).

    Shapes: all inputs `(B,)`; returns `(B,)`. `epsilon` in [0, 0.5) (0 is DPO; the loss divides by 1 - 2 eps).
    Implicit rewards: beta * h_w, beta * h_l. Deviations: none.
    """
    _check_epsilon(epsilon)
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logits = beta * (chosen_ratio - rejected_ratio)
    loss = ((1.0 - epsilon) * F.softplus(-logits) - epsilon * F.softplus(logits)) / (1.0 - 2.0 * epsilon)
    return LossOutput(loss, pair_metrics(beta * chosen_ratio, beta * rejected_ratio))


@register("hinge", kind="preference")
def hinge_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """Hinge preference loss in the form of RSO (Liu et al. 2024, "Statistical Rejection Sampling Improves
    Preference Optimization", ICLR 2024, the normalised hinge loss "hinge-norm"):

        L_hinge = max(0, 1 - [ beta * log pi(y_w|x)/pi_ref(y_w|x) - beta * log pi(y_l|x)/pi_ref(y_l|x) ])

    which RSO derives from SLiC-HF's calibration loss (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood
    Calibration with Human Feedback": max(0, delta - log pi(y_w|x) + log pi(y_l|x)), no reference) by
    measuring the margin with the reference-normalised log-ratios and fixing delta = 1, scale beta (RSO's gamma).
    This function is the RSO form; SLiC's own is the same with ref log-probs 0 and delta = 1/beta.

    Shapes: all inputs `(B,)`; returns `(B,)`. Pairs with beta (h_w - h_l) >= 1 give loss 0 and gradient 0.
    Implicit rewards: beta * h_w, beta * h_l. Deviations: none (SLiC's SFT regulariser is not part of it).
    """
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    loss = torch.relu(1.0 - beta * (chosen_ratio - rejected_ratio))
    return LossOutput(loss, pair_metrics(beta * chosen_ratio, beta * rejected_ratio))


@register("simpo", kind="preference")
def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
) -> LossOutput:
    """Simple Preference Optimization (Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a
    Reference-Free Reward", eq. 6):

        L_SimPO = -log sigma( beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma )

    reference-free (no ref inputs): the reward is the length-normalised log-likelihood (eq. 4) and gamma is a
    target reward margin. Defaults beta = 2.0, gamma = 1.0 (gamma/beta = 0.5, the SimPO repository's default).

    Shapes: `policy_*_logps` `(B,)` summed over tokens, `*_lengths` `(B,)` token counts; returns `(B,)`.
    Implicit rewards: beta/|y| log pi(y|x). Deviations: none.
    """
    check_pair_tensors(
        policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
    )
    chosen_reward = beta * policy_chosen_logps.float() / _lengths(chosen_lengths)
    rejected_reward = beta * policy_rejected_logps.float() / _lengths(rejected_lengths)
    loss = F.softplus(-(chosen_reward - rejected_reward - gamma))
    return LossOutput(loss, pair_metrics(chosen_reward, rejected_reward))


def _log1m_exp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012, "Accurately Computing log(1 - exp(-|a|))"):
    log(-expm1(x)) near 0, log1p(-exp(x)) below -log 2. Each branch sees a safe input, so neither produces inf
    and the unused one cannot poison the gradient."""
    near_zero = x > -math.log(2.0)
    small = torch.log(-torch.expm1(torch.where(near_zero, x, torch.full_like(x, -1.0))))
    large = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(x, -1.0), x)))
    return torch.where(near_zero, small, large)


@register("orpo", kind="preference")
def orpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    lambda_: float = 0.1,
) -> LossOutput:
    """Odds Ratio Preference Optimization (Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference Optimization
    without Reference Model", eq. 6-7):

        L_ORPO = L_SFT + lambda * L_OR,    L_OR = -log sigma( log( odds(y_w|x) / odds(y_l|x) ) )      (6), (7)

    with odds(y|x) = P(y|x) / (1 - P(y|x)) and P the length-normalised likelihood,
    log P(y|x) = (1/|y|) sum_t log pi(y_t|x, y_<t); L_SFT is the chosen response's mean token NLL,
    -log P(y_w|x). No reference model. The log-odds are computed as log P - log(1 - exp(log P)) with a
    two-branch log1m-exp (expm1 near 0), never as a ratio of probabilities.

    Shapes: `policy_*_logps` `(B,)` summed over tokens, `*_lengths` `(B,)` token counts; returns `(B,)`.
    `lambda_` is the paper's lambda (a Python keyword). Implicit rewards (as TRL logs them):
    lambda * log P(y_w|x), lambda * log P(y_l|x). Extra metrics: `nll` (mean L_SFT), `or_loss` (mean L_OR),
    `log_odds_ratio` (mean log odds(y_w)/odds(y_l)).
    Deviation: log P is clamped to at most ORPO_MAX_MEAN_LOGP = -1e-6 (P <= 1 - 1e-6), so a response whose
    every token has probability ~1 gets a finite log-odds (<= 13.8) and no gradient through the odds term.
    """
    _check_non_negative("lambda_", lambda_)
    check_pair_tensors(
        policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
    )
    chosen_mean = policy_chosen_logps.float() / _lengths(chosen_lengths)
    rejected_mean = policy_rejected_logps.float() / _lengths(rejected_lengths)

    def log_odds(mean_logp: Tensor) -> Tensor:
        mean_logp = mean_logp.clamp(max=ORPO_MAX_MEAN_LOGP)
        return mean_logp - _log1m_exp(mean_logp)

    log_odds_ratio = log_odds(chosen_mean) - log_odds(rejected_mean)
    or_loss = F.softplus(-log_odds_ratio)
    nll = -chosen_mean
    loss = nll + lambda_ * or_loss
    metrics = pair_metrics(lambda_ * chosen_mean, lambda_ * rejected_mean)
    metrics.update(
        nll=nll.detach().mean(), or_loss=or_loss.detach().mean(), log_odds_ratio=log_odds_ratio.detach().mean()
    )
    return LossOutput(loss, metrics)


@register("rpo", kind="preference")
def rpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
) -> LossOutput:
    """Regularized Preference Optimization (Liu et al. 2024, "Provably Mitigating Overoptimization in RLHF:
    Your SFT Loss is Implicitly an Adversarial Regularizer"): DPO plus an SFT (negative log-likelihood) term
    on the chosen response, which the paper shows is the adversarial regulariser that counters reward
    over-optimisation,

        L_RPO = L_DPO + alpha * ( -(1/|y_w|) log pi(y_w|x) ).

    Normalisation choice: the NLL is the per-token mean over the chosen completion (hence `chosen_lengths`), as
    TRL's `rpo_alpha` and Pang et al. 2024 (Iterative RPO) use it, so that `alpha` does not scale with length.
    The paper writes the regulariser on the sequence log-likelihood with weight eta * beta; that form is this
    function with `chosen_lengths` all 1 and `alpha = eta * beta`.

    Shapes: the four log-prob inputs `(B,)` summed over tokens, `chosen_lengths` `(B,)`; returns `(B,)`.
    Implicit rewards: beta * h_w, beta * h_l. Extra metrics: `nll` (mean chosen token NLL), `dpo_loss`.
    alpha = 0 is DPO.
    """
    _check_non_negative("alpha", alpha)
    check_pair_tensors(policy_chosen_logps=policy_chosen_logps, chosen_lengths=chosen_lengths)
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    dpo = F.softplus(-beta * (chosen_ratio - rejected_ratio))
    nll = -policy_chosen_logps.float() / _lengths(chosen_lengths)
    loss = dpo + alpha * nll
    metrics = pair_metrics(beta * chosen_ratio, beta * rejected_ratio)
    metrics.update(nll=nll.detach().mean(), dpo_loss=dpo.detach().mean())
    return LossOutput(loss, metrics)


# f-DPO: one pure function per divergence, sharing the loss on the implicit rewards beta * f'(u).


def _fdpo_from_f_prime(chosen_f_prime: Tensor, rejected_f_prime: Tensor, beta: float) -> LossOutput:
    chosen_reward, rejected_reward = beta * chosen_f_prime, beta * rejected_f_prime
    loss = F.softplus(-(chosen_reward - rejected_reward))
    return LossOutput(loss, pair_metrics(chosen_reward, rejected_reward))


_FDPO_DOC = """f-DPO (Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with
    Diverse Divergence Constraints", ICLR 2024, the f-DPO loss with f' from its table of divergences):
    with u = pi(y|x)/pi_ref(y|x),

        L_f-DPO = -log sigma( beta * f'(u_w) - beta * f'(u_l) )

    {which}

    f' is taken up to an additive constant (it cancels in the loss), fixed so that f'(1) = 0: the implicit
    reward beta * f'(u) is 0 at the reference, as DPO's. Shapes: all inputs `(B,)` summed over tokens;
    returns `(B,)`. Implicit rewards: beta * f'(u_w), beta * f'(u_l)."""


def fdpo_reverse_kl_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return _fdpo_from_f_prime(chosen_ratio, rejected_ratio, beta)


fdpo_reverse_kl_loss.__doc__ = _FDPO_DOC.format(
    which="Reverse KL, f(u) = u log u, f'(u) = log u + 1 (used as log u = h): exactly DPO (`dpo_loss`)."
)


def fdpo_forward_kl_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )

    def f_prime(ratio):
        return 1.0 - torch.exp((-ratio).clamp(max=MAX_EXPONENT))

    return _fdpo_from_f_prime(f_prime(chosen_ratio), f_prime(rejected_ratio), beta)


fdpo_forward_kl_loss.__doc__ = _FDPO_DOC.format(
    which="Forward KL, f(u) = -log u, f'(u) = -1/u (used as 1 - 1/u = 1 - exp(-h)). Deviation: exp(-h) has\n"
    "    its exponent clamped to MAX_EXPONENT, i.e. for h < -20 the reward is held at 1 - e^20 with gradient 0."
)


def fdpo_js_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )

    def f_prime(ratio):
        return math.log(2.0) + F.logsigmoid(ratio)

    return _fdpo_from_f_prime(f_prime(chosen_ratio), f_prime(rejected_ratio), beta)


fdpo_js_loss.__doc__ = _FDPO_DOC.format(
    which="Jensen-Shannon, f(u) = u log u - (u + 1) log((u + 1)/2), f'(u) = log(2u / (1 + u)),\n"
    "    computed as log 2 + logsigmoid(h) (no exp, finite for any h). Deviations: none."
)


def fdpo_alpha_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.5,
) -> LossOutput:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha (the alpha-divergence order) must be in (0, 1), got {alpha}")
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )

    def f_prime(ratio):
        return (1.0 - torch.exp((-alpha * ratio).clamp(max=MAX_EXPONENT))) / alpha

    return _fdpo_from_f_prime(f_prime(chosen_ratio), f_prime(rejected_ratio), beta)


fdpo_alpha_loss.__doc__ = _FDPO_DOC.format(
    which="alpha-divergence, alpha in (0, 1): f(u) = (u^(1-alpha) - (1-alpha) u - alpha) / (alpha (alpha - 1)),\n"
    "    f'(u) = (1 - u^(-alpha)) / alpha = (1 - exp(-alpha h)) / alpha; alpha -> 0 gives reverse KL (DPO),\n"
    "    alpha -> 1 forward KL. Deviation: the exponent -alpha h is clamped to MAX_EXPONENT."
)

FDPO_DIVERGENCES = {
    "reverse_kl": fdpo_reverse_kl_loss,
    "forward_kl": fdpo_forward_kl_loss,
    "js": fdpo_js_loss,
    "alpha": fdpo_alpha_loss,
}
"""f-DPO divergence names -> loss functions (`fdpo_loss` dispatches on `divergence`)."""


@register("fdpo", kind="preference")
def fdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    divergence: str = "js",
    alpha: float | None = None,
) -> LossOutput:
    """f-DPO by name, for configs: calls `FDPO_DIVERGENCES[divergence]` (`fdpo_reverse_kl_loss`,
    `fdpo_forward_kl_loss`, `fdpo_js_loss`, `fdpo_alpha_loss`; see those for the maths). No maths here.

    `divergence` in {"reverse_kl", "forward_kl", "js", "alpha"} (default "js"); `alpha` (default 0.5) is only
    accepted with divergence="alpha", so that a forgotten `divergence=alpha` is an error, not a silent JS run.
    """
    if divergence not in FDPO_DIVERGENCES:
        raise ValueError(f"unknown f-DPO divergence {divergence!r}; expected one of {sorted(FDPO_DIVERGENCES)}")
    tensors = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if divergence == "alpha":
        return fdpo_alpha_loss(*tensors, beta=beta, alpha=0.5 if alpha is None else alpha)
    if alpha is not None:
        raise ValueError(f"alpha applies only to divergence='alpha', not {divergence!r}")
    return FDPO_DIVERGENCES[divergence](*tensors, beta=beta)


@register("hdpo", kind="preference")
def hdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.95,
) -> LossOutput:
    """H-DPO, entropy-controllable DPO (Omura, Fujita & Kataoka 2024, "Entropy Controllable Direct Preference
    Optimization", arXiv:2411.07595, the H-DPO loss): the reverse KL regulariser
    KL = H(pi, pi_ref) - H(pi) is replaced by H(pi, pi_ref) - alpha H(pi), whose optimum is
    pi* ~ (pi_ref exp(r / beta))^(1/alpha); reparametrising r through it gives

        L_H-DPO = -log sigma( beta [alpha log pi(y_w|x) - log pi_ref(y_w|x)]
                              - beta [alpha log pi(y_l|x) - log pi_ref(y_l|x)] ).

    alpha < 1 sharpens the policy (lower entropy), alpha > 1 flattens it, alpha = 1 is DPO. Default 0.95.

    Shapes: all inputs `(B,)` summed over tokens; returns `(B,)`.
    Implicit rewards: beta (alpha log pi(y|x) - log pi_ref(y|x)). Deviations: none.
    """
    _check_positive("alpha", alpha)
    check_pair_tensors(
        policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
    )
    chosen_reward = beta * (alpha * policy_chosen_logps.float() - ref_chosen_logps.float())
    rejected_reward = beta * (alpha * policy_rejected_logps.float() - ref_rejected_logps.float())
    loss = F.softplus(-(chosen_reward - rejected_reward))
    return LossOutput(loss, pair_metrics(chosen_reward, rejected_reward))


@register("mmpo", kind="preference")
def mmpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    *,
    beta: float = 0.1,
    gamma: float = 1.0,
) -> LossOutput:
    """Margin Matching Preference Optimization (Kim et al. 2024, "Margin Matching Preference Optimization:
    Enhanced Model Alignment with Granular Feedback", EMNLP Findings 2024): a Bradley-Terry soft target from the
    quality margin, p = sigma(gamma (s_w - s_l)), and the cross-entropy of DPO's preference probability against it,

        L_MMPO = -[ p log sigma(beta (h_w - h_l)) + (1 - p) log sigma(-beta (h_w - h_l)) ].

    The target is a constant (no gradient flows into the scores). gamma = 0 gives p = 1/2 for every pair; a
    large gamma approaches DPO's hard labels. The loss is minimal at sigma(beta (h_w - h_l)) = p, so past the
    target the gradient lowers the margin.

    Shapes: all inputs `(B,)` (log-probs summed over tokens; scores any real scale); returns `(B,)`.
    Implicit rewards: beta * h_w, beta * h_l. Extra metric: `target_prob` (mean p). Deviations: none.
    """
    _check_non_negative("gamma", gamma)
    check_pair_tensors(
        policy_chosen_logps=policy_chosen_logps, chosen_scores=chosen_scores, rejected_scores=rejected_scores
    )
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    target = torch.sigmoid(gamma * (chosen_scores.float() - rejected_scores.float())).detach()
    logits = beta * (chosen_ratio - rejected_ratio)
    loss = target * F.softplus(-logits) + (1.0 - target) * F.softplus(logits)
    metrics = pair_metrics(beta * chosen_ratio, beta * rejected_ratio)
    metrics["target_prob"] = target.mean()
    return LossOutput(loss, metrics)


@register("discopop", kind="preference")
def discopop_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.05,
    tau: float = 0.05,
) -> LossOutput:
    """DiscoPOP, the log-ratio modulated loss LRML (Lu et al. 2024, "Discovering Preference Optimization
    Algorithms with and for Large Language Models", eq. 5; appendix eq. 27-28): with rho = h_w - h_l,

        f_lrml(beta rho) = (1 - sigma(beta rho / tau)) * f_dpo(beta rho) + sigma(beta rho / tau) * f_exp(beta rho)

    where f_dpo(x) = -log sigma(x) (logistic) and f_exp(x) = exp(-x) (exponential); tau = 0.05 and the
    paper's beta = 0.05. The weighted exponential term is computed as exp(logsigmoid(x / tau) - x), with the
    exponent clamped to MAX_EXPONENT (never reached for tau < 1), so 0 * inf cannot occur.

    The loss is not monotone in the margin: near x = 0 the switch from the logistic to the exponential branch
    makes d f / d x = (1 - log 2) / (4 tau) - 3/4 > 0 (= +0.784 at tau = 0.05), so there the gradient lowers
    the margin; the paper discusses this non-convex region. At tau = 0.05 the region is about
    -0.118 < x < 0.072; outside it the usual sign holds.

    Shapes: all inputs `(B,)` summed over tokens; returns `(B,)`. Implicit rewards: beta * h_w, beta * h_l.
    Extra metric: `exp_weight` (mean sigma(x / tau), the share of the exponential branch). Deviations: none.
    """
    _check_positive("tau", tau)
    chosen_ratio, rejected_ratio = _log_ratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logits = beta * (chosen_ratio - rejected_ratio)
    logistic = torch.sigmoid(-logits / tau) * F.softplus(-logits)
    exponential = torch.exp((F.logsigmoid(logits / tau) - logits).clamp(max=MAX_EXPONENT))
    loss = logistic + exponential
    metrics = pair_metrics(beta * chosen_ratio, beta * rejected_ratio)
    metrics["exp_weight"] = torch.sigmoid(logits.detach() / tau).mean()
    return LossOutput(loss, metrics)
