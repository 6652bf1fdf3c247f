"""Policy-gradient losses (rlxf.objectives.policy_gradient): hand values, clipping, limits, extremes."""

import functools
import math

import pytest
import torch

from rlxf.objectives import LossOutput, grpo_loss, ppo_clip_loss, reinforce_loss, rloo_loss
from rlxf.ops import AGGREGATION_MODES, aggregate


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), rtol=rtol, atol=atol
    )


def _ratio_case(ratios, advantages):
    """One row of tokens with old log-prob log(0.5) and policy log-prob log(0.5 * ratio)."""
    old = torch.full((1, len(ratios)), math.log(0.5))
    policy = (old + torch.log(torch.tensor([ratios]))).requires_grad_()
    return policy, old, torch.tensor([advantages]), torch.ones(1, len(ratios), dtype=torch.bool)


def _grad(loss_output, policy):
    (grad,) = torch.autograd.grad(loss_output.loss.sum(), policy, retain_graph=True)
    return grad


def _random(seed, batch=6, length=5):
    g = torch.Generator().manual_seed(seed)
    policy = (torch.randn(batch, length, generator=g) - 2.0).requires_grad_()
    old = policy.detach() + 0.3 * torch.randn(batch, length, generator=g)
    ref = policy.detach() + 0.3 * torch.randn(batch, length, generator=g)
    adv = torch.randn(batch, generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return policy, old, ref, adv, mask


def test_reinforce_by_hand():
    """loss_t = -A log pi: A = 2 and log-probs (-1, -2) give (2, 4); d loss / d log pi = -A = -2.
    The masked token (log pi = -inf, padding) contributes 0 and gets gradient 0."""
    policy = torch.tensor([[-1.0, -2.0, float("-inf")]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    out = reinforce_loss(policy, torch.tensor([2.0]), mask)
    assert isinstance(out, LossOutput)
    _close(out.loss, [[2.0, 4.0, 0.0]])
    _close(_grad(out, policy), [[-2.0, -2.0, 0.0]])
    _close(out.metrics["logp_mean"], -1.5)
    _close(out.metrics["advantage_mean"], 2.0)


def test_ppo_clip_by_hand():
    """eps = 0.2. r = 1.2, A = 1: min(1.2, 1.2) = 1.2. r = 1.5, A = 1: min(1.5, 1.2) = 1.2 (clipped).
    r = 0.5, A = 1: min(0.5, 0.8) = 0.5. r = 1.5, A = -1: min(-1.5, -1.2) = -1.5.
    r = 0.5, A = -1: min(-0.5, -0.8) = -0.8 (clipped). loss = -objective; d loss / d log pi = -r A where the
    unclipped term is active, else 0. clip_frac = 2/5, ratio_mean = 5.2/5, ratio_max = 1.5,
    approx_kl = mean of r - 1 - log r."""
    ratios = [1.2, 1.5, 0.5, 1.5, 0.5]
    policy, old, adv, mask = _ratio_case(ratios, [1.0, 1.0, 1.0, -1.0, -1.0])
    out = ppo_clip_loss(policy, old, adv, mask, clip_eps=0.2)
    _close(out.loss, [[-1.2, -1.2, -0.5, 1.5, 0.8]])
    _close(_grad(out, policy), [[-1.2, 0.0, -0.5, 1.5, 0.0]])
    _close(out.metrics["clip_frac"], 0.4)
    _close(out.metrics["ratio_mean"], sum(ratios) / 5)
    _close(out.metrics["ratio_max"], 1.5)
    _close(out.metrics["approx_kl"], sum(r - 1 - math.log(r) for r in ratios) / 5)
    assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values())


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_clip_boundaries(advantage):
    """Just inside [1 - eps, 1 + eps] the gradient is -r A; just outside on the side the clip guards
    (r > 1 + eps for A > 0, r < 1 - eps for A < 0) it is 0; outside on the other side it is -r A again."""
    d = 1e-3
    if advantage > 0:
        ratios, zeroed = [1.2 - d, 1.2 + d, 0.8 - d], [False, True, False]
    else:
        ratios, zeroed = [0.8 + d, 0.8 - d, 1.2 + d], [False, True, False]
    policy, old, adv, mask = _ratio_case(ratios, [advantage] * 3)
    out = ppo_clip_loss(policy, old, adv, mask, clip_eps=0.2)
    expected = [0.0 if z else -r * advantage for r, z in zip(ratios, zeroed, strict=True)]
    _close(_grad(out, policy), [expected])
    _close(out.metrics["clip_frac"], 1 / 3)


def test_asymmetric_clip_higher():
    """clip_eps = 0.2, clip_eps_high = 0.28: r = 1.25 with A = 1 is no longer clipped (grad -1.25), r = 1.3 is
    (objective 1.28); the low side still clips at 0.8."""
    policy, old, adv, mask = _ratio_case([1.25, 1.3, 0.7], [1.0, 1.0, -1.0])
    out = ppo_clip_loss(policy, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28)
    _close(out.loss, [[-1.25, -1.28, 0.8]])
    _close(_grad(out, policy), [[-1.25, 0.0, 0.0]])


def test_dual_clip_by_hand():
    """Dual clip c = 3 (Ye et al. 2020), A = -1: r = 4 gives max(min(-4, -1.2), -3) = -3, loss 3, grad 0;
    r = 2 gives max(-2, -3) = -2 (unchanged, grad -r A = 2); A = +1, r = 4 is untouched (clipped at 1.2)."""
    policy, old, adv, mask = _ratio_case([4.0, 2.0, 4.0], [-1.0, -1.0, 1.0])
    out = ppo_clip_loss(policy, old, adv, mask, clip_eps=0.2, dual_clip=3.0)
    _close(out.loss, [[3.0, 2.0, -1.2]])
    _close(_grad(out, policy), [[0.0, 2.0, 0.0]])
    _close(out.metrics["dual_clip_frac"], 1 / 3)
    plain = ppo_clip_loss(policy, old, adv, mask, clip_eps=0.2)
    _close(plain.loss, [[4.0, 2.0, -1.2]])
    assert "dual_clip_frac" not in plain.metrics


def test_grpo_kl_term_by_hand():
    """On-policy (r = 1) with A = 0 only the KL term is left: pi = 1/2, ref = 1/4, so
    D_KL = ref/pi - log(ref/pi) - 1 = 1/2 + ln 2 - 1 and loss = beta D_KL; d D_KL / d log pi =
    -ref/pi + 1 = 1/2, so the gradient is beta / 2."""
    policy = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    out = grpo_loss(policy, policy.detach(), torch.tensor([0.0]), mask, ref_logps=ref, beta=0.04)
    kl = 0.5 + math.log(2.0) - 1.0
    _close(out.loss, [[0.04 * kl]])
    _close(_grad(out, policy), [[0.02]])
    _close(out.metrics["kl"], kl)


def test_grpo_with_beta_zero_equals_ppo_clip():
    policy, old, ref, adv, mask = _random(1)
    ppo = ppo_clip_loss(policy, old, adv, mask, clip_eps=0.2, clip_eps_high=0.3)
    for ref_logps in (None, ref):
        grpo = grpo_loss(
            policy, old, adv, mask, ref_logps=ref_logps, clip_eps=0.2, clip_eps_high=0.3, beta=0.0
        )
        _close(grpo.loss, ppo.loss)
        _close(_grad(grpo, policy), _grad(ppo, policy))
        for name, value in ppo.metrics.items():
            _close(grpo.metrics[name], value)
    assert "kl" in grpo.metrics


def test_rloo_on_policy_gradient_equals_reinforce():
    """On-policy the ratio is 1 in value and grad ratio = grad log pi, so -ratio A and -A log pi have the
    same gradient (and the same aggregated gradient in every mode)."""
    policy, _, _, adv, mask = _random(2)
    rloo = rloo_loss(policy, policy.detach(), adv, mask)
    reinforce = reinforce_loss(policy, adv, mask)
    _close(rloo.metrics["ratio_mean"], 1.0)
    _close(rloo.loss, torch.where(mask, -adv[:, None].expand_as(mask), 0.0))
    _close(_grad(rloo, policy), _grad(reinforce, policy))
    for mode in AGGREGATION_MODES:
        g1 = torch.autograd.grad(aggregate(rloo.loss, mask, mode, constant=30.0), policy, retain_graph=True)[
            0
        ]
        g2 = torch.autograd.grad(
            aggregate(reinforce.loss, mask, mode, constant=30.0), policy, retain_graph=True
        )[0]
        _close(g1, g2)


def test_rloo_clip_matches_symmetric_ppo():
    policy, old, _, adv, mask = _random(3)
    rloo = rloo_loss(policy, old, adv, mask, clip_eps=0.1)
    ppo = ppo_clip_loss(policy, old, adv, mask, clip_eps=0.1)
    _close(rloo.loss, ppo.loss)
    _close(rloo.metrics["clip_frac"], ppo.metrics["clip_frac"])
    assert rloo_loss(policy, old, adv, mask).metrics["clip_frac"] == 0.0


def _all_losses(policy, old, ref, adv, mask):
    return {
        "reinforce": reinforce_loss(policy, adv, mask),
        "ppo_clip": ppo_clip_loss(policy, old, adv, mask),
        "ppo_dual": ppo_clip_loss(policy, old, adv, mask, dual_clip=3.0),
        "grpo": grpo_loss(policy, old, adv, mask, ref_logps=ref),
        "rloo": rloo_loss(policy, old, adv, mask),
        "rloo_clip": rloo_loss(policy, old, adv, mask, clip_eps=0.2),
    }


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradient_sign(sign):
    """On-policy, raising the log-prob of a token with positive advantage lowers every loss (and raising
    one with negative advantage raises it): d loss / d log pi has the sign of -A. beta = 0 for GRPO so that
    the KL term, zero on-policy against pi itself, does not mix in."""
    policy = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv, mask = torch.tensor([sign]), torch.ones(1, 2, dtype=torch.bool)
    old = ref = policy.detach()
    for name, out in _all_losses(policy, old, ref, adv, mask).items():
        grad = _grad(out, policy)
        assert (torch.sign(grad) == -sign).all(), name


def test_extreme_inputs_give_finite_loss_and_grad():
    """Log-ratios of +-100, a fully masked row full of NaN/-inf garbage, and an empty row: every loss and
    every aggregation stays finite, with finite gradients that are 0 on masked tokens."""
    policy = torch.tensor(
        [[-100.0, 0.0, -1.0], [float("nan"), float("-inf"), 0.0], [-1.0, -1.0, -1.0]], requires_grad=True
    )
    old = torch.tensor([[0.0, -100.0, -1.0], [float("-inf"), float("nan"), 5.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[0.0, -100.0, 100.0], [float("nan"), 0.0, 0.0], [-1.0, -1.0, -1.0]])
    adv = torch.tensor([[1.0, -1.0, 1.0], [float("nan"), float("inf"), 1.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True], [False, False, False], [False, False, False]])
    for name, out in _all_losses(policy, old, ref, adv, mask).items():
        assert torch.isfinite(out.loss).all(), name
        assert all(torch.isfinite(v) for v in out.metrics.values()), name
        for mode in AGGREGATION_MODES:
            total = aggregate(out.loss, mask, mode, constant=9.0)
            (grad,) = torch.autograd.grad(total, policy, retain_graph=True)
            assert torch.isfinite(total) and torch.isfinite(grad).all(), (name, mode)
            assert (grad[1:] == 0).all(), (name, mode)
    empty = torch.zeros(2, 3, dtype=torch.bool)
    for name, out in _all_losses(policy[1:], old[1:], ref[1:], adv[1:], empty).items():
        assert torch.isfinite(out.loss).all() and all(torch.isfinite(v) for v in out.metrics.values()), name


def test_shape_and_argument_checks():
    policy, old, ref, adv, mask = _random(4)
    with pytest.raises(ValueError, match="advantages"):
        ppo_clip_loss(policy, old, adv[:-1], mask)
    with pytest.raises(ValueError, match="old_logps"):
        ppo_clip_loss(policy, old[:, :-1], adv, mask)
    with pytest.raises(ValueError, match="bool"):
        reinforce_loss(policy, adv, mask.float())
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        reinforce_loss(policy[0], adv, mask[0])
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(policy, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(policy, old, adv, mask, ref_logps=ref, beta=-1.0)
    with pytest.raises(ValueError, match="clip_eps"):
        ppo_clip_loss(policy, old, adv, mask, clip_eps=1.5)
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clip_loss(policy, old, adv, mask, dual_clip=0.5)
    with pytest.raises(TypeError):
        ppo_clip_loss(policy, old, adv, mask, 0.2)  # hyperparameters are keyword-only


# ------------------------------------------------------------ truncated importance sampling (sampler vs trainer)


def _tis_case():
    """PPO ratios r = (1.1, 1.5, 1.1) with A = (1, 1, -1), and a sampler whose log-probs make
    pi_old / mu = (0.5, 4, 1)."""
    policy, old, adv, mask = _ratio_case([1.1, 1.5, 1.1], [1.0, 1.0, -1.0])
    sampler = old - torch.log(torch.tensor([[0.5, 4.0, 1.0]]))
    return policy, old, sampler, adv, mask


def test_ppo_clip_tis_by_hand():
    """eps = 0.2. PPO alone: r = 1.1, A = 1 -> loss -1.1, grad -1.1; r = 1.5, A = 1 -> clipped, loss -1.2, grad 0;
    r = 1.1, A = -1 -> min(-1.1, -1.1) = -1.1, loss 1.1, grad 1.1. TIS with C = 2: w = min(pi_old / mu, 2) =
    (0.5, 2, 1) multiplies loss and gradient: loss (-0.55, -2.4, 1.1), grad (-0.55, 0, 1.1). Metrics:
    tis_weight_mean = 3.5 / 3, tis_truncated_frac = 1/3, the k3 estimate of KL(mu || pi_old) = mean of
    rho - 1 - log rho over rho = pi_old / mu, |log pi_old - log mu| averages (ln 2 + ln 4) / 3 = ln 2."""
    policy, old, sampler, adv, mask = _tis_case()
    out = ppo_clip_loss(policy, old, adv, mask, sampler_logps=sampler, clip_eps=0.2, tis_cap=2.0)
    _close(out.loss, [[-0.55, -2.4, 1.1]])
    _close(_grad(out, policy), [[-0.55, 0.0, 1.1]])
    _close(out.metrics["tis_weight_mean"], 3.5 / 3)
    _close(out.metrics["tis_truncated_frac"], 1 / 3)
    _close(out.metrics["sampler_trainer_kl"], sum(r - 1 - math.log(r) for r in (0.5, 4.0, 1.0)) / 3)
    _close(out.metrics["sampler_trainer_logp_absdiff"], math.log(2.0))
    _close(out.metrics["clip_frac"], 1 / 3)  # the PPO metrics are those of the unweighted surrogate
    assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values())


def test_tis_cap_none_is_bitwise_unchanged():
    """Without tis_cap the loss is bitwise the one of the original call; sampler_logps only adds the two mismatch
    metrics (no TIS metrics)."""
    policy, old, ref, adv, mask = _random(5)
    sampler = old + 0.2
    for loss, kwargs in ((ppo_clip_loss, {"dual_clip": 3.0}), (grpo_loss, {"ref_logps": ref})):
        plain = loss(policy, old, adv, mask, **kwargs)
        logged = loss(policy, old, adv, mask, sampler_logps=sampler, **kwargs)
        assert torch.equal(plain.loss, logged.loss)
        assert torch.equal(_grad(plain, policy), _grad(logged, policy))
        assert set(logged.metrics) == set(plain.metrics) | {"sampler_trainer_kl", "sampler_trainer_logp_absdiff"}


def test_grpo_forwards_tis_to_the_clipped_term_only():
    """grpo_loss = ppo_clip_loss (with the TIS weights) + beta * D_KL: the weights do not touch the KL term."""
    policy, old, ref, adv, mask = _random(6)
    sampler = old + 0.5 * torch.randn(old.shape, generator=torch.Generator().manual_seed(0))
    grpo = grpo_loss(policy, old, adv, mask, ref_logps=ref, sampler_logps=sampler, beta=0.1, tis_cap=1.5)
    ppo = ppo_clip_loss(policy, old, adv, mask, sampler_logps=sampler, tis_cap=1.5)
    kl = torch.where(mask, torch.expm1(ref - policy.detach()) - (ref - policy.detach()), 0.0)
    _close(grpo.loss, ppo.loss + 0.1 * kl)
    for name in ("tis_weight_mean", "tis_truncated_frac", "sampler_trainer_kl", "sampler_trainer_logp_absdiff"):
        _close(grpo.metrics[name], ppo.metrics[name])
    assert float(ppo.metrics["tis_truncated_frac"]) > 0  # the cap binds somewhere


def test_tis_extreme_inputs_and_checks():
    """Old-vs-sampler log-ratios of +-100 and a fully masked row of NaN/-inf in every input: finite loss and
    gradient, 0 on masked tokens; tis_cap without sampler_logps, or a bad cap, is refused."""
    NAN_, NEG_INF_ = float("nan"), float("-inf")
    policy = torch.tensor([[-1.0, -2.0, -1.0], [NAN_, NEG_INF_, 0.0]], requires_grad=True)
    old = torch.tensor([[0.0, -100.0, -1.0], [NEG_INF_, NAN_, 5.0]])
    sampler = torch.tensor([[-100.0, 0.0, -1.0], [NAN_, NEG_INF_, NAN_]])
    adv = torch.tensor([1.0, NAN_])
    mask = torch.tensor([[True, True, True], [False, False, False]])
    for loss in (ppo_clip_loss, functools.partial(grpo_loss, ref_logps=old)):
        out = loss(policy, old, adv, mask, sampler_logps=sampler, tis_cap=2.0)
        assert torch.isfinite(out.loss).all() and all(torch.isfinite(v) for v in out.metrics.values())
        for mode in AGGREGATION_MODES:
            (grad,) = torch.autograd.grad(aggregate(out.loss, mask, mode, constant=6.0), policy, retain_graph=True)
            assert torch.isfinite(grad).all() and (grad[1] == 0).all(), mode
        with pytest.raises(ValueError, match="needs sampler_logps"):
            loss(policy, old, adv, mask, tis_cap=2.0)
        with pytest.raises(ValueError, match="cap"):
            loss(policy, old, adv, mask, sampler_logps=sampler, tis_cap=-1.0)
        with pytest.raises(ValueError, match="sampler_logps"):
            loss(policy, old, adv, mask, sampler_logps=sampler[:, :2])

