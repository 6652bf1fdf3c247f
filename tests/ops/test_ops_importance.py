"""Truncated importance sampling between sampler and trainer (rlxf.ops.importance): hand values, KL direction,
extremes, argument checks."""

import math

import pytest
import torch

from rlxf.ops.importance import sampler_mismatch_metrics, truncated_importance_weights

NAN, NEG_INF = float("nan"), float("-inf")


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), rtol=rtol, atol=atol
    )


def _case():
    """One row: trainer log-prob log(0.5) everywhere, sampler log(0.5 / rho) for rho = (0.5, 1, 4); a fourth,
    masked token holds garbage (NaN, -inf)."""
    rhos = [0.5, 1.0, 4.0]
    old = torch.tensor([[math.log(0.5)] * 3 + [NAN]])
    sampler = torch.tensor([[math.log(0.5 / r) for r in rhos] + [NEG_INF]])
    mask = torch.tensor([[True, True, True, False]])
    return rhos, old, sampler, mask


def test_truncated_importance_weights_by_hand():
    """w = min(pi_old / mu, C) with C = 2: rho = (0.5, 1, 4) gives (0.5, 1, 2), and 0 at the masked token.
    tis_weight_mean = 3.5 / 3; one token of three was truncated; the k3 estimate of KL(mu || pi_old) is the mean
    of rho - 1 - log rho = (ln 2 - 1/2, 0, 3 - ln 4); |log pi_old - log mu| = |log rho| averages
    (ln 2 + 0 + 2 ln 2) / 3 = ln 2."""
    rhos, old, sampler, mask = _case()
    weights, metrics = truncated_importance_weights(old, sampler, mask, cap=2.0)
    _close(weights, [[0.5, 1.0, 2.0, 0.0]])
    assert weights.dtype == torch.float32
    _close(metrics["tis_weight_mean"], 3.5 / 3)
    _close(metrics["tis_truncated_frac"], 1 / 3)
    _close(metrics["sampler_trainer_kl"], sum(r - 1 - math.log(r) for r in rhos) / 3)
    _close(metrics["sampler_trainer_logp_absdiff"], math.log(2.0))
    assert set(metrics) == {"tis_weight_mean", "tis_truncated_frac", "sampler_trainer_kl",
                            "sampler_trainer_logp_absdiff"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in metrics.values())


def test_weights_and_metrics_are_constants():
    """Inputs that require grad (the trainer's log-probs straight from a forward) give weights and metrics with
    no graph: the weight multiplies the loss, it must not be differentiated."""
    _, old, sampler, mask = _case()
    old, sampler = old.clone().requires_grad_(), sampler.clone().requires_grad_()
    weights, metrics = truncated_importance_weights(old, sampler, mask, cap=2.0)
    assert not weights.requires_grad and not any(v.requires_grad for v in metrics.values())
    assert not any(v.requires_grad for v in sampler_mismatch_metrics(old, sampler, mask).values())


def test_mismatch_metrics_match_the_tis_ones_and_vanish_without_mismatch():
    _, old, sampler, mask = _case()
    _, tis = truncated_importance_weights(old, sampler, mask, cap=2.0)
    mismatch = sampler_mismatch_metrics(old, sampler, mask)
    assert set(mismatch) == {"sampler_trainer_kl", "sampler_trainer_logp_absdiff"}
    for name, value in mismatch.items():
        _close(value, tis[name])
    same = sampler_mismatch_metrics(old, old, mask)
    assert float(same["sampler_trainer_kl"]) == 0.0 and float(same["sampler_trainer_logp_absdiff"]) == 0.0
    weights, metrics = truncated_importance_weights(old, old, mask, cap=2.0)
    _close(weights, [[1.0, 1.0, 1.0, 0.0]])
    assert float(metrics["tis_truncated_frac"]) == 0.0


def test_sampler_trainer_kl_is_kl_from_the_sampler():
    """Tokens drawn from mu = (1/2, 1/2) over a two-token vocabulary, listed once each (so the mean over tokens
    is the exact expectation under mu); pi_old = (1/4, 3/4). The k3 mean is (ln 2 - 1/2 + 1/2 - ln 1.5) / 2 =
    ln(4/3) / 2 = KL(mu || pi_old) ~ 0.1438, not KL(pi_old || mu) = 1/4 ln(1/2) + 3/4 ln(3/2) ~ 0.1308."""
    sampler = torch.log(torch.tensor([[0.5, 0.5]]))
    old = torch.log(torch.tensor([[0.25, 0.75]]))
    mask = torch.ones(1, 2, dtype=torch.bool)
    kl = sampler_mismatch_metrics(old, sampler, mask)["sampler_trainer_kl"]
    _close(kl, 0.5 * math.log(4 / 3))
    reverse = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert abs(float(kl) - reverse) > 1e-2


def test_extreme_inputs():
    """Log-ratios of +-100 give the cap and exp(-20) (the clamp); a fully masked row of NaN/-inf and a batch with
    no token at all give weights 0 and finite metrics (0)."""
    old = torch.tensor([[0.0, -100.0, -1.0], [NAN, NEG_INF, 0.0]])
    sampler = torch.tensor([[-100.0, 0.0, -1.0], [NEG_INF, NAN, 5.0]])
    mask = torch.tensor([[True, True, True], [False, False, False]])
    weights, metrics = truncated_importance_weights(old, sampler, mask, cap=2.0)
    _close(weights, [[2.0, math.exp(-20.0), 1.0], [0.0, 0.0, 0.0]], atol=1e-12)
    _close(metrics["tis_truncated_frac"], 1 / 3)
    _close(metrics["sampler_trainer_logp_absdiff"], 200 / 3)
    assert all(torch.isfinite(v) for v in metrics.values())
    empty = torch.zeros(2, 3, dtype=torch.bool)
    weights, metrics = truncated_importance_weights(old, sampler, empty, cap=2.0)
    assert (weights == 0).all() and all(float(v) == 0.0 for v in metrics.values())


def test_half_precision_inputs_give_float32():
    _, old, sampler, mask = _case()
    weights, metrics = truncated_importance_weights(old.bfloat16(), sampler.bfloat16(), mask, cap=2.0)
    assert weights.dtype == torch.float32 and all(v.dtype == torch.float32 for v in metrics.values())
    _close(weights, [[0.5, 1.0, 2.0, 0.0]], rtol=1e-2)


def test_argument_checks():
    _, old, sampler, mask = _case()
    for cap in (0.0, -1.0, float("inf"), NAN):
        with pytest.raises(ValueError, match="cap"):
            truncated_importance_weights(old, sampler, mask, cap=cap)
    with pytest.raises(ValueError, match="sampler_logps"):
        truncated_importance_weights(old, sampler[:, :-1], mask, cap=2.0)
    with pytest.raises(ValueError, match="old_logps"):
        sampler_mismatch_metrics(old.long(), sampler, mask)
    with pytest.raises(ValueError, match="bool"):
        sampler_mismatch_metrics(old, sampler, mask.float())
    with pytest.raises(TypeError):
        truncated_importance_weights(old, sampler, mask, 2.0)  # the cap is keyword-only
