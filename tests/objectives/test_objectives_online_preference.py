"""Online preference losses (rlxf.objectives.online_preference): XPO, VPO, HyPO by hand, signs, the HyPO KL
gradient against the exact KL of a small categorical policy, extremes, hyperparameter domains.

Every hand-value test uses the 3-pair batch of tests/objectives/test_objectives_preference.py plus one reference
sample y~ and one policy sample y per pair (sequence log-probs summed over tokens):

    policy_chosen  = [-10.0, -22.5, -7.25]    ref_chosen   = [-11.0, -21.0, -8.0]
    policy_rejected = [-12.0, -20.0, -15.5]   ref_rejected = [-11.5, -19.5, -14.0]
    h_w = [1.0, -1.5, 0.75], h_l = [-0.5, -0.5, -1.5], D = h_w - h_l = [1.5, -1.0, 2.25]
    beta = 0.1: L_DPO = softplus(-beta D) = [0.62096, 0.74440, 0.58696]

    policy_ref_sample = [-9.0, -14.0, -6.5]   ref_ref_sample = [-8.0, -15.0, -6.5]   -> h(y~) = [-1.0, 1.0, 0.0]
    policy_sample     = [-4.0, -10.0, -3.0]   ref_sample     = [-5.5, -9.0, -3.0]    -> h(y)  = [1.5, -1.0, 0.0]

The expected values are the formulas evaluated per pair in plain Python floats (float64, `math`).
"""

import math

import pytest
import torch

from rlxf.config import ConfigError
from rlxf.objectives import LossOutput, dpo_loss, hypo_loss, list_objectives, vpo_loss, xpo_loss
from rlxf.objectives.signature import loss_signature, resolve_hyperparameters

PC, PR = [-10.0, -22.5, -7.25], [-12.0, -20.0, -15.5]
RC, RR = [-11.0, -21.0, -8.0], [-11.5, -19.5, -14.0]
PT, RT = [-9.0, -14.0, -6.5], [-8.0, -15.0, -6.5]
PS, RS = [-4.0, -10.0, -3.0], [-5.5, -9.0, -3.0]
VALUES = {
    "policy_chosen_logps": PC, "policy_rejected_logps": PR, "ref_chosen_logps": RC, "ref_rejected_logps": RR,
    "policy_ref_sample_logps": PT, "ref_ref_sample_logps": RT, "policy_sample_logps": PS, "ref_sample_logps": RS,
}
HW = [a - b for a, b in zip(PC, RC, strict=True)]
HL = [a - b for a, b in zip(PR, RR, strict=True)]
MARGIN = [a - b for a, b in zip(HW, HL, strict=True)]
H_REF_SAMPLE = [a - b for a, b in zip(PT, RT, strict=True)]
H_SAMPLE = [a - b for a, b in zip(PS, RS, strict=True)]
LOSSES = {"xpo": xpo_loss, "vpo": vpo_loss, "hypo": hypo_loss}
EXTRA_METRICS = {"xpo": {"dpo_loss", "ref_sample_logp"}, "vpo": {"dpo_loss", "value"}, "hypo": {"dpo_loss", "kl"}}
PAIR_KEYS = {"chosen_reward", "rejected_reward", "reward_margin", "reward_accuracy"}


def _sp(z):
    """softplus(z) = log(1 + e^z), in float64."""
    return math.log1p(math.exp(z)) if z < 30 else z + math.log1p(math.exp(-z))


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def _batch(fn, values=None, dtype=torch.float32):
    """The tensors `fn` declares, from `values` (default: the module's batch); policy log-probs are leaves."""
    values = values or VALUES
    out = {}
    for name in loss_signature(fn).tensors:
        tensor = torch.tensor(values[name], dtype=dtype)
        out[name] = tensor.requires_grad_() if name.startswith("policy_") else tensor
    return out


def _grads(out, tensors):
    names = [n for n in tensors if n.startswith("policy_")]
    return dict(zip(names, torch.autograd.grad(out.loss.sum(), [tensors[n] for n in names]), strict=True))


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected, dtype=torch.float64), rtol=rtol, atol=atol
    )


def _check_dpo_part(out, grads, beta=0.1):
    """Pair metrics, the mean DPO term and the pair gradients are DPO's: d L / d policy_chosen = -beta sigma(-x)."""
    dpo = [_sp(-beta * d) for d in MARGIN]
    _close(out.metrics["dpo_loss"], sum(dpo) / 3)
    _close(out.metrics["chosen_reward"], sum(beta * h for h in HW) / 3)
    _close(out.metrics["rejected_reward"], sum(beta * h for h in HL) / 3)
    _close(out.metrics["reward_margin"], sum(beta * d for d in MARGIN) / 3)
    _close(out.metrics["reward_accuracy"], 2 / 3)
    _close(grads["policy_chosen_logps"], [-beta * _sig(-beta * d) for d in MARGIN])
    _close(grads["policy_rejected_logps"], [beta * _sig(-beta * d) for d in MARGIN])
    return dpo


# ---------------------------------------------------------------------------------------------- hand values


def test_xpo_by_hand():
    """beta = 0.1, alpha = 0.01: loss = L_DPO + alpha log pi(y~) = [0.62096 - 0.09, 0.74440 - 0.14, 0.58696 - 0.065]
    = [0.53096, 0.60440, 0.52196]. d loss / d log pi(y~) = +alpha = 0.01 > 0: gradient descent lowers the
    likelihood of the reference's samples (the exploration bonus). ref_sample_logp = mean(y~) = -29.5/3."""
    tensors = _batch(xpo_loss)
    assert set(tensors) == {"policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
                            "ref_rejected_logps", "policy_ref_sample_logps"}
    out = xpo_loss(**tensors, beta=0.1, alpha=0.01)
    assert isinstance(out, LossOutput) and out.loss.dtype == torch.float32 and out.loss.shape == (3,)
    grads = _grads(out, tensors)
    dpo = _check_dpo_part(out, grads)
    _close(out.loss, [d + 0.01 * t for d, t in zip(dpo, PT, strict=True)])
    _close(out.loss, [0.53096, 0.60440, 0.52196], rtol=1e-4)
    _close(out.metrics["ref_sample_logp"], sum(PT) / 3)
    _close(grads["policy_ref_sample_logps"], [0.01] * 3)


def test_vpo_by_hand_optimistic_and_pessimistic():
    """beta = 0.1, alpha = 0.5. Value J = -beta h(y~) = [0.1, -0.1, 0.0] (mean 0). Optimistic: loss = L_DPO -
    alpha J = L_DPO + 0.05 h(y~) = [0.57096, 0.79440, 0.58696], d loss / d log pi(y~) = +alpha beta = 0.05
    (lowers pi(y~) like XPO). Pessimistic: L_DPO - 0.05 h(y~) = [0.67096, 0.69440, 0.58696], gradient -0.05."""
    for optimistic, sign, expected in ((True, 1.0, [0.57096, 0.79440, 0.58696]),
                                       (False, -1.0, [0.67096, 0.69440, 0.58696])):
        tensors = _batch(vpo_loss)
        out = vpo_loss(**tensors, beta=0.1, alpha=0.5, optimistic=optimistic)
        assert out.loss.dtype == torch.float32 and out.loss.shape == (3,)
        grads = _grads(out, tensors)
        dpo = _check_dpo_part(out, grads)
        _close(out.loss, [d + sign * 0.5 * 0.1 * h for d, h in zip(dpo, H_REF_SAMPLE, strict=True)])
        _close(out.loss, expected, rtol=1e-4)
        _close(out.metrics["value"], sum(-0.1 * h for h in H_REF_SAMPLE) / 3)
        _close(grads["policy_ref_sample_logps"], [sign * 0.05] * 3)


def test_hypo_by_hand():
    """beta = 0.1, lam = 0.2: the KL term's value is k1 = h(y) = [1.5, -1.0, 0.0], so loss = L_DPO + 0.2 h(y)
    = [0.92096, 0.54440, 0.58696]; its gradient is the score function lam * sg(h(y)) * d log pi(y) = [0.3, -0.2,
    0.0] (no pathwise term: d h / d log pi = 1 would add lam per row). kl = mean h(y) = 0.5 / 3."""
    tensors = _batch(hypo_loss)
    out = hypo_loss(**tensors, beta=0.1, lam=0.2)
    assert out.loss.dtype == torch.float32 and out.loss.shape == (3,)
    grads = _grads(out, tensors)
    dpo = _check_dpo_part(out, grads)
    _close(out.loss, [d + 0.2 * h for d, h in zip(dpo, H_SAMPLE, strict=True)])
    _close(out.loss, [0.92096, 0.54440, 0.58696], rtol=1e-4)
    _close(out.metrics["kl"], sum(H_SAMPLE) / 3)
    _close(grads["policy_sample_logps"], [0.2 * h for h in H_SAMPLE])


def test_hypo_kl_gradient_is_the_exact_kl_gradient_of_a_categorical_policy():
    """pi_theta = softmax(theta) over 4 completions, pi_ref = softmax(phi). Enumerating every y with weight pi(y)
    (detached: the sampling distribution, not part of the loss) gives the expected value and gradient of the
    estimator exactly: sum_y pi(y) (loss_y - L_DPO) = lam KL(pi || pi_ref) and its theta-gradient is
    lam d KL / d theta_j = lam pi_j (log pi_j / pi_ref_j - KL). The pair's log-probs are constants here."""
    theta = torch.tensor([0.3, -0.2, 1.0, 0.1], dtype=torch.float64, requires_grad=True)
    log_ref = torch.log_softmax(torch.tensor([0.0, 0.5, -0.5, 0.2], dtype=torch.float64), dim=0)
    log_pi = torch.log_softmax(theta, dim=0)
    pair = {k: torch.zeros(4, dtype=torch.float64) for k in
            ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")}
    lam = 0.3
    out = hypo_loss(**pair, policy_sample_logps=log_pi, ref_sample_logps=log_ref, beta=0.1, lam=lam)
    pi = log_pi.exp().detach()
    expected_loss = (pi * (out.loss - math.log(2.0))).sum()  # L_DPO = softplus(0) = log 2 on every row
    (grad,) = torch.autograd.grad(expected_loss, theta)

    p, q = log_pi.exp().detach(), log_ref.exp()
    kl = float((p * (p.log() - q.log())).sum())
    _close(expected_loss.detach(), lam * kl)
    _close(grad, lam * p * (p.log() - q.log() - kl))
    # The same through autograd on the exact KL, as an independent check of the formula above.
    log_pi = torch.log_softmax(theta, dim=0)
    (exact,) = torch.autograd.grad(lam * (log_pi.exp() * (log_pi - log_ref)).sum(), theta)
    _close(grad, exact)


# --------------------------------------------------------------------------------------------- relations


def test_zero_weight_is_dpo_and_optimistic_vpo_has_xpos_gradient():
    """alpha = 0 / lam = 0 give DPO's loss; optimistic VPO's gradient equals XPO's with alpha_XPO = alpha beta
    (their losses differ by the constant alpha beta log pi_ref(y~))."""
    dpo = dpo_loss(*(torch.tensor(VALUES[k]) for k in
                     ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")))
    for fn, zero in ((xpo_loss, {"alpha": 0.0}), (vpo_loss, {"alpha": 0.0}), (hypo_loss, {"lam": 0.0})):
        _close(fn(**_batch(fn), beta=0.1, **zero).loss.detach(), dpo.loss)
    x_tensors, v_tensors = _batch(xpo_loss), _batch(vpo_loss)
    x, v = xpo_loss(**x_tensors, beta=0.2, alpha=0.5 * 0.2), vpo_loss(**v_tensors, beta=0.2, alpha=0.5)
    x_grads, v_grads = _grads(x, x_tensors), _grads(v, v_tensors)
    for name in x_grads:
        _close(v_grads[name], x_grads[name])
    _close(v.loss - x.loss, [0.5 * 0.2 * -r for r in RT])


def test_registered_as_online_preference_with_their_tensors():
    assert {"xpo", "vpo", "hypo"} <= set(list_objectives(kind="online_preference"))
    for name, fn in LOSSES.items():
        assert fn.kind == "online_preference" and fn.registered_name == name and fn.recipe == name
    assert loss_signature(xpo_loss).tensors[-1] == "policy_ref_sample_logps"
    assert loss_signature(vpo_loss).tensors[-2:] == ("policy_ref_sample_logps", "ref_ref_sample_logps")
    assert loss_signature(hypo_loss).tensors[-2:] == ("policy_sample_logps", "ref_sample_logps")
    assert set(loss_signature(vpo_loss).hyperparameters) == {"beta", "alpha", "optimistic"}
    assert set(loss_signature(hypo_loss).hyperparameters) == {"beta", "lam"}


# ---------------------------------------------------------------------------------------------- extremes


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_margins_of_100_give_finite_loss_and_gradients(name):
    """Pair margins of +-100 (and sample log-ratios of +-100) in float32 and bfloat16 inputs: finite loss and
    gradients, metrics present and detached."""
    fn = LOSSES[name]
    values = dict(VALUES)
    values.update(policy_chosen_logps=[100.0, -100.0, 0.0], ref_chosen_logps=[0.0, 0.0, 0.0],
                  policy_rejected_logps=[-100.0, 100.0, 0.0], ref_rejected_logps=[0.0, 0.0, 0.0],
                  policy_ref_sample_logps=[-100.0, 0.0, -300.0], ref_ref_sample_logps=[0.0, -100.0, -1.0],
                  policy_sample_logps=[-100.0, -1.0, -300.0], ref_sample_logps=[0.0, -101.0, -1.0])
    for dtype in (torch.float32, torch.bfloat16):
        tensors = _batch(fn, values, dtype=dtype)
        out = fn(**tensors)
        assert out.loss.dtype == torch.float32 and bool(torch.isfinite(out.loss).all())
        assert all(bool(torch.isfinite(g).all()) for g in _grads(out, tensors).values())
        assert set(out.metrics) == PAIR_KEYS | EXTRA_METRICS[name]
        assert all(not m.requires_grad and bool(torch.isfinite(m)) for m in out.metrics.values())


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_shape_mismatch_is_refused(name):
    fn = LOSSES[name]
    tensors = _batch(fn)
    extra = loss_signature(fn).tensors[-1]
    tensors[extra] = torch.zeros(2)
    with pytest.raises(ValueError, match=f"{extra} has 2 rows, expected B = 3"):
        fn(**tensors)
    tensors[extra] = torch.zeros(3, 1)
    with pytest.raises(ValueError, match=rf"{extra} must be \(B,\)"):
        fn(**tensors)


def test_negative_weights_are_refused_by_the_loss_and_by_the_config():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        xpo_loss(**_batch(xpo_loss), alpha=-1.0)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        vpo_loss(**_batch(vpo_loss), alpha=-1.0)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        hypo_loss(**_batch(hypo_loss), lam=-0.1)
    # At config time (rlxf.objectives.signature), before any model loads:
    for fn in (xpo_loss, vpo_loss):
        with pytest.raises(ConfigError, match=r"bad value for 'loss.alpha' of objective '(x|v)po': must be >= 0"):
            resolve_hyperparameters(fn, {"alpha": -0.5})
        assert resolve_hyperparameters(fn, {"alpha": 0})["alpha"] == 0.0
    with pytest.raises(ConfigError, match=r"'loss.lam' of objective 'hypo': must be >= 0"):
        resolve_hyperparameters(hypo_loss, {"lam": -1})
    with pytest.raises(ConfigError, match=r"'loss.beta' of objective 'hypo': must be > 0"):
        resolve_hyperparameters(hypo_loss, {"beta": 0})
    assert resolve_hyperparameters(vpo_loss, {"optimistic": "false"}) == {"beta": 0.1, "alpha": 0.1,
                                                                          "optimistic": False}
