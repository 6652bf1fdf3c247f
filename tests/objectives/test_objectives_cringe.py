"""Pairwise Cringe (rlxf.objectives.cringe_pairwise_loss): hand values, the loop reference, top-k sampling,
the gate, extremes and input checks."""

import math

import pytest
import torch

from rlxf.objectives import cringe_pairwise_loss, get_objective
from rlxf.objectives.cringe import sample_cringe_positives
from rlxf.testing.cringe_reference import cringe_pairwise_reference


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), torch.as_tensor(expected).double(), rtol=rtol, atol=atol
    )


def _softplus(x):
    return math.log1p(math.exp(x))


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _hand_case():
    """B = 3, T = 2, V = 3, k = 1 (the positive is then the best token other than the negative: no randomness).
    Row 0: t0 logits (2, 1, 0), negative 0 -> positive 1, term softplus(2 - 1); t1 (0, 3, 1), negative 2 ->
    positive 1, term softplus(1 - 3). Row 1: t0 (1, 0, 2), negative 1 (not in the top 2, so the 2nd best is
    dropped) -> positive 2, term softplus(0 - 2); t1 masked (id -100 must be ignored). Row 2: fully masked."""
    logits = torch.tensor(
        [
            [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]],
            [[1.0, 0.0, 2.0], [5.0, 5.0, 5.0]],
            [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ],
        requires_grad=True,
    )
    ids = torch.tensor([[0, 2], [1, -100], [0, 0]])
    mask = torch.tensor([[True, True], [True, False], [False, False]])
    chosen = torch.tensor([-2.0, -3.0, -4.0], requires_grad=True)
    rejected = torch.tensor([-1.0, -5.0, -4.0], requires_grad=True)
    lengths = torch.tensor([2.0, 3.0, 4.0])
    return chosen, rejected, lengths, logits, ids, mask


def test_cringe_by_hand():
    """alpha = 0.5, b = 0, tau = 2. NLL = -logp_w / |y_w| = (1, 1, 1). M = logp_w - logp_l = (-1, 2, 0), so
    g = sigma((0 - M) / 2) = (sigma(0.5), sigma(-1), 0.5). Cringe token means: row 0 (sp(1) + sp(-2)) / 2,
    row 1 sp(-2), row 2 0 (no tokens). loss = NLL + alpha g L_Cr.
    Gradient at row 0, t0: d/ds[neg] = alpha g / 2 * sigma(s[neg] - s[pos]) = 0.25 sigma(0.5) sigma(1), and the
    opposite on the positive; other vocabulary entries and masked positions get 0. d/d logp_w = -1/|y_w|
    (the gate is detached), and logp_l gets no gradient."""
    chosen, rejected, lengths, logits, ids, mask = _hand_case()
    out = cringe_pairwise_loss(chosen, rejected, lengths, logits, ids, mask, alpha=0.5, margin=0.0, tau=2.0, k=1)
    g0, g1 = _sigmoid(0.5), _sigmoid(-1.0)
    cr0, cr1 = (_softplus(1.0) + _softplus(-2.0)) / 2, _softplus(-2.0)
    _close(out.loss, [1 + 0.5 * g0 * cr0, 1 + 0.5 * g1 * cr1, 1.0])
    grad_logits, grad_w, grad_l = torch.autograd.grad(out.loss.sum(), [logits, chosen, rejected], allow_unused=True)
    expected = torch.zeros(3, 2, 3)
    d00 = 0.25 * g0 * _sigmoid(1.0)
    expected[0, 0, 0], expected[0, 0, 1] = d00, -d00
    d01 = 0.25 * g0 * _sigmoid(-2.0)
    expected[0, 1, 2], expected[0, 1, 1] = d01, -d01
    d10 = 0.5 * g1 * _sigmoid(-2.0)
    expected[1, 0, 1], expected[1, 0, 2] = d10, -d10
    _close(grad_logits, expected)
    _close(grad_w, [-0.5, -1 / 3, -0.25])
    assert grad_l is None  # logp_l only enters the detached gate
    _close(out.metrics["gate"], (g0 + g1 + 0.5) / 3)
    _close(out.metrics["nll"], 1.0)
    _close(out.metrics["cringe"], (cr0 + cr1) / 3)
    _close(out.metrics["positive_logit_gap"], (-1.0 + 2.0 + 2.0) / 3)
    _close(out.metrics["reward_margin"], (-1.0 + 2.0 + 0.0) / 3)


def _random_case(seed, batch=4, length=6, vocab=11):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(batch, length, vocab, generator=g)).requires_grad_()
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    lengths = torch.tensor([length, 3, 1, 0])[:batch]
    mask = torch.arange(length)[None, :] < lengths[:, None]
    chosen = (-10 * torch.rand(batch, generator=g)).requires_grad_()
    rejected = -10 * torch.rand(batch, generator=g)
    chosen_lengths = torch.randint(1, 8, (batch,), generator=g).float()
    return chosen, rejected, chosen_lengths, logits, ids, mask


@pytest.mark.parametrize(("seed", "k"), [(0, 3), (1, 1), (2, 5), (3, 20)])
def test_matches_loop_reference(seed, k):
    """Loss, sampled positives and gradients (logits and logp_w) agree with the per-token loop reference that
    replays the same uniform draws. k = 20 > V - 1 = 10 makes every other token a candidate."""
    chosen, rejected, lengths, logits, ids, mask = _random_case(seed)
    kwargs = {"alpha": 0.7, "margin": -2.0, "tau": 3.0, "k": k}
    out = cringe_pairwise_loss(chosen, rejected, lengths, logits, ids, mask,
                               generator=torch.Generator().manual_seed(100 + seed), **kwargs)
    uniforms = torch.rand(ids.shape, generator=torch.Generator().manual_seed(100 + seed))
    ref, ref_positives = cringe_pairwise_reference(chosen, rejected, lengths, logits, ids, mask, uniforms, **kwargs)
    _close(out.loss, ref)
    positives = sample_cringe_positives(logits.detach(), torch.where(mask, ids, 0), k=k,
                                        generator=torch.Generator().manual_seed(100 + seed))
    for i, row in enumerate(ref_positives):
        for t, token in enumerate(row):
            if token is not None:
                assert int(positives[i, t]) == token
    fast = torch.autograd.grad(out.loss.sum(), [logits, chosen])
    slow = torch.autograd.grad(ref.sum(), [logits, chosen])
    for a, b in zip(fast, slow, strict=True):
        _close(a, b)


def test_sampling_distribution():
    """Logits (3, 2, 1, 0, -1, -2), negative token 1, k = 3: candidates {0, 2, 3} with probabilities
    proportional to (e^3, e^1, e^0); never the negative, never outside the top-k. 20000 draws: frequencies
    within 0.015 of (0.8438, 0.1142, 0.0420)."""
    n = 20000
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0, -2.0]).expand(1, n, 6)
    draws = sample_cringe_positives(logits, torch.ones(1, n, dtype=torch.long), k=3,
                                    generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draws.flatten(), minlength=6).double() / n
    z = math.exp(3) + math.exp(1) + 1
    _close(counts, [math.exp(3) / z, 0.0, math.exp(1) / z, 1 / z, 0.0, 0.0], rtol=0, atol=0.015)


def test_same_generator_same_loss():
    chosen, rejected, lengths, logits, ids, mask = _random_case(5)
    a = cringe_pairwise_loss(chosen, rejected, lengths, logits, ids, mask, generator=torch.Generator().manual_seed(7))
    b = cringe_pairwise_loss(chosen, rejected, lengths, logits, ids, mask, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.loss, b.loss)


def test_gate_behaviour():
    """g = sigma((b - M) / tau): a pair separated far beyond the margin (M - b = 100) costs only its NLL; a pair
    far inside (M - b = -100) gets the full alpha * L_Cr; at M = b the gate is 1/2. A larger tau softens it."""
    chosen, _, lengths, logits, ids, mask = _random_case(6, batch=3)
    margin, alpha = 5.0, 2.0
    rejected = chosen.detach() - torch.tensor([margin + 100.0, margin - 100.0, margin])
    out = cringe_pairwise_loss(chosen, rejected, lengths, logits, ids, mask, alpha=alpha, margin=margin, tau=1.0,
                               generator=torch.Generator().manual_seed(0))
    nll = -chosen.detach() / lengths
    cringe_off = cringe_pairwise_loss(chosen, rejected, lengths, logits, ids, mask, alpha=0.0, margin=margin,
                                      tau=1.0, generator=torch.Generator().manual_seed(0))
    _close(cringe_off.loss, nll)
    uniforms = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0))
    ref, _ = cringe_pairwise_reference(chosen, rejected, lengths, logits, ids, mask, uniforms, alpha=1.0,
                                       margin=1e9, tau=1.0, k=5)  # gate = 1: ref - nll = L_Cr
    full_cringe = (ref - nll).detach()
    _close(out.loss, nll + alpha * torch.tensor([0.0, 1.0, 0.5]) * full_cringe)
    soft = cringe_pairwise_loss(chosen, chosen.detach() - 6.0, lengths, logits, ids, mask, margin=margin, tau=10.0,
                                generator=torch.Generator().manual_seed(0))
    sharp = cringe_pairwise_loss(chosen, chosen.detach() - 6.0, lengths, logits, ids, mask, margin=margin, tau=0.1,
                                 generator=torch.Generator().manual_seed(0))
    assert 0.45 < float(soft.metrics["gate"]) < 0.5 and float(sharp.metrics["gate"]) < 1e-4


def test_toy_training_pushes_rejected_tokens_down():
    """Free logits for one chosen and one rejected sequence (T = 4, V = 8), Adam for 150 steps: the NLL drives
    the chosen tokens' mean probability above 0.9 and the gated Cringe term drives the rejected tokens' mean
    probability (0.125 at the start) below 0.05, after which the gate has mostly switched itself off."""
    torch.manual_seed(0)
    chosen_ids, rejected_ids = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[5, 6, 7, 0]])
    chosen_logits = torch.zeros(1, 4, 8, requires_grad=True)
    rejected_logits = torch.zeros(1, 4, 8, requires_grad=True)
    optimizer = torch.optim.Adam([chosen_logits, rejected_logits], lr=0.1)
    mask, generator = torch.ones(1, 4, dtype=torch.bool), torch.Generator().manual_seed(0)

    def seq_logps(logits, ids):
        return torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)

    for _ in range(150):
        out = cringe_pairwise_loss(
            seq_logps(chosen_logits, chosen_ids).sum(1), seq_logps(rejected_logits, rejected_ids).sum(1),
            torch.tensor([4.0]), rejected_logits, rejected_ids, mask, alpha=1.0, margin=0.0, tau=1.0, k=3,
            generator=generator,
        )
        optimizer.zero_grad()
        out.loss.mean().backward()
        optimizer.step()
    with torch.no_grad():
        assert seq_logps(chosen_logits, chosen_ids).exp().mean() > 0.9
        assert seq_logps(rejected_logits, rejected_ids).exp().mean() < 0.05
        assert float(out.metrics["gate"]) < 0.5


@pytest.mark.parametrize("scale", [100.0, -100.0])
def test_extremes_are_finite(scale):
    """Logits of magnitude ~100 (and 1e4), sequence margins of +-100: finite loss and gradients."""
    chosen, _, lengths, logits, ids, mask = _random_case(7)
    for size in (scale, 100 * scale):
        big = (logits.detach() * size).requires_grad_()
        rejected = chosen.detach() + scale
        generator = torch.Generator().manual_seed(1)
        out = cringe_pairwise_loss(chosen, rejected, lengths, big, ids, mask, generator=generator)
        grads = torch.autograd.grad(out.loss.sum(), [big, chosen])
        assert torch.isfinite(out.loss).all() and all(torch.isfinite(g).all() for g in grads)


def test_low_precision_logits():
    """bfloat16 logits: only the gathered values are upcast; the loss equals that of the same values in float32."""
    chosen, rejected, lengths, logits, ids, mask = _random_case(8)
    low = logits.detach().bfloat16()
    a = cringe_pairwise_loss(chosen, rejected, lengths, low, ids, mask, generator=torch.Generator().manual_seed(3))
    b = cringe_pairwise_loss(chosen, rejected, lengths, low.float(), ids, mask,
                             generator=torch.Generator().manual_seed(3))
    assert a.loss.dtype == torch.float32
    _close(a.loss, b.loss)


def test_bad_inputs():
    chosen, rejected, lengths, logits, ids, mask = _random_case(9)
    with pytest.raises(ValueError, match=r"rejected_logits must be a float \(B, T, V\)"):
        cringe_pairwise_loss(chosen, rejected, lengths, logits[..., 0], ids, mask)
    with pytest.raises(ValueError, match="rejected_logits has 3 rows"):
        cringe_pairwise_loss(chosen, rejected, lengths, logits[:3], ids[:3], mask[:3])
    with pytest.raises(ValueError, match="rejected_mask must be a bool"):
        cringe_pairwise_loss(chosen, rejected, lengths, logits, ids, mask.float())
    with pytest.raises(ValueError, match="rejected_ids must be a long"):
        cringe_pairwise_loss(chosen, rejected, lengths, logits, ids.float(), mask)
    bad_ids = ids.clone()
    bad_ids[0, 0] = 11
    with pytest.raises(ValueError, match=r"rejected_ids must lie in \[0, V = 11\)"):
        cringe_pairwise_loss(chosen, rejected, lengths, logits, bad_ids, mask)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        cringe_pairwise_loss(chosen, rejected, lengths, logits[..., :1], torch.zeros_like(ids), mask)
    with pytest.raises(ValueError, match="k must be >= 1"):
        cringe_pairwise_loss(chosen, rejected, lengths, logits, ids, mask, k=0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        cringe_pairwise_loss(chosen, rejected, lengths, logits, ids, mask, tau=0.0)
    with pytest.raises(ValueError, match="chosen_lengths has 3 rows"):
        cringe_pairwise_loss(chosen, rejected, lengths[:3], logits, ids, mask)


def test_registered_as_preference():
    assert get_objective("cringe_pairwise", kind="preference") is cringe_pairwise_loss
