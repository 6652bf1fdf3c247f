"""Pairwise policy-gradient losses (rlxf.objectives.pairwise_pg): REBEL, P3O, CoPG.

Hand values and gradients, the aggregate identity (`seq_mean_token_sum` = mean over pairs), invariance to a
per-pair reward shift, agreement with RLOO on-policy, extreme inputs, argument checks, and a per-pair float64
loop written from the papers' formulas as the slow reference.
"""

import math

import pytest
import torch

from rlxf.config import ConfigError
from rlxf.objectives import rloo_loss
from rlxf.objectives.pairwise_pg import copg_loss, p3o_loss, rebel_loss
from rlxf.objectives.registry import get_objective
from rlxf.objectives.signature import call_loss, loss_signature, resolve_hyperparameters
from rlxf.ops import aggregate, leave_one_out

NAN, INF = float("nan"), float("inf")

# (loss, hyperparameters, whether it takes old_logps, whether it uses ref_logps)
CASES = {
    "rebel": (rebel_loss, {"eta": 0.5, "beta": 0.1}, True, True),
    "rebel_no_ref": (rebel_loss, {"eta": 2.0}, True, False),
    "p3o_joint": (p3o_loss, {"clip_eps": 0.2, "weight_cap": 1.5, "beta": 0.05}, True, True),
    "p3o_separate": (p3o_loss, {"clipping": "separate", "clip_eps": 0.1}, True, False),
    "copg": (copg_loss, {"beta": 0.06}, False, True),
    "copg_no_ref": (copg_loss, {"beta": 0.0}, False, False),
}


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), rtol=rtol, atol=atol
    )


def _mean_over_pairs(out, mask):
    return aggregate(out.loss, mask, "seq_mean_token_sum")


def _grad(value, x):
    (grad,) = torch.autograd.grad(value, x, retain_graph=True)
    return grad


def _call(name, policy, old, ref, rewards, mask, **overrides):
    fn, hyper, takes_old, uses_ref = CASES[name]
    tensors = {"policy_logps": policy, "rewards": rewards, "mask": mask}
    if takes_old:
        tensors["old_logps"] = old
    if uses_ref:
        tensors["ref_logps"] = ref
    return fn(**tensors, **{**hyper, **overrides})


def _single_tokens(log_ratios, rewards):
    """Pairs of one-token completions: log pi_old = -1 everywhere, log pi = -1 + the given log-ratio."""
    old = torch.full((len(log_ratios), 1), -1.0)
    policy = (old + torch.tensor(log_ratios).unsqueeze(1)).requires_grad_()
    return policy, old, torch.tensor(rewards), torch.ones(len(log_ratios), 1, dtype=torch.bool)


def _random(seed, pairs=4, length=5, empty_pair=True):
    """Random pairs with ragged lengths (some rows empty), -inf / NaN in the padding of every tensor."""
    g = torch.Generator().manual_seed(seed)
    batch = 2 * pairs
    base = torch.randn(batch, length, generator=g) - 2.0
    old = base + 0.3 * torch.randn(batch, length, generator=g)
    ref = base + 0.3 * torch.randn(batch, length, generator=g)
    rewards = torch.randn(batch, generator=g)
    lengths = torch.randint(0, length + 1, (batch,), generator=g)
    lengths[:2] = torch.tensor([length, 1])
    if empty_pair:
        lengths[2:4] = 0
        rewards[2:4] = NAN
    mask = torch.arange(length)[None, :] < lengths[:, None]
    garbage = torch.where(torch.rand(batch, length, generator=g) < 0.5, -INF, NAN)
    policy = torch.where(mask, base, garbage).requires_grad_()
    return policy, torch.where(mask, old, garbage), torch.where(mask, ref, garbage), rewards, mask


def _seq64(x, mask, b):
    """Sequence log-prob of row b: a Python loop over its masked-in tokens (padding never read)."""
    return sum((x[b, t] for t in range(mask.shape[1]) if mask[b, t]), torch.zeros((), dtype=torch.float64))


def _capped(weight, cap):
    return min(max(float(weight.detach()), 1.0 / cap), cap)


def _ppo_term(ratio, adv, eps):
    return torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)


def _reference_pair(name, policy, old, ref, rewards, mask, i, j):
    """L_k of the pair (i, j) in float64 from the papers' formulas; 0 for a pair without tokens."""
    _, hyper, _, uses_ref = CASES[name]
    if not (mask[i].any() or mask[j].any()):
        return torch.zeros((), dtype=torch.float64)
    if name.startswith("copg"):  # eqs. 7-9, the two-term form, with R^pi_{beta/2} = R - beta/2 ln pi/pi_ref
        lr = {b: _seq64(policy, mask, b) - (_seq64(ref, mask, b) if uses_ref else 0.0) for b in (i, j)}
        half = {b: float(rewards[b]) - hyper["beta"] / 2 * lr[b] for b in (i, j)}
        return -((half[i] - half[j]) * lr[i] + (half[j] - half[i]) * lr[j])
    rho = {b: _seq64(policy, mask, b) - _seq64(old, mask, b) for b in (i, j)}
    kl = {b: float(_seq64(old, mask, b) - _seq64(ref, mask, b)) if uses_ref else 0.0 for b in (i, j)}
    gap = (float(rewards[i]) - hyper.get("beta", 0.0) * kl[i]) - (float(rewards[j]) - hyper.get("beta", 0.0) * kl[j])
    if name.startswith("rebel"):
        return ((rho[i] - rho[j]) / hyper["eta"] - gap) ** 2
    eps, cap = hyper["clip_eps"], hyper.get("weight_cap", 10.0)
    if hyper.get("clipping", "joint") == "joint":
        d = rho[i] - rho[j]
        return -_capped(torch.exp(rho[i] + rho[j]), cap) * torch.minimum(gap * d, gap * d.clamp(-eps, eps)) / 2
    r = {b: torch.exp(rho[b]) for b in (i, j)}
    return -(_capped(r[j], cap) * _ppo_term(r[i], gap, eps) + _capped(r[i], cap) * _ppo_term(r[j], -gap, eps)) / 2


def _reference(name, policy, old, ref, rewards, mask):
    """Mean over pairs of L_k, one pair at a time (`_reference_pair`); differentiable in `policy` (float64)."""
    pairs = range(0, mask.shape[0], 2)
    return torch.stack([_reference_pair(name, policy, old, ref, rewards, mask, i, i + 1) for i in pairs]).mean()


def test_rebel_by_hand():
    """One pair, eta = 0.5. Row 0: log pi = (-1, -2), log pi_old = (-1.5, -2.5), so rho_0 = -3 - (-4) = 1. Row 1:
    one token, log pi = -1, log pi_old = -0.5, so rho_1 = -0.5 (its padding holds -inf and NaN). Prediction
    (rho_0 - rho_1) / eta = 1.5 / 0.5 = 3, target r_0 - r_1 = 2 - 0.5 = 1.5, residual 1.5, L = 2.25. Spread over
    the pair's 3 tokens: 2 L / 3 = 1.5 each; sum / B = 4.5 / 2 = 2.25 = L. d L / d log pi = 2 residual / eta = 6
    at each token of row 0, -6 at row 1's token, 0 at the padding. approx_kl: k3 of x = log pi - log pi_old =
    (0.5, 0.5, -0.5), the mean of e^x - x - 1."""
    policy = torch.tensor([[-1.0, -2.0], [-1.0, -INF]], requires_grad=True)
    old = torch.tensor([[-1.5, -2.5], [-0.5, NAN]])
    mask = torch.tensor([[True, True], [True, False]])
    out = rebel_loss(policy, old, torch.tensor([2.0, 0.5]), mask, eta=0.5)
    _close(out.loss, [[1.5, 1.5], [1.5, 0.0]])
    total = _mean_over_pairs(out, mask)
    _close(total, 2.25)
    _close(_grad(total, policy), [[6.0, 6.0], [-6.0, 0.0]])
    _close(out.metrics["reward_diff_abs"], 1.5)
    _close(out.metrics["residual_abs"], 1.5)
    _close(out.metrics["approx_kl"], (2 * (math.exp(0.5) - 1.5) + math.exp(-0.5) - 0.5) / 3)
    assert "seq_kl" not in out.metrics
    assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values())


def test_rebel_kl_shaped_reward_by_hand():
    """As above with beta = 0.1 and log pi_ref = (-2, -2) and (-1): ln pi_old / pi_ref is -4 - (-4) = 0 for row 0
    and -0.5 - (-1) = 0.5 for row 1, so the rewards become (2, 0.5 - 0.05) and the target 1.55; residual
    3 - 1.55 = 1.45, L = 2.1025; gradient 2 * 1.45 / 0.5 = 5.8. seq_kl = (0 + 0.5) / 2."""
    policy = torch.tensor([[-1.0, -2.0], [-1.0, -INF]], requires_grad=True)
    old = torch.tensor([[-1.5, -2.5], [-0.5, NAN]])
    ref = torch.tensor([[-2.0, -2.0], [-1.0, NAN]])
    mask = torch.tensor([[True, True], [True, False]])
    out = rebel_loss(policy, old, torch.tensor([2.0, 0.5]), mask, ref_logps=ref, eta=0.5, beta=0.1)
    total = _mean_over_pairs(out, mask)
    _close(total, 1.45**2)
    _close(_grad(total, policy), [[5.8, 5.8], [-5.8, 0.0]])
    _close(out.metrics["seq_kl"], 0.25)
    _close(out.metrics["reward_diff_abs"], 1.55)


def test_p3o_joint_by_hand():
    """Four pairs of one-token completions, eps = 0.2, c = 10; d = ln r_1 - ln r_2, w = r_1 r_2, J = w min(D d,
    D clip(d, -0.2, 0.2)) / 2, L = -J; under the mean over the 4 pairs each gradient is divided by 4.
    A: D = 1 - 0 = 1, ln r = (0.1, -0.05): d = 0.15 inside, w = e^0.05, L = -0.075 w; dL/d ln pi = (-w/2, w/2).
    B: D = 0 - 2 = -2, ln r = (-0.3, 0.1): d = -0.4; D d = 0.8 > D clip(d) = 0.4, so the clip holds J at
       w 0.4 / 2 (w = e^-0.2) and the gradient is 0.
    C: D = 3 - 5 = -2, ln r = (0.3, -0.1): d = 0.4; D d = -0.8 < D clip(d) = -0.4: no clip on the losing side,
       w = e^0.2, L = 0.4 w, dL/d ln pi = (w, -w).
    D: D = -1, ln r = (3, 0): w = e^3 > c is capped at 10; D d = -3 < -0.2, L = 15, dL/d ln pi = (5, -5).
    clip_frac = 1/4, weight_mean = mean of (e^0.05, e^-0.2, e^0.2, e^3) (before the cap)."""
    ratios = [0.1, -0.05, -0.3, 0.1, 0.3, -0.1, 3.0, 0.0]
    policy, old, rewards, mask = _single_tokens(ratios, [1.0, 0.0, 0.0, 2.0, 3.0, 5.0, 0.0, 1.0])
    out = p3o_loss(policy, old, rewards, mask)
    wa, wb, wc = math.exp(0.05), math.exp(-0.2), math.exp(0.2)
    pair_losses = [-0.075 * wa, -0.2 * wb, 0.4 * wc, 15.0]
    _close(out.loss.squeeze(1), [x for x in pair_losses for _ in range(2)])
    total = _mean_over_pairs(out, mask)
    _close(total, sum(pair_losses) / 4)
    _close(_grad(total, policy).squeeze(1), [-wa / 8, wa / 8, 0.0, 0.0, wc / 4, -wc / 4, 1.25, -1.25])
    _close(out.metrics["clip_frac"], 0.25)
    _close(out.metrics["weight_mean"], (wa + wb + wc + math.exp(3.0)) / 4)
    _close(out.metrics["reward_diff_abs"], 1.5)


def test_p3o_separate_by_hand():
    """clipping = "separate", eps = 0.2: J = [sg(r_2) min(r_1 D, clip(r_1) D) + sg(r_1) min(-r_2 D, -clip(r_2) D)] / 2
    (weights within [1/10, 10]).
    A: D = 1, ln r = (0.1, -0.05), nothing clipped: J = (r_2 r_1 - r_1 r_2) / 2 = 0, but dJ/d ln pi_1 =
       r_1 r_2 / 2 and dJ/d ln pi_2 = -r_1 r_2 / 2 (r_1 r_2 = e^0.05): the joint form's gradient.
    B: D = 1, ln r = (0.5, 0): r_1 = e^0.5 > 1.2 is clipped (term 1.2, gradient 0); J = (1.2 - e^0.5) / 2;
       dL/d ln pi_2 = e^0.5 / 2 (y2's term -r_2 weighted by sg(r_1) = e^0.5, halved).
    C: D = -1, ln r = (0, -0.5): y2's advantage is +1 and r_2 = e^-0.5 < 0.8 is below the clip but on the side
       it does not guard, so unclipped: J = (e^-0.5 (-1) + 1 e^-0.5) / 2 = 0; dL/d ln pi = (e^-0.5, -e^-0.5) / 2.
    Gradients of the mean over 3 pairs are divided by 3; clip_frac = (0 + 1/2 + 0) / 3."""
    policy, old, rewards, mask = _single_tokens([0.1, -0.05, 0.5, 0.0, 0.0, -0.5], [1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    out = p3o_loss(policy, old, rewards, mask, clipping="separate")
    e = math.exp
    total = _mean_over_pairs(out, mask)
    _close(total, (e(0.5) - 1.2) / 2 / 3)
    expected = [-e(0.05) / 2, e(0.05) / 2, 0.0, e(0.5) / 2, e(-0.5) / 2, -e(-0.5) / 2]
    _close(_grad(total, policy).squeeze(1), [g / 3 for g in expected])
    _close(out.metrics["clip_frac"], 1 / 6)


def test_copg_by_hand():
    """beta = 0.5. Row 0: ln pi = (-1, -2), ln pi_ref = (-2, -2): ln pi/pi_ref = 1. Row 1: ln pi = -3, ln pi_ref =
    -2.5: -0.5 (padding -inf / NaN). Rewards (1, 0). Eq. 7: R^pi_{beta/2} = (1 - 0.25 * 1, 0 - 0.25 * (-0.5)) =
    (0.75, 0.125), so l = 0.625 * 1 + (-0.625) * (-0.5) = 0.9375 and L = -0.9375, spread as 2 L / 3 = -0.625 over
    the 3 tokens. Gradient (eq. 18): dL/d ln pi(y) = -(R_beta(y) - R_beta(y')) = -((1 - 0.5) - (0 + 0.25)) =
    -0.25 at row 0's tokens, +0.25 at row 1's. seq_kl = (1 - 0.5) / 2."""
    policy = torch.tensor([[-1.0, -2.0], [-3.0, -INF]], requires_grad=True)
    ref = torch.tensor([[-2.0, -2.0], [-2.5, NAN]])
    mask = torch.tensor([[True, True], [True, False]])
    out = copg_loss(policy, torch.tensor([1.0, 0.0]), mask, ref_logps=ref, beta=0.5)
    _close(out.loss, [[-0.625, -0.625], [-0.625, 0.0]])
    total = _mean_over_pairs(out, mask)
    _close(total, -0.9375)
    _close(_grad(total, policy), [[-0.25, -0.25], [0.25, 0.0]])
    _close(out.metrics["reward_diff_abs"], 1.0)
    _close(out.metrics["reg_reward_diff_abs"], 0.25)
    _close(out.metrics["seq_kl"], 0.25)


def test_fixed_points():
    """REBEL's gradient vanishes when the log-ratio gap equals eta (r - r'); CoPG's when beta u = R(y) - R(y'),
    the optimum pi_* ~ pi_ref exp(R / beta) of Theorem 1, whatever the pair's sampling distribution."""
    mask = torch.ones(2, 1, dtype=torch.bool)
    rewards = torch.tensor([1.0, -0.5])
    old = torch.tensor([[-2.0], [-1.0]])
    policy = (old + torch.tensor([[0.9], [-0.3]])).requires_grad_()  # rho gap 1.2 = eta * 1.5 with eta = 0.8
    _close(_grad(_mean_over_pairs(rebel_loss(policy, old, rewards, mask, eta=0.8), mask), policy), [[0.0], [0.0]])
    ref = torch.tensor([[-3.0], [-0.7]])
    policy = (ref + torch.tensor([[2.0], [-1.0]])).requires_grad_()  # u = 3 = 1.5 / beta with beta = 0.5
    out = copg_loss(policy, rewards, mask, ref_logps=ref, beta=0.5)
    _close(_grad(_mean_over_pairs(out, mask), policy), [[0.0], [0.0]])


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", range(4))
def test_matches_slow_reference_and_aggregate_identity(name, seed):
    """On random ragged pairs (one pair with no tokens and NaN rewards, NaN / -inf padding) the vectorised loss
    equals the per-pair float64 loop: `aggregate(loss, mask, "seq_mean_token_sum")` is the mean of L_k over the
    pairs (0 for the empty pair), in value and in gradient; and each masked-in token holds 2 L_k / (n_2k +
    n_2k+1), every other position 0."""
    policy, old, ref, rewards, mask = _random(seed)
    out = _call(name, policy, old, ref, rewards, mask)
    total = _mean_over_pairs(out, mask)
    policy64 = policy.detach().double().requires_grad_()
    expected = _reference(name, policy64, old.double(), ref.double(), rewards.double(), mask)
    _close(total, expected, rtol=1e-5, atol=1e-5)
    _close(_grad(total, policy), _grad(expected, policy64), rtol=1e-5, atol=1e-5)
    tokens = mask.sum(dim=1)
    for k in range(mask.shape[0] // 2):
        rows = slice(2 * k, 2 * k + 2)
        pair = [2 * k, 2 * k + 1]
        pair_mask = mask[rows]
        l_k = _reference(name, policy64[pair], old[pair].double(), ref[pair].double(), rewards[pair].double(),
                         pair_mask).detach()
        n = int(tokens[rows].sum())
        expected_tokens = torch.where(pair_mask, 2 * l_k / max(n, 1), 0.0)
        _close(out.loss[rows], expected_tokens, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", range(5))
def test_invariant_to_a_reward_shift_per_pair(name, seed):
    """Adding any constant c_k to both rewards of pair k changes neither the loss nor its gradient: every loss
    sees the rewards only through r(y) - r(y') (P3O's reward equivalence, Definition 1)."""
    policy, old, ref, rewards, mask = _random(seed, empty_pair=False)
    shift = 10.0 * torch.randn(mask.shape[0] // 2, generator=torch.Generator().manual_seed(100 + seed))
    out = _call(name, policy, old, ref, rewards, mask)
    shifted = _call(name, policy, old, ref, rewards + shift.repeat_interleave(2), mask)
    _close(shifted.loss, out.loss, rtol=1e-5, atol=1e-5)
    _close(_grad(_mean_over_pairs(shifted, mask), policy), _grad(_mean_over_pairs(out, mask), policy),
           rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [3, 4])
def test_on_policy_gradients_are_rloo_with_two_samples(seed):
    """On-policy (pi_old = pi_theta, beta = 0) every pairwise loss follows the RLOO gradient with k = 2 (both
    reduced with seq_mean_token_sum): P3O's PPG exactly (either clipping; ratios are 1, nothing is clipped),
    CoPG twice it (Property 2 with RLOO's 1/k), REBEL 4 / eta times it (residual -D, gradient 2 (-D) / eta)."""
    policy, _, _, rewards, mask = _random(seed, empty_pair=False)
    old = policy.detach()
    rloo = rloo_loss(policy, old, leave_one_out(rewards, 2), mask)
    base = _grad(_mean_over_pairs(rloo, mask), policy)
    scaled = {
        1.0: [p3o_loss(policy, old, rewards, mask), p3o_loss(policy, old, rewards, mask, clipping="separate")],
        2.0: [copg_loss(policy, rewards, mask, beta=0.0)],
        4.0 / 0.5: [rebel_loss(policy, old, rewards, mask, eta=0.5)],
    }
    for factor, outs in scaled.items():
        for out in outs:
            _close(_grad(_mean_over_pairs(out, mask), policy), factor * base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_extreme_inputs_give_finite_loss_and_grad(name):
    """Log-ratios of +-100 (to pi_old and to pi_ref), a completion with no tokens next to one with tokens, a pair
    with no tokens at all (rewards NaN), NaN and -inf in every padding: loss, metrics, aggregate and gradient are
    finite, the loss is 0 and the gradient is 0 at every masked position."""
    policy = torch.tensor([[-100.0, 0.0, -1.0], [-1.0, NAN, -INF],
                           [NAN, NAN, NAN], [0.0, -100.0, NAN],
                           [-INF, NAN, 0.0], [NAN, -INF, -INF]], requires_grad=True)
    old = torch.tensor([[0.0, -100.0, -1.0], [99.0, -INF, NAN],
                        [NAN, -INF, 1.0], [-100.0, 0.0, -INF],
                        [NAN, NAN, NAN], [-INF, -INF, NAN]])
    ref = torch.tensor([[100.0, -100.0, 0.0], [-100.0, NAN, NAN],
                        [-INF, NAN, NAN], [0.0, 100.0, NAN],
                        [NAN, 0.0, -INF], [NAN, NAN, NAN]])
    mask = torch.tensor([[True, True, True], [True, False, False],
                         [False, False, False], [True, True, False],
                         [False, False, False], [False, False, False]])
    rewards = torch.tensor([1e3, -1e3, 2.0, -2.0, NAN, NAN])
    out = _call(name, policy, old, ref, rewards, mask)
    assert torch.isfinite(out.loss).all() and (out.loss[~mask] == 0).all()
    assert all(torch.isfinite(v) for v in out.metrics.values()), out.metrics
    total = _mean_over_pairs(out, mask)
    grad = _grad(total, policy)
    assert torch.isfinite(total) and torch.isfinite(grad).all()
    assert (grad[~mask] == 0).all()


@pytest.mark.parametrize("name", sorted(CASES))
def test_odd_batch_is_refused(name):
    policy, old, ref, rewards, mask = _random(0)
    with pytest.raises(ValueError, match="even"):
        _call(name, policy[:3], old[:3], ref[:3], rewards[:3], mask[:3])


def test_argument_checks():
    policy, old, ref, rewards, mask = _random(1)
    with pytest.raises(ValueError, match="rewards"):
        rebel_loss(policy, old, rewards[:-2], mask)
    with pytest.raises(ValueError, match="float"):
        copg_loss(policy, rewards.long(), mask, beta=0.0)
    with pytest.raises(ValueError, match="ref_logps"):
        copg_loss(policy, rewards, mask, ref_logps=ref[:, :-1])
    with pytest.raises(ValueError, match="ref_logps"):
        copg_loss(policy, rewards, mask)  # default beta = 0.06 > 0 needs the reference
    with pytest.raises(ValueError, match="ref_logps"):
        p3o_loss(policy, old, rewards, mask, beta=0.1)
    with pytest.raises(ValueError, match="bool"):
        p3o_loss(policy, old, rewards, mask.float())
    with pytest.raises(ValueError, match="eta"):
        rebel_loss(policy, old, rewards, mask, eta=0.0)
    with pytest.raises(ValueError, match="beta"):
        rebel_loss(policy, old, rewards, mask, ref_logps=ref, beta=-0.1)
    with pytest.raises(ValueError, match="clip_eps"):
        p3o_loss(policy, old, rewards, mask, clip_eps=1.5)
    with pytest.raises(ValueError, match="weight_cap"):
        p3o_loss(policy, old, rewards, mask, weight_cap=0.5)
    with pytest.raises(ValueError, match="clipping"):
        p3o_loss(policy, old, rewards, mask, clipping="both")
    with pytest.raises(TypeError):
        rebel_loss(policy, old, rewards, mask, None, 1.0)  # hyperparameters are keyword-only


def test_registered_for_the_online_rl_recipe():
    """Each loss is a `policy_gradient` objective under its name with `seq_mean_token_sum` as its default
    aggregation; its signature declares the tensors it reads (CoPG no `old_logps`: it needs no ratio) and the
    hyperparameters a config may set, checked and converted by `resolve_hyperparameters`."""
    for name, fn in (("rebel", rebel_loss), ("p3o", p3o_loss), ("copg", copg_loss)):
        assert get_objective(name, kind="policy_gradient") is fn
        assert fn.default_aggregation == "seq_mean_token_sum"
    assert loss_signature(copg_loss).tensors == ("policy_logps", "rewards", "mask", "ref_logps")
    assert loss_signature(rebel_loss).required == {"policy_logps", "old_logps", "rewards", "mask"}
    resolved = resolve_hyperparameters(p3o_loss, {"clipping": "separate", "clip_eps": "0.1"})
    assert resolved == {"clipping": "separate", "clip_eps": 0.1, "weight_cap": 10.0, "beta": 0.0}
    assert resolve_hyperparameters(rebel_loss, {"eta": 4}) == {"eta": 4.0, "beta": 0.0}
    with pytest.raises(ConfigError, match="clip_eps"):
        resolve_hyperparameters(copg_loss, {"clip_eps": 0.2})
    with pytest.raises(ConfigError):
        resolve_hyperparameters(p3o_loss, {"clipping": "both"})
    policy, old, ref, rewards, mask = _random(2)
    out = call_loss(copg_loss, {"policy_logps": policy, "rewards": rewards, "mask": mask, "ref_logps": ref}, {})
    assert out.loss.shape == mask.shape
    with pytest.raises(TypeError, match="old_logps"):
        call_loss(copg_loss, {"policy_logps": policy, "old_logps": old, "rewards": rewards, "mask": mask}, {})
