"""DPO-family preference losses (rlxf.objectives.preference): hand values, limits, extremes, signs, errors.

Every hand-value test uses the same 3-pair batch (sequence log-probs summed over tokens):

    policy_chosen  = [-10.0, -22.5, -7.25]    ref_chosen   = [-11.0, -21.0, -8.0]
    policy_rejected = [-12.0, -20.0, -15.5]   ref_rejected = [-11.5, -19.5, -14.0]
    h_w = policy_chosen - ref_chosen = [1.0, -1.5, 0.75]
    h_l = policy_rejected - ref_rejected = [-0.5, -0.5, -1.5]
    D = h_w - h_l = [1.5, -1.0, 2.25]
    chosen_lengths = [5, 9, 3] -> mean chosen log-prob [-2.0, -2.5, -2.41667]
    rejected_lengths = [4, 8, 5] -> mean rejected log-prob [-3.0, -2.5, -3.1]
    chosen_scores = [8.0, 6.5, 9.0], rejected_scores = [5.0, 6.0, 2.0] -> score margins [3.0, 0.5, 7.0]

The expected values are the paper's formula evaluated per pair in plain Python floats (float64, `math`),
independently of torch; the docstrings give the intermediate numbers and the result to 5 decimals.
"""

import inspect
import math

import pytest
import torch

from rlxf.objectives import (
    FDPO_DIVERGENCES,
    LossOutput,
    cdpo_loss,
    discopop_loss,
    dpo_loss,
    fdpo_alpha_loss,
    fdpo_forward_kl_loss,
    fdpo_js_loss,
    fdpo_loss,
    fdpo_reverse_kl_loss,
    get_objective,
    hdpo_loss,
    hinge_loss,
    ipo_loss,
    list_objectives,
    mmpo_loss,
    orpo_loss,
    robust_dpo_loss,
    rpo_loss,
    simpo_loss,
)

PC, PR = [-10.0, -22.5, -7.25], [-12.0, -20.0, -15.5]
RC, RR = [-11.0, -21.0, -8.0], [-11.5, -19.5, -14.0]
LC, LR = [5.0, 9.0, 3.0], [4.0, 8.0, 5.0]
SC, SR = [8.0, 6.5, 9.0], [5.0, 6.0, 2.0]
HW = [a - b for a, b in zip(PC, RC, strict=True)]
HL = [a - b for a, b in zip(PR, RR, strict=True)]
MARGIN = [a - b for a, b in zip(HW, HL, strict=True)]

PAIR_KEYS = {"chosen_reward", "rejected_reward", "reward_margin", "reward_accuracy"}

# name -> (function, loss-specific metric keys); every loss of this module.
LOSSES = {
    "dpo": (dpo_loss, set()),
    "ipo": (ipo_loss, set()),
    "cdpo": (cdpo_loss, set()),
    "robust_dpo": (robust_dpo_loss, set()),
    "hinge": (hinge_loss, set()),
    "simpo": (simpo_loss, set()),
    "orpo": (orpo_loss, {"nll", "or_loss", "log_odds_ratio"}),
    "rpo": (rpo_loss, {"nll", "dpo_loss"}),
    "fdpo": (fdpo_loss, set()),
    "fdpo_reverse_kl": (fdpo_reverse_kl_loss, set()),
    "fdpo_forward_kl": (fdpo_forward_kl_loss, set()),
    "fdpo_js": (fdpo_js_loss, set()),
    "fdpo_alpha": (fdpo_alpha_loss, set()),
    "hdpo": (hdpo_loss, set()),
    "mmpo": (mmpo_loss, {"target_prob"}),
    "discopop": (discopop_loss, {"exp_weight"}),
}
TENSOR_NAMES = (
    "policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
    "chosen_lengths", "rejected_lengths", "chosen_scores", "rejected_scores",
)
LOGP_NAMES = TENSOR_NAMES[:4]


def _sp(z):
    """softplus(z) = log(1 + e^z) = -log sigma(-z), in float64."""
    return math.log1p(math.exp(z)) if z < 30 else z + math.log1p(math.exp(-z))


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def _tensor_params(fn):
    return [name for name in inspect.signature(fn).parameters if name in TENSOR_NAMES]


def _batch(fn, dtype=torch.float32, values=None, requires_grad=True):
    """The tensors `fn` asks for, from `values` (default: the module's 3-pair batch); log-probs are leaves."""
    values = values or dict(zip(TENSOR_NAMES, (PC, PR, RC, RR, LC, LR, SC, SR), strict=True))
    out = {}
    for name in _tensor_params(fn):
        tensor = torch.tensor(values[name], dtype=dtype)
        out[name] = tensor.requires_grad_() if requires_grad and name in LOGP_NAMES else tensor
    return out


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected, dtype=torch.float64), rtol=rtol, atol=atol
    )


def _grads(out, tensors):
    names = [n for n in ("policy_chosen_logps", "policy_rejected_logps") if n in tensors]
    grads = torch.autograd.grad(out.loss.sum(), [tensors[n] for n in names])
    return dict(zip(names, grads, strict=True))


# ---------------------------------------------------------------------------------------------- hand values


def test_dpo_by_hand():
    """beta = 0.1: x = beta D = [0.15, -0.1, 0.225]; loss = softplus(-x) = [0.62096, 0.74440, 0.58696].
    Rewards beta h: chosen [0.1, -0.15, 0.075] (mean -0.025/3), rejected [-0.05, -0.05, -0.15];
    margins [0.15, -0.1, 0.225] -> accuracy 2/3. d loss / d policy_chosen = -beta sigma(-x)."""
    tensors = _batch(dpo_loss)
    out = dpo_loss(**tensors, beta=0.1)
    assert isinstance(out, LossOutput) and out.loss.dtype == torch.float32 and out.loss.shape == (3,)
    _close(out.loss, [_sp(-0.1 * d) for d in MARGIN])
    _close(out.loss, [0.62096, 0.74440, 0.58696], rtol=1e-4)
    _close(out.metrics["chosen_reward"], sum(0.1 * h for h in HW) / 3)
    _close(out.metrics["rejected_reward"], sum(0.1 * h for h in HL) / 3)
    _close(out.metrics["reward_margin"], sum(0.1 * d for d in MARGIN) / 3)
    _close(out.metrics["reward_accuracy"], 2 / 3)
    grads = _grads(out, tensors)
    _close(grads["policy_chosen_logps"], [-0.1 * _sig(-0.1 * d) for d in MARGIN])
    _close(grads["policy_rejected_logps"], [0.1 * _sig(-0.1 * d) for d in MARGIN])


def test_ipo_by_hand():
    """tau = 0.1: target 1/(2 tau) = 5; loss = (D - 5)^2 = [(-3.5)^2, (-6)^2, (-2.75)^2] = [12.25, 36.0, 7.5625].
    d loss / d policy_chosen = 2 (D - 5) = [-7, -12, -5.5]. Rewards tau h: chosen mean (0.1 + -0.15 + 0.075)/3."""
    tensors = _batch(ipo_loss)
    out = ipo_loss(**tensors, tau=0.1)
    _close(out.loss, [(d - 5.0) ** 2 for d in MARGIN])
    _close(out.loss, [12.25, 36.0, 7.5625])
    _close(_grads(out, tensors)["policy_chosen_logps"], [-7.0, -12.0, -5.5])
    _close(out.metrics["chosen_reward"], sum(0.1 * h for h in HW) / 3)


def test_ipo_is_not_length_normalised():
    """Eq. 17 uses the summed log-ratios: doubling every log-prob (a completion twice as long with the same
    per-token ratios) doubles D, so with tau = 0.1: (2 * 1.5 - 5)^2 = 4 for the first pair, not (1.5 - 5)^2."""
    doubled = {name: [2 * v for v in vals] for name, vals in zip(LOGP_NAMES, (PC, PR, RC, RR), strict=True)}
    out = ipo_loss(**_batch(ipo_loss, values=doubled), tau=0.1)
    _close(out.loss, [(2 * d - 5.0) ** 2 for d in MARGIN])
    _close(out.loss[0], 4.0)


def test_cdpo_by_hand():
    """beta = 0.1, eps = 0.1: loss = 0.9 softplus(-x) + 0.1 softplus(x), x = [0.15, -0.1, 0.225]
    = [0.9 * 0.62096 + 0.1 * 0.77096, ...] = [0.63596, 0.73440, 0.60946]."""
    out = cdpo_loss(**_batch(cdpo_loss), beta=0.1, epsilon=0.1)
    _close(out.loss, [0.9 * _sp(-0.1 * d) + 0.1 * _sp(0.1 * d) for d in MARGIN])
    _close(out.loss, [0.63596, 0.73440, 0.60946], rtol=1e-4)


def test_robust_dpo_by_hand():
    """beta = 0.1, eps = 0.1: loss = (0.9 softplus(-x) - 0.1 softplus(x)) / 0.8, x = [0.15, -0.1, 0.225]
    = [(0.55886 - 0.07710) / 0.8, ...] = [0.60221, 0.75690, 0.55884]. d loss / d policy_chosen
    = -beta (0.9 sigma(-x) + 0.1 sigma(x)) / 0.8."""
    tensors = _batch(robust_dpo_loss)
    out = robust_dpo_loss(**tensors, beta=0.1, epsilon=0.1)
    _close(out.loss, [(0.9 * _sp(-0.1 * d) - 0.1 * _sp(0.1 * d)) / 0.8 for d in MARGIN])
    _close(out.loss, [0.60221, 0.75690, 0.55884], rtol=1e-4)
    expected = [-0.1 * (0.9 * _sig(-0.1 * d) + 0.1 * _sig(0.1 * d)) / 0.8 for d in MARGIN]
    _close(_grads(out, tensors)["policy_chosen_logps"], expected)


def test_hinge_by_hand():
    """beta = 0.1: loss = max(0, 1 - 0.1 D) = [0.85, 1.1, 0.775], gradient -beta = -0.1 on the chosen.
    beta = 1: 1 - D = [-0.5, 2.0, -1.25] -> [0, 2, 0]; the satisfied pairs get gradient 0."""
    tensors = _batch(hinge_loss)
    out = hinge_loss(**tensors, beta=0.1)
    _close(out.loss, [max(0.0, 1 - 0.1 * d) for d in MARGIN])
    _close(out.loss, [0.85, 1.1, 0.775])
    _close(_grads(out, tensors)["policy_chosen_logps"], [-0.1, -0.1, -0.1])
    tensors = _batch(hinge_loss)
    out = hinge_loss(**tensors, beta=1.0)
    _close(out.loss, [0.0, 2.0, 0.0])
    _close(_grads(out, tensors)["policy_chosen_logps"], [0.0, -1.0, 0.0])


def test_simpo_by_hand():
    """beta = 2, gamma = 1: rewards beta * mean log-prob: chosen 2 * [-2, -2.5, -2.41667] = [-4, -5, -4.83333],
    rejected 2 * [-3, -2.5, -3.1] = [-6, -5, -6.2]; z = r_w - r_l - gamma = [1, -1, 0.36667];
    loss = softplus(-z) = [0.31326, 1.31326, 0.52653]. No reference inputs are taken."""
    assert "ref_chosen_logps" not in inspect.signature(simpo_loss).parameters
    tensors = _batch(simpo_loss)
    out = simpo_loss(**tensors, beta=2.0, gamma=1.0)
    chosen = [2 * p / n for p, n in zip(PC, LC, strict=True)]
    rejected = [2 * p / n for p, n in zip(PR, LR, strict=True)]
    _close(out.loss, [_sp(-(a - b - 1.0)) for a, b in zip(chosen, rejected, strict=True)])
    _close(out.loss, [0.31326, 1.31326, 0.52653], rtol=1e-4)
    _close(out.metrics["chosen_reward"], sum(chosen) / 3)
    _close(out.metrics["reward_accuracy"], 2 / 3)  # pair 2 ties (r_w = r_l = -5): not counted


def _log_odds(mean_logp):
    """log(p / (1 - p)) with log p = mean_logp, in float64."""
    return mean_logp - math.log(-math.expm1(mean_logp))


def test_orpo_by_hand():
    """lambda = 0.1. Mean log-probs: chosen [-2, -2.5, -2.41667], rejected [-3, -2.5, -3.1].
    log odds = m - log(1 - e^m): chosen [-1.85459, -2.41435, -2.32321], rejected [-2.94893, -2.41435, -3.05390];
    log odds ratio [1.09434, 0, 0.73069]; L_OR = softplus(-ratio) = [0.28882, 0.69315, 0.39318];
    loss = NLL + 0.1 L_OR = [2 + 0.02888, 2.5 + 0.06931, 2.41667 + 0.03932] = [2.02888, 2.56931, 2.45598]."""
    tensors = _batch(orpo_loss)
    out = orpo_loss(**tensors, lambda_=0.1)
    chosen = [p / n for p, n in zip(PC, LC, strict=True)]
    rejected = [p / n for p, n in zip(PR, LR, strict=True)]
    ratio = [_log_odds(a) - _log_odds(b) for a, b in zip(chosen, rejected, strict=True)]
    _close(out.loss, [-a + 0.1 * _sp(-r) for a, r in zip(chosen, ratio, strict=True)])
    _close(out.loss, [2.02888, 2.56931, 2.45598], rtol=1e-4)
    _close(out.metrics["nll"], -sum(chosen) / 3)
    _close(out.metrics["log_odds_ratio"], sum(ratio) / 3)
    _close(out.metrics["or_loss"], sum(_sp(-r) for r in ratio) / 3)
    _close(out.metrics["chosen_reward"], 0.1 * sum(chosen) / 3)


def test_orpo_log_odds_accurate_near_probability_one():
    """Mean log-prob m = -2e-5 / 10 = -2e-6 (p = 0.999998): log odds = m - log(-expm1(m)) = 13.12236; the
    naive float32 log(1 - exp(m)) is off by ~3% there. Rejected m = -50: log odds = -50 - log1p(-e^-50) = -50.
    The ratio 63.12236 must match float64 to 1e-5."""
    out = orpo_loss(
        torch.tensor([-2e-5]), torch.tensor([-100.0]), torch.tensor([10.0]), torch.tensor([2.0]), lambda_=1.0
    )
    chosen_mean = float(torch.tensor(-2e-5)) / 10.0
    _close(out.metrics["log_odds_ratio"], _log_odds(chosen_mean) - _log_odds(-50.0))


def test_rpo_by_hand():
    """beta = 0.1, alpha = 1: loss = DPO + mean chosen NLL = [0.62096 + 2, 0.74440 + 2.5, 0.58696 + 2.41667]
    = [2.62096, 3.24440, 3.00363]; d loss / d policy_chosen = -beta sigma(-x) - 1/|y_w|."""
    tensors = _batch(rpo_loss)
    out = rpo_loss(**tensors, beta=0.1, alpha=1.0)
    _close(out.loss, [_sp(-0.1 * d) - p / n for d, p, n in zip(MARGIN, PC, LC, strict=True)])
    _close(out.loss, [2.62096, 3.24440, 3.00363], rtol=1e-4)
    expected = [-0.1 * _sig(-0.1 * d) - 1 / n for d, n in zip(MARGIN, LC, strict=True)]
    _close(_grads(out, tensors)["policy_chosen_logps"], expected)
    _close(out.metrics["nll"], -sum(p / n for p, n in zip(PC, LC, strict=True)) / 3)
    _close(out.metrics["dpo_loss"], sum(_sp(-0.1 * d) for d in MARGIN) / 3)


FDPO_CASES = {
    # f' normalised to f'(1) = 0; values per pair for h_w = [1, -1.5, 0.75], h_l = [-0.5, -0.5, -1.5].
    "forward_kl": (fdpo_forward_kl_loss, {}, lambda h: 1.0 - math.exp(-h)),
    "js": (fdpo_js_loss, {}, lambda h: math.log(2.0 * math.exp(h) / (1.0 + math.exp(h)))),
    "alpha": (fdpo_alpha_loss, {"alpha": 0.5}, lambda h: (1.0 - math.exp(-0.5 * h)) / 0.5),
}


@pytest.mark.parametrize("divergence", sorted(FDPO_CASES))
def test_fdpo_by_hand(divergence):
    """beta = 0.1, loss = softplus(-beta (f'(u_w) - f'(u_l))), u = e^h.
    forward KL, f' = 1 - 1/u: f'(u_w) = [0.63212, -3.48169, 0.52763], f'(u_l) = [-0.64872, -0.64872, -3.48169]
      -> [0.63115, 0.84479, 0.51264];
    JS, f' = log(2u / (1 + u)): f'(u_w) = [0.37989, -1.00827, 0.30628], f'(u_l) = [-0.28093, -0.28093, -1.00827]
      -> [0.66065, 0.73018, 0.62958];
    alpha = 0.5, f' = (1 - u^-0.5) / 0.5: f'(u_w) = [0.78694, -2.23400, 0.62542], f'(u_l) = [-0.56805, -0.56805,
      -2.23400] -> [0.62769, 0.77991, 0.56036].
    The same through `fdpo_loss(divergence=...)`, and the rewards are beta f'(u)."""
    fn, kwargs, f_prime = FDPO_CASES[divergence]
    expected = [_sp(-0.1 * (f_prime(a) - f_prime(b))) for a, b in zip(HW, HL, strict=True)]
    literal = {
        "forward_kl": [0.63115, 0.84479, 0.51264],
        "js": [0.66065, 0.73018, 0.62958],
        "alpha": [0.62769, 0.77991, 0.56036],
    }[divergence]
    out = fn(**_batch(fn), beta=0.1, **kwargs)
    _close(out.loss, expected)
    _close(out.loss, literal, rtol=1e-4)
    _close(out.metrics["chosen_reward"], sum(0.1 * f_prime(h) for h in HW) / 3)
    by_name = fdpo_loss(**_batch(fdpo_loss), beta=0.1, divergence=divergence, **kwargs)
    _close(by_name.loss, expected)
    assert FDPO_DIVERGENCES[divergence] is fn


def test_hdpo_by_hand():
    """beta = 0.1, alpha = 0.95: z = (0.95 PC - RC) - (0.95 PR - RR)
    = [(-9.5 + 11) - (-11.4 + 11.5), (-21.375 + 21) - (-19 + 19.5), (-6.8875 + 8) - (-14.725 + 14)]
    = [1.4, -0.875, 1.8375]; loss = softplus(-0.1 z) = [0.62560, 0.73785, 0.60549];
    d loss / d policy_chosen = -beta alpha sigma(-beta z)."""
    tensors = _batch(hdpo_loss)
    out = hdpo_loss(**tensors, beta=0.1, alpha=0.95)
    z = [(0.95 * a - c) - (0.95 * b - d) for a, b, c, d in zip(PC, PR, RC, RR, strict=True)]
    _close(out.loss, [_sp(-0.1 * v) for v in z])
    _close(out.loss, [0.62560, 0.73785, 0.60549], rtol=1e-4)
    _close(_grads(out, tensors)["policy_chosen_logps"], [-0.1 * 0.95 * _sig(-0.1 * v) for v in z])
    _close(out.metrics["chosen_reward"], sum(0.1 * (0.95 * a - c) for a, c in zip(PC, RC, strict=True)) / 3)


def test_mmpo_by_hand():
    """beta = 0.1, gamma = 1: p = sigma(score margin [3, 0.5, 7]) = [0.95257, 0.62246, 0.99909];
    loss = p softplus(-x) + (1 - p) softplus(x), x = [0.15, -0.1, 0.225] = [0.62807, 0.70664, 0.58717];
    target_prob = mean p. Gradient on the chosen: beta (sigma(x) - p); none flows into the scores."""
    tensors = _batch(mmpo_loss)
    tensors["chosen_scores"].requires_grad_()
    out = mmpo_loss(**tensors, beta=0.1, gamma=1.0)
    p = [_sig(a - b) for a, b in zip(SC, SR, strict=True)]
    _close(out.loss, [q * _sp(-0.1 * d) + (1 - q) * _sp(0.1 * d) for q, d in zip(p, MARGIN, strict=True)])
    _close(out.loss, [0.62807, 0.70664, 0.58717], rtol=1e-4)
    _close(out.metrics["target_prob"], sum(p) / 3)
    (grad_chosen, grad_scores) = torch.autograd.grad(
        out.loss.sum(), [tensors["policy_chosen_logps"], tensors["chosen_scores"]], allow_unused=True
    )
    _close(grad_chosen, [0.1 * (_sig(0.1 * d) - q) for d, q in zip(MARGIN, p, strict=True)])
    assert grad_scores is None or torch.equal(grad_scores, torch.zeros(3))


def test_discopop_by_hand():
    """beta = tau = 0.05: x = beta D = [0.075, -0.05, 0.1125]; w = sigma(x / tau) = sigma([1.5, -1, 2.25]);
    loss = (1 - w) softplus(-x) + w e^-x = [0.87823, 0.80797, 0.86927]; exp_weight = mean w."""
    out = discopop_loss(**_batch(discopop_loss), beta=0.05, tau=0.05)
    x = [0.05 * d for d in MARGIN]
    w = [_sig(v / 0.05) for v in x]
    _close(out.loss, [(1 - a) * _sp(-v) + a * math.exp(-v) for a, v in zip(w, x, strict=True)])
    _close(out.loss, [0.87823, 0.80797, 0.86927], rtol=1e-4)
    _close(out.metrics["exp_weight"], sum(w) / 3)


def test_discopop_slope_at_zero_margin():
    """At x = 0: f'(0) = w'(0) (e^0 - log 2) + w(0) (-1) + (1 - w(0)) (-sigma(0)) with w(0) = 1/2, w'(0) = 1/(4 tau):
    (1 - log 2)/(4 tau) - 3/4 = 0.78427 for tau = 0.05, positive (the documented non-monotone region).
    d loss / d policy_chosen = beta f'(0) = 0.05 * 0.78427."""
    zero = torch.zeros(1, requires_grad=True)
    out = discopop_loss(zero, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.05, tau=0.05)
    (grad,) = torch.autograd.grad(out.loss.sum(), zero)
    _close(grad, [0.05 * ((1 - math.log(2)) / (4 * 0.05) - 0.75)])
    _close(out.loss, [0.5 * math.log(2) + 0.5])


def _discopop_slope(x, tau):
    """d f_lrml / d x in float64: w = sigma(x / tau), w' = w (1 - w) / tau,
    f' = w' (e^-x - softplus(-x)) - w e^-x - (1 - w) sigma(-x)."""
    w = _sig(x / tau)
    return w * (1 - w) / tau * (math.exp(-x) - _sp(-x)) - w * math.exp(-x) - (1 - w) * _sig(-x)


def test_discopop_local_minimum_at_negative_margin():
    """At tau = 0.05 the slope is negative at x = -0.2 (f'(-0.2) = -0.41239) and positive at x = -0.05
    (f'(-0.05) = +0.65130), so f has a local minimum between them (at x ~ -0.118): plain gradient descent on a single
    pair that starts with a wrong ordering stops at a negative margin. The autograd slope matches the hand slope."""
    x = torch.tensor([-0.2, -0.05], requires_grad=True)
    out = discopop_loss(x, torch.zeros(2), torch.zeros(2), torch.zeros(2), beta=1.0, tau=0.05)
    (grad,) = torch.autograd.grad(out.loss.sum(), x)
    expected = [_discopop_slope(-0.2, 0.05), _discopop_slope(-0.05, 0.05)]
    _close(grad, expected)
    assert expected[0] < 0 < expected[1]


# ---------------------------------------------------------------------------------------------- limiting cases


def _assert_same(out, reference):
    _close(out.loss, reference.loss)
    assert out.metrics.keys() >= reference.metrics.keys()
    for key, value in reference.metrics.items():
        _close(out.metrics[key], value)


@pytest.mark.parametrize(
    ("fn", "kwargs"),
    [
        (cdpo_loss, {"epsilon": 0.0}),
        (robust_dpo_loss, {"epsilon": 0.0}),
        (fdpo_reverse_kl_loss, {}),
        (fdpo_loss, {"divergence": "reverse_kl"}),
        (hdpo_loss, {"alpha": 1.0}),
        (rpo_loss, {"alpha": 0.0}),
    ],
    ids=["cdpo_eps0", "robust_dpo_eps0", "fdpo_reverse_kl", "fdpo_by_name", "hdpo_alpha1", "rpo_alpha0"],
)
def test_limits_equal_dpo(fn, kwargs):
    """Each reduces to DPO exactly (loss, rewards, and the gradients) at these settings (beta = 0.3)."""
    tensors = _batch(fn)
    out = fn(**tensors, beta=0.3, **kwargs)
    dpo_tensors = _batch(dpo_loss)
    reference = dpo_loss(**dpo_tensors, beta=0.3)
    _assert_same(out, reference)
    reference_grads = _grads(reference, dpo_tensors)
    for name, grad in _grads(out, tensors).items():
        _close(grad, reference_grads[name])


def test_fdpo_alpha_limits():
    """alpha -> 0: (1 - e^(-alpha h))/alpha = h - alpha h^2/2 + ... -> h (reverse KL = DPO); alpha -> 1: 1 - e^-h
    (forward KL). At alpha = 1e-4 and 1 - 1e-4 the losses agree to ~1e-4 relative."""
    near_zero = fdpo_alpha_loss(**_batch(fdpo_alpha_loss), beta=0.1, alpha=1e-4)
    _close(near_zero.loss, dpo_loss(**_batch(dpo_loss), beta=0.1).loss, rtol=1e-3)
    near_one = fdpo_alpha_loss(**_batch(fdpo_alpha_loss), beta=0.1, alpha=1 - 1e-4)
    _close(near_one.loss, fdpo_forward_kl_loss(**_batch(fdpo_forward_kl_loss), beta=0.1).loss, rtol=1e-3)


def test_mmpo_limits():
    """A soft target of p = 1 - eps on every pair is cDPO with that eps: score margin logit(0.9) / gamma gives
    p = 0.9. A very large gamma (p -> 1) is DPO."""
    margin = math.log(0.9 / 0.1) / 2.0
    values = dict(zip(TENSOR_NAMES, (PC, PR, RC, RR, LC, LR, [margin] * 3, [0.0] * 3), strict=True))
    out = mmpo_loss(**_batch(mmpo_loss, values=values), beta=0.2, gamma=2.0)
    _close(out.loss, cdpo_loss(**_batch(cdpo_loss), beta=0.2, epsilon=0.1).loss)
    hard = mmpo_loss(**_batch(mmpo_loss), beta=0.2, gamma=100.0)
    _close(hard.loss, dpo_loss(**_batch(dpo_loss), beta=0.2).loss)


# ---------------------------------------------------------------------------------------------- extremes


EXTREME_CASES = [(name, {}) for name in LOSSES] + [
    ("dpo", {"beta": 1.0}), ("cdpo", {"beta": 1.0}), ("robust_dpo", {"beta": 1.0, "epsilon": 0.4}),
    ("fdpo_forward_kl", {"beta": 1.0}), ("fdpo_alpha", {"beta": 1.0, "alpha": 0.9}), ("discopop", {"beta": 1.0}),
    ("discopop", {"beta": 1.0, "tau": 2.0}), ("mmpo", {"beta": 1.0, "gamma": 50.0}), ("simpo", {"beta": 10.0}),
    ("orpo", {"lambda_": 10.0}), ("hdpo", {"beta": 1.0, "alpha": 2.0}), ("ipo", {"tau": 0.01}),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize(("name", "kwargs"), EXTREME_CASES, ids=[f"{n}{k or ''}" for n, k in EXTREME_CASES])
def test_extreme_margins_finite(name, kwargs, dtype):
    """Rows: log-ratio margin D = +100 (policy -100/-200 vs ref -150), D = -100, and an empty completion
    (all log-probs 0, length 0), with score margins +-100. Loss float32 and finite; gradients finite."""
    fn, _ = LOSSES[name]
    values = dict(zip(TENSOR_NAMES, (
        [-100.0, -200.0, 0.0], [-200.0, -100.0, 0.0], [-150.0, -150.0, 0.0], [-150.0, -150.0, 0.0],
        [10.0, 10.0, 0.0], [10.0, 10.0, 0.0], [100.0, -100.0, 0.0], [-100.0, 100.0, 0.0],
    ), strict=True))
    tensors = _batch(fn, dtype=dtype, values=values)
    out = fn(**tensors, **kwargs)
    assert out.loss.dtype == torch.float32 and out.loss.shape == (3,)
    assert torch.isfinite(out.loss).all(), out.loss
    for value in out.metrics.values():
        assert torch.isfinite(value)
    grads = torch.autograd.grad(out.loss.sum(), [tensors[n] for n in tensors if n in LOGP_NAMES])
    for grad in grads:
        assert grad.dtype == dtype and torch.isfinite(grad.float()).all(), grad


# ---------------------------------------------------------------------------------------------- gradient signs

SIGN_CASES = [
    ("dpo", {}), ("ipo", {}), ("cdpo", {}), ("robust_dpo", {"epsilon": 0.3}), ("hinge", {}), ("simpo", {}),
    ("orpo", {}), ("rpo", {}), ("fdpo_reverse_kl", {}), ("fdpo_forward_kl", {}), ("fdpo_js", {}),
    ("fdpo_alpha", {}), ("hdpo", {}), ("hdpo", {"alpha": 1.5}), ("mmpo", {}), ("discopop", {"beta": 1.0}),
]


@pytest.mark.parametrize(("name", "kwargs"), SIGN_CASES, ids=[f"{n}{k or ''}" for n, k in SIGN_CASES])
def test_gradient_raises_chosen_and_lowers_rejected(name, kwargs):
    """On the 3-pair batch every loss is below its target (IPO: D < 5; cDPO: sigma(x) < 0.9; MMPO: sigma(x) < p;
    hinge: beta D < 1; DiscoPOP at beta = 1 is outside its non-monotone region |x| < 0.12), so
    d loss / d policy_chosen < 0 and d loss / d policy_rejected > 0 on every pair."""
    fn, _ = LOSSES[name]
    tensors = _batch(fn)
    grads = _grads(fn(**tensors, **kwargs), tensors)
    assert (grads["policy_chosen_logps"] < 0).all(), grads
    assert (grads["policy_rejected_logps"] > 0).all(), grads


@pytest.mark.parametrize(
    ("fn", "kwargs", "margin"),
    [(ipo_loss, {"tau": 0.1}, 8.0), (cdpo_loss, {"beta": 1.0, "epsilon": 0.1}, 4.0),
     (mmpo_loss, {"beta": 1.0, "gamma": 1.0}, 2.0)],
    ids=["ipo", "cdpo", "mmpo"],
)
def test_soft_target_losses_push_back_past_target(fn, kwargs, margin):
    """Past the target the sign flips: IPO with D = 8 > 1/(2 tau) = 5; cDPO with sigma(4) = 0.982 > 1 - eps = 0.9.
    MMPO with x = 2: sigma(2) = 0.881 exceeds p = 0.622 (score margin 0.5) on pair 2 only; pairs 1 and 3 have
    p = 0.953, 0.999 > 0.881 and keep the usual sign."""
    values = dict(zip(TENSOR_NAMES, ([margin] * 3, [0.0] * 3, [0.0] * 3, [0.0] * 3, LC, LR, SC, SR), strict=True))
    tensors = _batch(fn, values=values)
    grad = _grads(fn(**tensors, **kwargs), tensors)["policy_chosen_logps"]
    if fn is mmpo_loss:
        assert grad[1] > 0 and grad[0] < 0 and grad[2] < 0
    else:
        assert (grad > 0).all()


# ---------------------------------------------------------------------------------------------- errors, metrics


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_shape_and_dtype_errors(name):
    fn, _ = LOSSES[name]
    first = _tensor_params(fn)[0]
    tensors = _batch(fn, requires_grad=False)
    with pytest.raises(ValueError, match=r"must be \(B,\)"):
        fn(**{**tensors, first: tensors[first].reshape(3, 1)})
    with pytest.raises(ValueError, match="must be a float tensor"):
        fn(**{**tensors, first: tensors[first].long()})
    last = _tensor_params(fn)[-1]
    with pytest.raises(ValueError, match="rows, expected B = 3"):
        fn(**{**tensors, last: tensors[last][:2]})


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        (cdpo_loss, {"epsilon": 0.5}, "epsilon"), (cdpo_loss, {"epsilon": -0.1}, "epsilon"),
        (robust_dpo_loss, {"epsilon": 0.5}, "epsilon"), (robust_dpo_loss, {"epsilon": -0.01}, "epsilon"),
        (ipo_loss, {"tau": 0.0}, "tau"), (discopop_loss, {"tau": -1.0}, "tau"),
        (fdpo_alpha_loss, {"alpha": 0.0}, "alpha"), (fdpo_alpha_loss, {"alpha": 1.0}, "alpha"),
        (fdpo_loss, {"divergence": "chi2"}, "unknown f-DPO divergence"),
        (fdpo_loss, {"divergence": "js", "alpha": 0.5}, "alpha applies only"),
        (hdpo_loss, {"alpha": 0.0}, "alpha"), (orpo_loss, {"lambda_": -1.0}, "lambda_"),
        (rpo_loss, {"alpha": -1.0}, "alpha"), (mmpo_loss, {"gamma": -1.0}, "gamma"),
    ],
)
def test_bad_hyperparameters(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(**_batch(fn), **kwargs)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_metrics_present_detached_scalar(name):
    fn, extra = LOSSES[name]
    out = fn(**_batch(fn))
    assert set(out.metrics) == PAIR_KEYS | extra
    for value in out.metrics.values():
        assert value.shape == () and value.dtype == torch.float32 and not value.requires_grad


def test_registered_as_preference_with_keyword_only_hyperparameters():
    names = {"dpo", "ipo", "cdpo", "robust_dpo", "hinge", "simpo", "orpo", "rpo", "fdpo", "hdpo", "mmpo", "discopop"}
    assert names <= set(list_objectives(kind="preference"))
    for name in names:
        fn = get_objective(name, kind="preference")
        assert fn is LOSSES[name][0] and fn.kind == "preference"
        for param in inspect.signature(fn).parameters.values():
            if param.name in TENSOR_NAMES:
                assert param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, (name, param.name)
            else:
                assert param.kind is inspect.Parameter.KEYWORD_ONLY, (name, param.name)
