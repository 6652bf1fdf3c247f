"""The packed Llama forward (rlxf.models.packed) against the transformers modules it replaces."""
from __future__ import annotations

import random

import pytest
import torch

from rlxf.models.logps import sequence_logps
from rlxf.models.packed import pack_completions, packed_sequence_logps, segment_mask, supports_packed_forward
from rlxf.models.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _batch(vocab: int, prompts: int, n: int, seed: int, *, empty: bool = True):
    rng = random.Random(seed)
    prompt_ids = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 9))] for _ in range(prompts)]
    completions = [[[rng.randrange(3, vocab) for _ in range(rng.randint(0 if (empty and k) else 1, 8))]
                     for k in range(n)] for _ in range(prompts)]
    return prompt_ids, completions


def _run(model, prompt_ids, completions, pad_id, packed, *, precision="fp32"):
    model.zero_grad(set_to_none=True)
    sums, lengths, slots = sequence_logps(model, prompt_ids, completions, pad_token_id=pad_id, packed=packed,
                                          precision=precision)
    weights = torch.linspace(-1.0, 2.0, sums.numel()).view_as(sums)  # a loss with mixed-sign per-row weights
    (sums * weights).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return sums.detach(), lengths, slots, grads


def test_layout_by_hand():
    # prompt [5, 6], completions [7, 8] and [9]; prompt [4], completions [] and [3, 2]
    layout = pack_completions([[5, 6], [4]], [[[7, 8], [9]], [[], [3, 2]]])
    assert layout.ids.tolist() == [5, 6, 7, 8, 9, 4, 3, 2]
    assert layout.positions.tolist() == [0, 1, 2, 3, 2, 0, 1, 2]
    assert layout.segments == [(0, 5), (5, 8)]
    assert [g.tolist() for g in layout.groups] == [[0, 0, 1, 1, 2], [0, 2, 2]]
    # 7 from 6 (row 1), 8 from 7 (row 2), 9 from 6 (row 1); 3 from 4 (row 5), 2 from 3 (row 6)
    assert layout.source.tolist() == [1, 2, 1, 5, 6]
    assert layout.targets.tolist() == [7, 8, 9, 3, 2]
    assert layout.owner.tolist() == [0, 0, 1, 3, 3]


def test_segment_mask_by_hand():
    mask = segment_mask(torch.tensor([0, 0, 1, 1, 2]), torch.float32)
    allowed = (mask == 0).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 0],
                       [1, 1, 0, 0, 1]]  # the second completion sees the prompt and itself, not the first
    assert torch.isneginf(mask[mask != 0]).all()


def test_layout_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one token"):
        pack_completions([[]], [[[1]]])
    with pytest.raises(ValueError, match="same number"):
        pack_completions([[1], [2]], [[[1]], [[1], [2]]])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_matches_module_path_float64(tok, n):
    """Log-probs and every parameter gradient equal those of the HF modules (float64 weights; the summed
    log-probs are float32 by the log-prob op's contract, hence rtol 1e-6 on them)."""
    model = tiny_model(tok, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96).double()
    prompt_ids, completions = _batch(len(tok), 5, n, seed=n)
    a = _run(model, prompt_ids, completions, tok.pad_token_id, True)
    b = _run(model, prompt_ids, completions, tok.pad_token_id, False)
    torch.testing.assert_close(a[0], b[0], rtol=1e-6, atol=1e-5)
    assert torch.equal(a[1], b[1])
    assert a[2] == {"total": sum(len(p) + sum(len(c) for c in g) for p, g in zip(prompt_ids, completions, strict=True)),
                    "padding": 0}
    for name, grad in b[3].items():
        scale = grad.abs().max().clamp(min=1e-12)
        assert ((a[3][name] - grad).abs().max() / scale) < 1e-5, name


def test_matches_module_path_float32_gqa_and_mha(tok):
    for kv_heads in (1, 4):
        model = tiny_model(tok, hidden=64, layers=3, heads=4, kv_heads=kv_heads, intermediate=96, seed=kv_heads)
        prompt_ids, completions = _batch(len(tok), 6, 2, seed=10 + kv_heads)
        a = _run(model, prompt_ids, completions, tok.pad_token_id, True)
        b = _run(model, prompt_ids, completions, tok.pad_token_id, False)
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-4)
        for name, grad in b[3].items():
            torch.testing.assert_close(a[3][name], grad, rtol=1e-4, atol=1e-4 * float(grad.abs().max()))


def test_bf16_autocast_close_to_module_path(tok):
    model = tiny_model(tok, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96)
    prompt_ids, completions = _batch(len(tok), 4, 2, seed=3, empty=False)
    a = _run(model, prompt_ids, completions, tok.pad_token_id, True, precision="bf16")
    b = _run(model, prompt_ids, completions, tok.pad_token_id, False, precision="bf16")
    exact = _run(model, prompt_ids, completions, tok.pad_token_id, False)
    assert all(g.dtype == torch.float32 for g in a[3].values())  # fp32 master weights keep fp32 grads
    # both bf16 paths sit within bf16 rounding of the fp32 result
    for got in (a[0], b[0]):
        torch.testing.assert_close(got, exact[0], rtol=3e-2, atol=0.3)


def test_saves_less_than_module_path(tok):
    """The point of the fused functions: fewer bytes held for backward (parameters excluded)."""
    model = tiny_model(tok, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=192)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    prompt_ids, completions = _batch(len(tok), 6, 2, seed=5, empty=False)

    def saved_bytes(packed):
        seen: set[int] = set()
        total = 0

        def pack(t):
            nonlocal total
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen and ptr not in params:
                seen.add(ptr)
                total += t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sequence_logps(model, prompt_ids, completions, pad_token_id=tok.pad_token_id, packed=packed)
        return total

    assert saved_bytes(True) < 0.6 * saved_bytes(False)


def test_supports_only_plain_llama(tok):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    model = tiny_model(tok)
    assert supports_packed_forward(model)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2))
    assert not supports_packed_forward(gpt2)
    with pytest.raises(ValueError, match="not a plain LlamaForCausalLM"):
        packed_sequence_logps(gpt2, [[1]], [[[2]]])
    lora = get_peft_model(tiny_model(tok), LoraConfig(r=2, target_modules=["q_proj"]))
    assert not supports_packed_forward(lora)
    dropout = tiny_model(tok)
    dropout.config.attention_dropout = 0.1
    dropout.train()
    assert not supports_packed_forward(dropout)
    dropout.eval()
    assert supports_packed_forward(dropout)


@pytest.mark.parametrize("packed", [True, False])
def test_activation_checkpointing_changes_memory_not_values(tok, packed):
    """With ``activation_checkpointing_enable()`` both paths give the same log-probs and gradients (the HF path
    then runs padded rows, since checkpointed layers drop the KV cache) and hold far less for backward."""

    def make(checkpointing):
        model = tiny_model(tok, hidden=64, layers=3, heads=4, kv_heads=2, intermediate=96).double()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return model

    prompt_ids, completions = _batch(len(tok), 4, 2, seed=7, empty=False)
    plain = _run(make(False), prompt_ids, completions, tok.pad_token_id, packed)
    ckpt = _run(make(True), prompt_ids, completions, tok.pad_token_id, packed)
    torch.testing.assert_close(ckpt[0], plain[0], rtol=1e-6, atol=1e-5)
    for name, grad in plain[3].items():
        torch.testing.assert_close(ckpt[3][name], grad, rtol=1e-5, atol=1e-7 * float(grad.abs().max()) + 1e-12)

    def saved_numel(model):
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        total = 0

        def pack(t):
            nonlocal total
            if t.untyped_storage().data_ptr() not in params:
                total += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sequence_logps(model, prompt_ids, completions, pad_token_id=tok.pad_token_id, packed=packed)
        return total

    assert saved_numel(make(True)) < 0.5 * saved_numel(make(False))
