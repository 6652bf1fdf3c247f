"""Chunked log-probs and entropies (rlxf.ops.logprobs) against hand values and the full-softmax reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlxf.ops import entropy_from_logits, logprobs_from_hidden, logprobs_from_logits
from rlxf.testing import entropy_reference, logprobs_reference

B, T, H, V = 3, 5, 8, 13  # B*T = 15 rows: chunk sizes 4 and 7 leave a ragged last chunk
CHUNKS = [1, 4, 7, 15, 1024]


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


def _data(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype) / math.sqrt(H)
    labels = torch.randint(0, V, (B, T), generator=g)
    return hidden, weight, labels


def test_hand_computed_logprob_and_entropy():
    """logits (0, ln 2, ln 3) give p = (1, 2, 3) / 6, so log p[2] = ln(1/2) and
    H = -(1/6 ln 1/6 + 1/3 ln 1/3 + 1/2 ln 1/2). At temperature 2 the logits halve: p ∝ (1, √2, √3),
    so log p[0] = -ln(1 + √2 + √3)."""
    logits = torch.tensor([[[0.0, math.log(2.0), math.log(3.0)]]])
    labels = torch.tensor([[2]])
    expected_h = -(1 / 6 * math.log(1 / 6) + 1 / 3 * math.log(1 / 3) + 1 / 2 * math.log(1 / 2))
    _close(logprobs_from_logits(logits, labels), torch.tensor([[math.log(0.5)]]))
    _close(entropy_from_logits(logits), torch.tensor([[expected_h]]))
    lp_t2 = logprobs_from_logits(logits, torch.tensor([[0]]), temperature=2.0)
    _close(lp_t2, torch.tensor([[-math.log(1 + math.sqrt(2) + math.sqrt(3))]]))
    # Same numbers through the fused head: hidden = identity rows, weight = the logits column.
    lp, ent = logprobs_from_hidden(torch.ones(1, 1, 1), logits.reshape(3, 1), labels, with_entropy=True)
    _close(lp, torch.tensor([[math.log(0.5)]]))
    _close(ent, torch.tensor([[expected_h]]))


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_from_logits_matches_reference_value_and_grad(chunk_size, temperature):
    hidden, weight, labels = _data()
    logits = (hidden @ weight.T * 3.0).requires_grad_()
    upstream = torch.randn(B, T, generator=torch.Generator().manual_seed(1))
    lp = logprobs_from_logits(logits, labels, chunk_size=chunk_size, temperature=temperature)
    assert lp.dtype == torch.float32 and lp.shape == (B, T)
    (lp * upstream).sum().backward()

    logits64 = logits.detach().double().requires_grad_()
    ref = logprobs_reference(logits64, labels, temperature=temperature)
    (ref * upstream.double()).sum().backward()
    _close(lp, ref)
    _close(logits.grad, logits64.grad)


def test_logprobs_from_logits_non_contiguous_and_bf16():
    """A shifted view `logits[:, :-1]` cannot be flattened without a copy: rows are gathered per chunk."""
    hidden, weight, labels = _data(2)
    full = (hidden @ weight.T).requires_grad_()
    shifted = full[:, :-1]
    lp = logprobs_from_logits(shifted, labels[:, 1:], chunk_size=4)
    lp.sum().backward()
    full64 = full.detach().double().requires_grad_()
    logprobs_reference(full64[:, :-1], labels[:, 1:]).sum().backward()
    _close(lp, logprobs_reference(full.detach()[:, :-1], labels[:, 1:]))
    _close(full.grad, full64.grad)

    bf16 = full.detach().bfloat16().requires_grad_()
    lp16 = logprobs_from_logits(bf16, labels, chunk_size=4)
    lp16.sum().backward()
    assert lp16.dtype == torch.float32 and bf16.grad.dtype == torch.bfloat16
    _close(lp16, logprobs_reference(bf16.detach(), labels))  # upcast before the softmax: exact up to fp32


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_logprobs_from_hidden_matches_reference_value_and_grads(chunk_size, temperature):
    hidden, weight, labels = _data(3)
    hidden.requires_grad_()
    weight.requires_grad_()
    upstream = torch.randn(B, T, generator=torch.Generator().manual_seed(4))
    lp, ent = logprobs_from_hidden(
        hidden, weight, labels, chunk_size=chunk_size, temperature=temperature, with_entropy=True
    )
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32 and not ent.requires_grad
    (lp * upstream).sum().backward()

    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    logits64 = h64 @ w64.T
    ref = logprobs_reference(logits64, labels, temperature=temperature)
    (ref * upstream.double()).sum().backward()
    _close(lp, ref)
    _close(ent, entropy_reference(logits64.detach(), temperature=temperature))
    _close(hidden.grad, h64.grad)
    _close(weight.grad, w64.grad)


def test_logprobs_from_hidden_without_entropy_returns_none():
    hidden, weight, labels = _data()
    lp, ent = logprobs_from_hidden(hidden, weight, labels)
    assert ent is None and lp.shape == (B, T)


def test_tied_embedding_gradient_matches_unfused():
    """The head weight is also the input embedding: its grad sums both uses, as with nn.Linear."""
    torch.manual_seed(5)
    ids = torch.randint(0, V, (B, T))
    labels = torch.randint(0, V, (B, T))

    def run(fused):
        torch.manual_seed(6)
        emb = torch.nn.Embedding(V, H)
        proj = torch.nn.Linear(H, H)
        hidden = torch.tanh(proj(emb(ids)))
        if fused:
            lp, _ = logprobs_from_hidden(hidden, emb.weight, labels, chunk_size=4)
        else:
            lp = torch.log_softmax(F.linear(hidden, emb.weight), -1).gather(-1, labels[..., None])[..., 0]
        lp.sum().backward()
        return lp.detach(), emb.weight.grad, proj.weight.grad

    for fused, unfused in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [4, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_frozen_weight_hidden_grad_formed_in_forward(chunk_size, temperature):
    """With a frozen head the hidden grad per unit upstream grad is formed in the forward pass (no recompute);
    it must equal the reference grad, and the weight gets none."""
    hidden, weight, labels = _data(7)
    hidden.requires_grad_()
    upstream = torch.randn(B, T, generator=torch.Generator().manual_seed(8))
    lp, ent = logprobs_from_hidden(
        hidden, weight, labels, chunk_size=chunk_size, temperature=temperature, with_entropy=True
    )
    (lp * upstream).sum().backward()
    assert weight.grad is None
    h64 = hidden.detach().double().requires_grad_()
    logits64 = h64 @ weight.double().T
    ref = logprobs_reference(logits64, labels, temperature=temperature)
    (ref * upstream.double()).sum().backward()
    _close(lp, ref)
    _close(ent, entropy_reference(logits64.detach(), temperature=temperature))
    _close(hidden.grad, h64.grad)


def test_no_grad_call_records_nothing():
    hidden, weight, labels = _data()
    hidden.requires_grad_()
    with torch.no_grad():
        lp, _ = logprobs_from_hidden(hidden, weight, labels)
    assert not lp.requires_grad


@pytest.mark.parametrize("train_head", [True, False])
def test_autocast_bf16_matches_unfused_autocast(train_head):
    """Under autocast the head matmul runs in bf16 like nn.Linear would; the softmax is float32. Compared
    with the unfused bf16 head (same bf16 logits), values agree to float32 precision of the softmax; the
    grads, computed from bf16 matmuls, to bf16 precision. fp32 master weights keep fp32 grads."""
    hidden, weight, labels = _data(8)
    hidden.requires_grad_()
    weight.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, ent = logprobs_from_hidden(hidden, weight, labels, chunk_size=4, with_entropy=True)
    lp.sum().backward()
    assert (
        lp.dtype == torch.float32
        and hidden.grad.dtype == torch.float32
        and weight.grad.dtype == torch.float32
    )

    h2 = hidden.detach().clone().requires_grad_()
    w2 = weight.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(h2, w2)
    assert logits.dtype == torch.bfloat16
    ref = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None])[..., 0]
    ref.sum().backward()
    _close(lp, ref, rtol=1e-5, atol=1e-5)
    _close(ent, entropy_reference(logits.detach().float()), rtol=1e-5, atol=1e-5)
    _close(hidden.grad, h2.grad, rtol=2e-2, atol=2e-2)
    if train_head:
        assert weight.grad.dtype == torch.float32
        _close(weight.grad, w2.grad, rtol=2e-2, atol=2e-2)


def test_pure_bf16_inputs():
    hidden, weight, labels = _data(9, dtype=torch.bfloat16)
    hidden.requires_grad_()
    weight.requires_grad_()
    lp, _ = logprobs_from_hidden(hidden, weight, labels, chunk_size=4)
    lp.sum().backward()
    assert lp.dtype == torch.float32
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16
    ref = logprobs_reference((hidden.detach() @ weight.detach().T).float(), labels)
    _close(lp, ref, rtol=1e-5, atol=1e-5)


def test_backward_saves_no_vocabulary_sized_tensor():
    """Autograd keeps only hidden, weight, labels and the per-row log-sum-exp: nothing (B*T, V)."""
    n, hid, vocab = 64, 4, 512
    hidden = torch.randn(1, n, hid, requires_grad=True)
    weight = torch.randn(vocab, hid, requires_grad=True)
    labels = torch.randint(0, vocab, (1, n))
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, _ = logprobs_from_hidden(hidden, weight, labels, chunk_size=16)
    assert max(saved) <= vocab * hid < n * vocab
    lp.sum().backward()


def test_entropy_from_logits_matches_reference():
    hidden, weight, labels = _data(10)
    logits = hidden @ weight.T * 4.0
    for chunk_size in (1, 4, 1024):
        for temperature in (1.0, 0.5):
            ent = entropy_from_logits(logits, chunk_size=chunk_size, temperature=temperature)
            _close(ent, entropy_reference(logits, temperature=temperature))


def test_extreme_logits_stay_finite():
    """Logits of +-1e4 (and -inf for a banned token) give finite log-probs and gradients."""
    logits = torch.tensor([[[1e4, -1e4, 0.0, float("-inf")], [0.0, 0.0, 1e4, 1e4]]], requires_grad=True)
    labels = torch.tensor([[1, 2]])
    lp = logprobs_from_logits(logits, labels, chunk_size=1)
    lp.sum().backward()
    _close(lp, torch.tensor([[-2e4, -math.log(2.0)]]))
    assert torch.isfinite(logits.grad).all()
    ent = entropy_from_logits(logits.detach())
    _close(ent, torch.tensor([[0.0, math.log(2.0)]]))


def test_input_validation():
    hidden, weight, labels = _data()
    with pytest.raises(ValueError, match="labels"):
        logprobs_from_hidden(hidden, weight, labels[:, :-1])
    with pytest.raises(ValueError, match="weight"):
        logprobs_from_hidden(hidden, weight[:, :-1], labels)
    with pytest.raises(ValueError, match="chunk_size"):
        logprobs_from_logits(hidden @ weight.T, labels, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(hidden @ weight.T, labels, temperature=0.0)
    with pytest.raises(ValueError, match="integer"):
        logprobs_from_logits(hidden @ weight.T, labels.float())
