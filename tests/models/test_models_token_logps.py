"""Log-probs of the labelled tokens of whole sequences (rlxf.models.token_logps): the packed path equals the padded
one (values, argmax hits and every parameter gradient), a sequence packed with others gets exactly what it gets
alone (nothing crosses between sequences), and both equal a plain full-softmax computation."""
import pytest
import torch

from rlxf.models import load_policy
from rlxf.models.packed import supports_packed_forward
from rlxf.models.token_logps import labelled_token_logps, shifted_label_mask

SEQUENCES = [[5, 9, 12, 7, 30, 31, 2], [8, 3, 3], [40, 41, 42, 43, 44, 45, 46, 47, 48, 2], [11, 12]]
LABELS = [[False, False, False, True, True, True, True], [False, True, True],
          [False, False, True, True, False, False, True, True, True, True], [True, True]]


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_policy("tiny", seed=3)
    model = model.double()  # the network in float64; the log-softmax runs in float32 (rlxf.ops.logprobs) on both paths
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, tokenizer.pad_token_id


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(model, pad, packed, sequences=SEQUENCES, labels=LABELS):
    model.zero_grad(set_to_none=True)
    out = labelled_token_logps(model, sequences, labels, pad_token_id=pad, packed=packed)
    (out.logps.sum() * 0.5).backward()
    return out, _grads(model)


def test_shifted_label_mask():
    mask = shifted_label_mask([[True, False, True], [False, True]])
    assert mask.tolist() == [[False, True], [True, False]]


def test_packed_equals_padded_values_hits_and_gradients(tiny):
    model, pad = tiny
    assert supports_packed_forward(model)
    packed, packed_grads = _run(model, pad, None)
    padded, padded_grads = _run(model, pad, False)
    assert packed.slots["padding"] == 0 and padded.slots["padding"] > 0
    assert torch.equal(packed.mask, padded.mask) and torch.equal(packed.mask, shifted_label_mask(LABELS))
    torch.testing.assert_close(packed.logps, padded.logps, rtol=1e-6, atol=1e-6)  # float32 outputs
    assert torch.equal(packed.correct, padded.correct)
    assert packed_grads.keys() == padded_grads.keys() and len(packed_grads) == len(list(model.parameters()))
    for name, g in packed_grads.items():
        torch.testing.assert_close(g, padded_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_packed_sequence_gets_what_it_gets_alone(tiny):
    """Packing must not leak: each sequence of the packed batch has the log-probs of a batch of one."""
    model, pad = tiny
    with torch.no_grad():
        together = labelled_token_logps(model, SEQUENCES, LABELS, pad_token_id=pad, packed=True)
        for b, (seq, lab) in enumerate(zip(SEQUENCES, LABELS, strict=True)):
            alone = labelled_token_logps(model, [seq], [lab], pad_token_id=pad, packed=True)
            width = len(seq) - 1
            torch.testing.assert_close(together.logps[b, :width], alone.logps[0], rtol=1e-6, atol=1e-6)
            assert not together.mask[b, width:].any() and float(together.logps[b, width:].abs().sum()) == 0.0


def test_matches_a_full_softmax_over_the_plain_forward(tiny):
    model, pad = tiny
    with torch.no_grad():
        out = labelled_token_logps(model, SEQUENCES, LABELS, pad_token_id=pad)
        for b, (seq, lab) in enumerate(zip(SEQUENCES, LABELS, strict=True)):
            logits = model(torch.tensor([seq])).logits[0, :-1]
            logps = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(seq[1:])[:, None])[:, 0]
            hits = logits.argmax(dim=-1) == torch.tensor(seq[1:])
            on = torch.tensor(lab[1:])
            torch.testing.assert_close(out.logps[b, : len(seq) - 1], torch.where(on, logps, 0.0).float(),
                                       rtol=1e-6, atol=1e-6)
            assert torch.equal(out.correct[b, : len(seq) - 1], hits & on)


def test_refuses_sequences_without_a_prediction(tiny):
    model, pad = tiny
    with pytest.raises(ValueError, match=">= 2 tokens"):
        labelled_token_logps(model, [[1]], [[True]], pad_token_id=pad)
    with pytest.raises(ValueError, match="one label per token"):
        labelled_token_logps(model, [[1, 2, 3]], [[True, True]], pad_token_id=pad)
