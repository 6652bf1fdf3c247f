"""GSPO and CISPO (rlxf.objectives.sequence_ratio): hand values and gradients, limits that reduce to other
losses, truncated importance sampling, extremes, argument checks."""

import math

import pytest
import torch

from rlxf.objectives import get_objective, grpo_loss, ppo_clip_loss, reinforce_loss
from rlxf.objectives.sequence_ratio import cispo_loss, gspo_loss
from rlxf.objectives.signature import loss_signature
from rlxf.ops import AGGREGATION_MODES, aggregate

NAN, NEG_INF = float("nan"), float("-inf")
LN = math.log


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), rtol=rtol, atol=atol
    )


def _grad(values, policy):
    (grad,) = torch.autograd.grad(values, policy, retain_graph=True)
    return grad


def _random(seed, batch=6, length=5):
    g = torch.Generator().manual_seed(seed)
    policy = (torch.randn(batch, length, generator=g) - 2.0).requires_grad_()
    old = policy.detach() + 0.3 * torch.randn(batch, length, generator=g)
    sampler = old + 0.3 * torch.randn(batch, length, generator=g)
    adv = torch.randn(batch, generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return policy, old, sampler, adv, mask


# ----------------------------------------------------------------------------------------------------- GSPO


def _gspo_case():
    """Old log-probs log(0.5); per-token log-ratios lr = log pi_theta - log pi_old chosen so that the sequence
    ratios s_i = exp(mean_t lr) are 1.1, 1.5 and 0.9; a fourth row has no token. Masked positions hold garbage."""
    lr = [
        [LN(1.1) + 0.3, LN(1.1) - 0.3, 0.0, 0.0],
        [LN(1.5) + 0.1, LN(1.5) - 0.2, LN(1.5) + 0.1, 0.0],
        [LN(0.9), 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ]
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    old = torch.where(mask, torch.full((4, 4), LN(0.5)), NEG_INF)
    policy = torch.where(mask, old + torch.tensor(lr), NAN).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -2.0, NAN])
    return lr, policy, old, adv, mask


def test_gspo_by_hand():
    """eps_low = eps_high = 0.2. Row 0: s = 1.1, A = 1: min(1.1, 1.1) = 1.1, loss -1.1 at both tokens.
    Row 1: s = 1.5, A = 1: min(1.5, 1.2) = 1.2 (clipped), loss -1.2 at its three tokens, gradient 0.
    Row 2: s = 0.9, A = -2: min(-1.8, -1.8) = -1.8, loss 1.8. Row 3 (no token, A = NaN): 0.
    ds_i / d log pi_theta(y_{i,t}) = s_i / |y_i|, so d(-s_i A_i) / d log pi_t = -A_i s_i / |y_i|: summed over
    the |y_i| tokens that each hold the sequence loss, d(loss.sum()) / d log pi_t = -A_i s_i = -1.1 (row 0), 0
    (row 1), 1.8 (row 2). seq_mean_token_mean over the 3 non-empty rows gives (-1.1 - 1.2 + 1.8) / 3 with gradient
    -A_i s_i / (3 |y_i|). clip_frac = 3 clipped tokens / 6; ratio_mean = (1.1 + 1.5 + 0.9) / 3, ratio_max = 1.5;
    approx_kl = token mean of r - 1 - log r with r = exp(lr)."""
    lr, policy, old, adv, mask = _gspo_case()
    out = gspo_loss(policy, old, adv, mask, clip_eps=0.2, clip_eps_high=0.2)
    _close(out.loss, [[-1.1, -1.1, 0, 0], [-1.2, -1.2, -1.2, 0], [1.8, 0, 0, 0], [0, 0, 0, 0]])
    _close(_grad(out.loss.sum(), policy), [[-1.1, -1.1, 0, 0], [0, 0, 0, 0], [1.8, 0, 0, 0], [0, 0, 0, 0]])
    total = aggregate(out.loss, mask, "seq_mean_token_mean")
    _close(total, (-1.1 - 1.2 + 1.8) / 3)
    _close(_grad(total, policy), [[-1.1 / 6, -1.1 / 6, 0, 0], [0, 0, 0, 0], [1.8 / 3, 0, 0, 0], [0, 0, 0, 0]])
    _close(out.metrics["clip_frac"], 0.5)
    _close(out.metrics["ratio_mean"], (1.1 + 1.5 + 0.9) / 3)
    _close(out.metrics["ratio_max"], 1.5)
    tokens = [x for row, m in zip(lr, mask.tolist(), strict=True) for x, keep in zip(row, m, strict=True) if keep]
    _close(out.metrics["approx_kl"], sum(math.exp(x) - 1 - x for x in tokens) / 6)
    assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values())


def test_gspo_paper_defaults():
    """Defaults eps_low = 3e-4, eps_high = 4e-4 (GSPO sec. 5.1). A = 1: s = 1.00035 is inside the range (gradient
    -s), s = 1.0005 is clipped at 1.0004 (gradient 0); A = -1: s = 0.9996 is clipped at 0.9997 (gradient 0)."""
    s = [1.00035, 1.0005, 0.9996]
    old = torch.zeros(3, 1)
    policy = torch.log(torch.tensor(s)).unsqueeze(1).requires_grad_()
    out = gspo_loss(policy, old, torch.tensor([1.0, 1.0, -1.0]), torch.ones(3, 1, dtype=torch.bool))
    _close(out.loss, [[-1.00035], [-1.0004], [0.9997]], rtol=1e-6)
    _close(_grad(out.loss.sum(), policy), [[-1.00035], [0.0], [0.0]], rtol=1e-6)
    _close(out.metrics["clip_frac"], 2 / 3)
    sig = loss_signature(gspo_loss)
    assert sig.hyperparameters["clip_eps"][1] == 3e-4 and sig.hyperparameters["clip_eps_high"][1] == 4e-4


def test_gspo_with_one_log_ratio_per_sequence_is_ppo_clip():
    """When every token of a sequence has the same log-ratio, s_i = r_{i,t}, and GSPO's per-token loss is
    PPO-clip's; with one token per sequence the gradients agree too."""
    policy, old, _, adv, mask = _random(11)
    flat = old + (policy.detach() - old)[:, :1]  # every token of a row gets the row's first log-ratio
    flat_policy = flat.clone().requires_grad_()
    kwargs = {"clip_eps": 0.1, "clip_eps_high": 0.15}
    gspo = gspo_loss(flat_policy, old, adv, mask, **kwargs)
    ppo = ppo_clip_loss(flat_policy, old, adv, mask, **kwargs)
    _close(gspo.loss, ppo.loss)
    _close(gspo.metrics["clip_frac"], ppo.metrics["clip_frac"])
    one = mask[:, :1]
    _close(_grad(gspo_loss(policy[:, :1], old[:, :1], adv, one, **kwargs).loss.sum(), policy),
           _grad(ppo_clip_loss(policy[:, :1], old[:, :1], adv, one, **kwargs).loss.sum(), policy))


def test_gspo_on_policy_gradient_equals_grpo():
    """On-policy s_i = 1 and grad s_i = 1/|y_i| sum_t grad log pi_t, so the aggregated GSPO gradient equals
    GRPO's (beta = 0) under GRPO's seq_mean_token_mean: -A_i / (N |y_i|) per token."""
    policy, _, _, adv, mask = _random(12)
    old = policy.detach()
    gspo = gspo_loss(policy, old, adv, mask)
    grpo = grpo_loss(policy, old, adv, mask, beta=0.0)
    mode = "seq_mean_token_mean"
    _close(_grad(aggregate(gspo.loss, mask, mode), policy), _grad(aggregate(grpo.loss, mask, mode), policy))
    _close(gspo.metrics["ratio_mean"], 1.0)


def test_gspo_tis_by_hand():
    """Row 0 of the hand case (s = 1.1, A = 1, sequence loss -1.1) with TIS weights min(pi_old / mu, 2) =
    (0.5, 2) (pi_old / mu = 0.5 and 3): loss (-0.55, -2.2); every token's gradient is
    sum_u w_u (-A s / |y|) = 2.5 * (-0.55) = -1.375. Row 1 (clipped) stays 0-gradient. tis_weight_mean over the
    5 tokens of rows 0-1 with weights (0.5, 2, 1, 1, 1) is 5.5 / 5, one of them truncated."""
    _, policy, old, adv, mask = _gspo_case()
    policy, old, adv, mask = policy[:2], old[:2], adv[:2], mask[:2]
    sampler = old - torch.log(torch.tensor([[0.5, 3.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    out = gspo_loss(policy, old, adv, mask, sampler_logps=sampler, clip_eps=0.2, clip_eps_high=0.2, tis_cap=2.0)
    _close(out.loss, [[-0.55, -2.2, 0, 0], [-1.2, -1.2, -1.2, 0]])
    _close(_grad(out.loss.sum(), policy), [[-1.375, -1.375, 0, 0], [0, 0, 0, 0]])
    _close(out.metrics["tis_weight_mean"], 5.5 / 5)
    _close(out.metrics["tis_truncated_frac"], 1 / 5)
    plain = gspo_loss(policy, old, adv, mask, sampler_logps=sampler, clip_eps=0.2, clip_eps_high=0.2)
    _close(plain.loss, [[-1.1, -1.1, 0, 0], [-1.2, -1.2, -1.2, 0]])
    assert "sampler_trainer_kl" in plain.metrics and "tis_weight_mean" not in plain.metrics


def test_gspo_refuses_per_token_advantages():
    policy, old, _, adv, mask = _random(13)
    with pytest.raises(ValueError, match=r"one advantage per sequence.*GSPO-token"):
        gspo_loss(policy, old, adv[:, None].expand_as(mask), mask)
    with pytest.raises(ValueError, match="one advantage per sequence"):
        gspo_loss(policy, old, adv[:-1], mask)


# ---------------------------------------------------------------------------------------------------- CISPO


def _cispo_case():
    """One row, policy log-probs (-1, -2, -0.5, -3), ratios r = pi_theta / pi_old = (0.5, 1, 8, 2), per-token
    advantages (1, -1, 1, -1), and a masked fifth token holding garbage."""
    logps, ratios = [-1.0, -2.0, -0.5, -3.0], [0.5, 1.0, 8.0, 2.0]
    policy = torch.tensor([logps + [NAN]], requires_grad=True)
    old = torch.tensor([[lp - LN(r) for lp, r in zip(logps, ratios, strict=True)] + [NEG_INF]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, NAN]])
    mask = torch.tensor([[True, True, True, True, False]])
    return logps, ratios, policy, old, adv, mask


def test_cispo_by_hand():
    """eps_low = 0.2, eps_high = 0.5: IS weights clip(r, 0.8, 1.5) = (0.8, 1, 1.5, 1.5). loss_t = -w_t A_t log pi_t =
    (-0.8 * -1, -1 * 2, -1.5 * -0.5, -1.5 * 3) = (0.8, -2, 0.75, -4.5). The weight is a constant, so
    d loss_t / d log pi_t = -w_t A_t = (-0.8, 1, -1.5, 1.5): every token keeps a gradient, also the three whose
    weight was clipped (PPO-clip gives 0 where its clip binds, e.g. r = 8 with A = 1). Were the weight not
    detached, token 2 (r = 1) would get -A (r log pi + r) = -1 instead of 1. clip_frac = 3/4."""
    logps, ratios, policy, old, adv, mask = _cispo_case()
    out = cispo_loss(policy, old, adv, mask, clip_eps=0.2, clip_eps_high=0.5)
    _close(out.loss, [[0.8, -2.0, 0.75, -4.5, 0.0]])
    _close(_grad(out.loss.sum(), policy), [[-0.8, 1.0, -1.5, 1.5, 0.0]])
    _close(out.metrics["clip_frac"], 0.75)
    _close(out.metrics["ratio_mean"], sum(ratios) / 4)
    _close(out.metrics["ratio_max"], 8.0)
    _close(out.metrics["approx_kl"], sum(r - 1 - LN(r) for r in ratios) / 4)
    assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values())
    ppo = ppo_clip_loss(policy, old, adv, mask, clip_eps=0.2, clip_eps_high=0.5)
    assert float(_grad(ppo.loss.sum(), policy)[0, 2]) == 0.0  # PPO drops the r = 8, A = 1 token; CISPO does not


def test_cispo_defaults_no_lower_bound_cap_five():
    """Defaults: no lower bound and eps_high = 4 (weight capped at 1 + 4 = 5, ScaleRL's eps_max): weights
    (0.5, 1, 5, 2), gradient -w A = (-0.5, 1, -5, 2)."""
    _, _, policy, old, adv, mask = _cispo_case()
    out = cispo_loss(policy, old, adv, mask)
    _close(_grad(out.loss.sum(), policy), [[-0.5, 1.0, -5.0, 2.0, 0.0]])
    _close(out.metrics["clip_frac"], 0.25)
    one = cispo_loss(policy, old, adv, mask, clip_eps=1.0)  # a lower bound of 0 changes nothing
    _close(one.loss, out.loss)


def test_cispo_on_policy_is_reinforce():
    """On-policy every weight is 1, so loss_t = -A log pi_t: REINFORCE's loss and gradient, token for token."""
    policy, _, _, adv, mask = _random(14)
    cispo = cispo_loss(policy, policy.detach(), adv, mask)
    reinforce = reinforce_loss(policy, adv, mask)
    _close(cispo.loss, reinforce.loss)
    _close(_grad(cispo.loss.sum(), policy), _grad(reinforce.loss.sum(), policy))
    assert float(cispo.metrics["clip_frac"]) == 0.0


def test_cispo_tis_by_hand():
    """TIS weights min(pi_old / mu, 2) with pi_old / mu = (0.5, 1, 4, 1) are (0.5, 1, 2, 1); they multiply the
    hand-case loss (0.8, -2, 0.75, -4.5) -> (0.4, -2, 1.5, -4.5) and its gradient (-0.8, 1, -1.5, 1.5) ->
    (-0.4, 1, -3, 1.5)."""
    _, _, policy, old, adv, mask = _cispo_case()
    sampler = old - torch.log(torch.tensor([[0.5, 1.0, 4.0, 1.0, 1.0]]))
    out = cispo_loss(policy, old, adv, mask, sampler_logps=sampler, clip_eps=0.2, clip_eps_high=0.5, tis_cap=2.0)
    _close(out.loss, [[0.4, -2.0, 1.5, -4.5, 0.0]])
    _close(_grad(out.loss.sum(), policy), [[-0.4, 1.0, -3.0, 1.5, 0.0]])
    _close(out.metrics["tis_weight_mean"], 4.5 / 4)
    _close(out.metrics["tis_truncated_frac"], 0.25)


# ------------------------------------------------------------------------------------------------- both


def _both(policy, old, adv, mask, sampler=None, tis_cap=None):
    kw = {"sampler_logps": sampler, "tis_cap": tis_cap}
    return {"gspo": gspo_loss(policy, old, adv, mask, **kw), "cispo": cispo_loss(policy, old, adv, mask, **kw)}


@pytest.mark.parametrize("tis_cap", [None, 2.0])
def test_extreme_inputs_give_finite_loss_and_grad(tis_cap):
    """Log-ratios of +-100 (policy vs old and old vs sampler), a fully masked row full of NaN/-inf, and an empty
    batch: finite loss, metrics and gradients in every aggregation, gradient 0 on masked tokens."""
    policy = torch.tensor([[-100.0, 0.0, -1.0], [NAN, NEG_INF, 0.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[0.0, -100.0, -1.0], [NEG_INF, NAN, 5.0], [-1.0, -1.0, -1.0]])
    sampler = torch.tensor([[-100.0, 0.0, -1.0], [NAN, NEG_INF, 0.0], [NAN, -1.0, -1.0]])
    adv = torch.tensor([1.0, NAN, 1.0])
    mask = torch.tensor([[True, True, True], [False, False, False], [False, False, False]])
    for name, out in _both(policy, old, adv, mask, sampler, tis_cap).items():
        assert torch.isfinite(out.loss).all(), name
        assert all(torch.isfinite(v) for v in out.metrics.values()), name
        for mode in AGGREGATION_MODES:
            total = aggregate(out.loss, mask, mode, constant=9.0)
            grad = _grad(total, policy)
            assert torch.isfinite(total) and torch.isfinite(grad).all(), (name, mode)
            assert (grad[1:] == 0).all(), (name, mode)
    empty = torch.zeros(2, 3, dtype=torch.bool)
    for name, out in _both(policy[1:], old[1:], adv[1:], empty, sampler[1:], tis_cap).items():
        assert (out.loss == 0).all() and all(torch.isfinite(v) for v in out.metrics.values()), name


def test_tis_cap_none_leaves_the_loss_bitwise_unchanged():
    """sampler_logps without tis_cap only adds the mismatch metrics: the loss is bitwise the same."""
    policy, old, sampler, adv, mask = _random(15)
    for name, plain in _both(policy, old, adv, mask).items():
        logged = _both(policy, old, adv, mask, sampler)[name]
        assert torch.equal(plain.loss, logged.loss), name
        assert set(logged.metrics) == set(plain.metrics) | {"sampler_trainer_kl", "sampler_trainer_logp_absdiff"}


def test_registered_with_the_paper_normalisation():
    assert get_objective("gspo") is gspo_loss and gspo_loss.default_aggregation == "seq_mean_token_mean"
    assert get_objective("cispo") is cispo_loss and cispo_loss.default_aggregation == "token_mean"
    for fn in (gspo_loss, cispo_loss):
        sig = loss_signature(fn)
        assert sig.tensors == ("policy_logps", "old_logps", "advantages", "mask", "sampler_logps")
        assert sig.required == {"policy_logps", "old_logps", "advantages", "mask"}
        assert set(sig.hyperparameters) == {"clip_eps", "clip_eps_high", "tis_cap"}


def test_shape_and_argument_checks():
    policy, old, sampler, adv, mask = _random(16)
    for loss in (gspo_loss, cispo_loss):
        with pytest.raises(ValueError, match="tis_cap=2.0 needs sampler_logps"):
            loss(policy, old, adv, mask, tis_cap=2.0)
        with pytest.raises(ValueError, match="sampler_logps"):
            loss(policy, old, adv, mask, sampler_logps=sampler[:, :-1])
        with pytest.raises(ValueError, match="cap"):
            loss(policy, old, adv, mask, sampler_logps=sampler, tis_cap=0.0)
        with pytest.raises(ValueError, match="old_logps"):
            loss(policy, old[:, :-1], adv, mask)
        with pytest.raises(ValueError, match="bool"):
            loss(policy, old, adv, mask.float())
        with pytest.raises(ValueError, match="clip_eps_high"):
            loss(policy, old, adv, mask, clip_eps_high=-1.0)
        with pytest.raises(TypeError):
            loss(policy, old, adv, mask, None)  # everything after mask is keyword-only
    with pytest.raises(ValueError, match="clip_eps"):
        gspo_loss(policy, old, adv, mask, clip_eps=1.0)
    with pytest.raises(ValueError, match="clip_eps"):
        cispo_loss(policy, old, adv, mask, clip_eps=1.5)
    with pytest.raises(ValueError, match="advantages"):
        cispo_loss(policy, old, adv[:-1], mask)
