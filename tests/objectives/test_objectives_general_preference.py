"""General-preference (Nash) losses (rlxf.objectives.general_preference): hand values, gradients, metrics, the
policy-gradient identities they rest on, extremes and errors.

The expected values are each paper's formula evaluated row by row in plain Python floats (float64),
independently of torch; the docstrings give the intermediate numbers.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from rlxf.objectives import OBJECTIVES, inpo_loss, ipo_loss, list_objectives, nash_md_loss, sppo_loss
from rlxf.objectives.signature import loss_signature

POLICY = [-10.0, -22.5, -7.25]
PREV = [-11.0, -21.0, -8.0]  # log pi_t (SPPO) or log pi_ref (Nash-MD): log-ratios [1.0, -1.5, 0.75]


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected, dtype=torch.float64), rtol=rtol, atol=atol
    )


def _leaves(*rows, dtype=torch.float32):
    return [torch.tensor(r, dtype=dtype, requires_grad=True) for r in rows]


# ---------------------------------------------------------------------------------------------- SPPO


def test_sppo_by_hand():
    """log-ratio h = policy - prev = [1.0, -1.5, 0.75]; win rates [0.75, 0.25, 0.5], eta = 2:
    target eta (P - 1/2) = [0.5, -0.5, 0.0]; residual h - target = [0.5, -1.0, 0.75];
    loss = residual^2 = [0.25, 1.0, 0.5625]; d loss / d policy = 2 residual = [1.0, -2.0, 1.5] = -d / d prev;
    the win rates are constants (no gradient). Metrics: log_ratio mean 0.25/3, target mean 0, win_rate 0.5."""
    policy, prev, win = _leaves(POLICY, PREV, [0.75, 0.25, 0.5])
    out = sppo_loss(policy, prev, win, eta=2.0)
    _close(out.loss.detach(), [0.25, 1.0, 0.5625])
    d_policy, d_prev, d_win = torch.autograd.grad(out.loss.sum(), [policy, prev, win], allow_unused=True)
    _close(d_policy, [1.0, -2.0, 1.5])
    _close(d_prev, [-1.0, 2.0, -1.5])
    assert d_win is None
    _close(out.metrics["log_ratio"], 0.25 / 3)
    _close(out.metrics["target"], 0.0)
    _close(out.metrics["win_rate"], 0.5)
    assert all(not m.requires_grad for m in out.metrics.values())


def test_sppo_is_zero_at_the_multiplicative_weights_step():
    """pi_theta = pi_t exp(eta (P - 1/2)) makes every residual 0 (eq. 3.6's fixed point), so loss and gradient vanish;
    a tie (P = 1/2) asks for no change."""
    prev = torch.tensor(PREV)
    win = torch.tensor([0.9, 0.1, 0.5])
    policy = (prev + 3.0 * (win - 0.5)).requires_grad_()
    out = sppo_loss(policy, prev, win, eta=3.0)
    # float32 maths: the residuals are rounding (ulp(22) ~ 2e-6), not a missing term
    _close(out.loss.detach(), [0.0, 0.0, 0.0], atol=1e-10)
    _close(torch.autograd.grad(out.loss.sum(), policy)[0], [0.0, 0.0, 0.0], atol=1e-5)


# ---------------------------------------------------------------------------------------------- INPO

INPO_ROWS = {
    "policy_chosen_logps": [-10.0, -22.5, -7.25],
    "policy_rejected_logps": [-12.0, -20.0, -15.5],
    "ref_chosen_logps": [-11.0, -21.0, -8.0],
    "ref_rejected_logps": [-11.5, -19.5, -14.0],
    "prev_chosen_logps": [-10.5, -22.0, -7.5],
    "prev_rejected_logps": [-11.0, -20.5, -15.0],
}


def _inpo_batch(dtype=torch.float32):
    return {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in INPO_ROWS.items()}


def test_inpo_by_hand():
    """eta = 0.5, tau = 0.1: tau/eta = 0.2, 1 - tau/eta = 0.8, target 1/(2 eta) = 1.
    Differences chosen - rejected: policy [2.0, -2.5, 8.25], ref [0.5, -1.5, 6.0], prev [0.5, -1.5, 7.5];
    h = policy - 0.2 ref - 0.8 prev = [1.5, -1.0, 1.05]; loss = (h - 1)^2 = [0.25, 4.0, 0.0025];
    d / d policy_chosen = 2 (h - 1) = [1.0, -4.0, 0.1] = -d / d policy_rejected.
    Implicit rewards eta (policy - 0.2 ref - 0.8 prev): chosen [0.3, -0.35, 0.175], rejected [-0.45, 0.15, -0.35]:
    margins [0.75, -0.5, 0.525] = eta h; accuracy 2/3."""
    t = _inpo_batch()
    out = inpo_loss(**t, eta=0.5, tau=0.1)
    _close(out.loss.detach(), [0.25, 4.0, 0.0025])
    d_chosen, d_rejected = torch.autograd.grad(out.loss.sum(), [t["policy_chosen_logps"], t["policy_rejected_logps"]])
    _close(d_chosen, [1.0, -4.0, 0.1])
    _close(d_rejected, [-1.0, 4.0, -0.1])
    _close(out.metrics["chosen_reward"], (0.3 - 0.35 + 0.175) / 3)
    _close(out.metrics["rejected_reward"], (-0.45 + 0.15 - 0.35) / 3)
    _close(out.metrics["reward_margin"], (0.75 - 0.5 + 0.525) / 3)
    _close(out.metrics["reward_accuracy"], 2 / 3)


def test_inpo_limits():
    """tau = eta drops pi_t: h = policy - ref margins, target 1/(2 eta), which is IPO's loss with tau_IPO = eta.
    tau = 0 (the paper's "INPO w/o KL") drops pi_ref."""
    t = _inpo_batch()
    ipo = ipo_loss(*(t[k] for k in list(INPO_ROWS)[:4]), tau=0.25)
    _close(inpo_loss(**t, eta=0.25, tau=0.25).loss.detach(), ipo.loss.detach())
    no_kl = inpo_loss(**t, eta=0.5, tau=0.0).loss.detach()
    _close(no_kl, [(2.0 - 0.5 - 1.0) ** 2, (-2.5 + 1.5 - 1.0) ** 2, (8.25 - 7.5 - 1.0) ** 2])


def test_inpo_minimiser_is_the_mirror_descent_step():
    """Over all labelled pairs of a tabular policy, eq. 8's expected loss is minimised by eq. 5:
    pi_{t+1} propto pi_t^{1 - tau/eta} pi_ref^{tau/eta} exp(P(y > pi_t) / eta) (Prop. 6 and Lemma 5), so its
    gradient vanishes there."""
    prefs = torch.tensor([[0.5, 0.2, 0.9], [0.8, 0.5, 0.3], [0.1, 0.7, 0.5]], dtype=torch.float64)
    pi_t = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    pi_ref = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    eta, tau = 2.0, 0.5
    target = (1 - tau / eta) * pi_t.log() + tau / eta * pi_ref.log() + (prefs @ pi_t) / eta
    theta = target.clone().requires_grad_()
    c, r = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([1, 2, 0, 2, 0, 1])
    weights = 2 * pi_t[c] * pi_t[r] * prefs[c, r]
    lp, lt, lr = F.log_softmax(theta, dim=0), pi_t.log(), pi_ref.log()
    loss = (weights * inpo_loss(lp[c], lp[r], lr[c], lr[r], lt[c], lt[r], eta=eta, tau=tau).loss).sum()
    _close(torch.autograd.grad(loss, theta)[0], [0.0, 0.0, 0.0], atol=1e-6)


# ---------------------------------------------------------------------------------------------- Nash-MD


def test_nash_md_by_hand():
    """log pi/pi_ref = [1.0, -1.5, 0.75]; P(y > y') = [1.0, 0.0, 0.5]; beta = 0.2:
    A = P - 1/2 - beta log-ratio = [0.5 - 0.2, -0.5 + 0.3, 0.0 - 0.15] = [0.3, -0.2, -0.15];
    loss = -A exp(0) = [-0.3, 0.2, 0.15]; d loss / d policy = -A; no gradient to pi_ref or the win rate.
    Metrics: win_rate 0.5, kl mean 0.25/3, advantage mean -0.05/3."""
    policy, ref, win = _leaves(POLICY, PREV, [1.0, 0.0, 0.5])
    out = nash_md_loss(policy, ref, win, beta=0.2)
    _close(out.loss.detach(), [-0.3, 0.2, 0.15])
    d_policy, d_ref, d_win = torch.autograd.grad(out.loss.sum(), [policy, ref, win], allow_unused=True)
    _close(d_policy, [-0.3, 0.2, 0.15])
    assert d_ref is None and d_win is None
    _close(out.metrics["win_rate"], 0.5)
    _close(out.metrics["kl"], 0.25 / 3)
    _close(out.metrics["advantage"], -0.05 / 3)


def test_nash_md_gradient_is_trl_form_and_the_regularised_objective():
    """Same gradient as TRL's -(P - 1/2) log pi + beta sg(log pi/pi_ref) log pi; and over a tabular policy with
    every answer weighted by sg(pi(y)) it is exactly -grad [ sum_y pi(y) (P_y - 1/2) - beta KL(pi || pi_ref) ]:
    the REINFORCE term's gradient is the win rate's and the KL term's is the KL's."""
    policy, ref, win = _leaves(POLICY, PREV, [1.0, 0.0, 0.5])
    ours = torch.autograd.grad(nash_md_loss(policy, ref, win, beta=0.2).loss.sum(), policy)[0]
    trl = -(win.detach() - 0.5) * policy + 0.2 * (policy - ref).detach() * policy
    _close(ours, torch.autograd.grad(trl.sum(), policy)[0])

    theta = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64, requires_grad=True)
    log_ref = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    p_win = torch.tensor([0.7, 0.2, 0.55], dtype=torch.float64)
    logps = F.log_softmax(theta, dim=0)
    expected_loss = (logps.exp().detach() * nash_md_loss(logps, log_ref, p_win, beta=0.3).loss).sum()
    probs = logps.exp()
    objective = (probs * (p_win - 0.5)).sum() - 0.3 * (probs * (logps - log_ref)).sum()
    ours = torch.autograd.grad(expected_loss, theta, retain_graph=True)[0]
    _close(ours, -torch.autograd.grad(objective, theta)[0])


# ---------------------------------------------------------------------------------------------- registry, extremes


def test_registered_kinds_signatures_and_no_dno_duplicate():
    assert OBJECTIVES["sppo"] is sppo_loss and OBJECTIVES["nash_md"] is nash_md_loss and OBJECTIVES["inpo"] is inpo_loss
    assert {"sppo", "nash_md"} <= set(list_objectives(kind="self_play"))
    assert "inpo" in list_objectives(kind="online_preference")
    assert (sppo_loss.recipe, nash_md_loss.recipe, inpo_loss.recipe) == ("sppo", "nash-md", "inpo")
    assert loss_signature(sppo_loss).tensors == ("policy_logps", "prev_logps", "win_rates")
    assert loss_signature(nash_md_loss).tensors == ("policy_logps", "ref_logps", "win_rates")
    assert loss_signature(inpo_loss).tensors == tuple(INPO_ROWS)
    assert set(loss_signature(sppo_loss).hyperparameters) == {"eta"}
    assert set(loss_signature(nash_md_loss).hyperparameters) == {"beta"}
    assert set(loss_signature(inpo_loss).hyperparameters) == {"eta", "tau"}
    assert "dno" not in OBJECTIVES  # DNO trains with `dpo` against pi_t (module docstring)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_inputs_give_finite_loss_and_gradients(dtype):
    """Log-ratios of +-100 and win rates at 0 and 1, in float32 and bfloat16: finite float32 losses and gradients."""
    big = [100.0, -100.0, 0.0]
    policy, prev, win = _leaves(big, [-100.0, 100.0, 0.0], [1.0, 0.0, 1.0], dtype=dtype)
    for out in (sppo_loss(policy, prev, win), nash_md_loss(policy, prev, win, beta=1.0)):
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss).all()
        assert torch.isfinite(torch.autograd.grad(out.loss.sum(), policy)[0].float()).all()
        assert all(torch.isfinite(m) for m in out.metrics.values())
    t = {k: torch.tensor([s * 100.0 for s in (1, -1, 0)], dtype=dtype, requires_grad=True) for k in INPO_ROWS}
    out = inpo_loss(**t)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss).all()
    assert torch.isfinite(torch.autograd.grad(out.loss.sum(), t["policy_chosen_logps"])[0].float()).all()


def test_bad_inputs_raise():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=r"must be \(B,\)"):
        sppo_loss(torch.zeros(3, 2), x, x)
    with pytest.raises(ValueError, match="rows, expected B = 3"):
        nash_md_loss(x, x, torch.zeros(2))
    with pytest.raises(ValueError, match="float tensor"):
        sppo_loss(x, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="eta must be > 0"):
        sppo_loss(x, x, x, eta=0.0)
    with pytest.raises(ValueError, match=r"tau must be in \[0, eta\]"):
        inpo_loss(x, x, x, x, x, x, eta=0.1, tau=0.2)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        nash_md_loss(x, x, x, beta=-1.0)
    assert math.isfinite(inpo_loss(x, x, x, x, x, x).loss.sum().item())
