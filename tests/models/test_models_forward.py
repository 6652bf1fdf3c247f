"""Completion log-probs (rlxf.models.forward): the prefix-shared KV-cache path, the padded path and a naive
per-row reference agree in values, entropies and gradients wrt every parameter.

The naive reference runs ``model(input_ids).logits`` on one unpadded ``prompt + completion`` row at a time
(positions 0..L-1, no attention mask) and takes ``torch.log_softmax`` of the full logits, so a wrong
position id, a pad token attended to, or an off-by-one in the prompt/completion split shows up as a
mismatch. Everything is float32; the tolerance is 1e-5.
"""
from __future__ import annotations

import pytest
import torch

from rlxf.models import load_policy
from rlxf.models.forward import completion_logprobs, completion_logprobs_padded

N = 3  # completions per prompt
TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def policy():
    model, tokenizer = load_policy("tiny", seed=3)
    model.eval()  # no dropout in llama anyway; eval keeps it explicit
    return model, tokenizer


def _batch(tokenizer):
    """Three prompts of different lengths (so the cache path left-pads them) and N completions each.

    Some completions end with EOS and are padded after it (the pad token sits in the row but the mask
    excludes it); one runs to the full width without an EOS; one is EOS at once.
    """
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = [enc("<|im_start|>user\nSay 7<|im_end|>\n<|im_start|>assistant\n"), enc("Hi"),
               enc("What is 12+30? Think.")]
    assert len({len(p) for p in prompts}) == 3
    width = 6
    raw = [enc("42") + [eos], enc("abcdef"), [eos],
           enc("x") + [eos], enc("yes no")[:width], enc("1+1") + [eos],
           enc("7 8 9") + [eos], enc("?") + [eos], enc("zzzzzz")]
    completions = torch.full((len(raw), width), pad, dtype=torch.long)
    mask = torch.zeros((len(raw), width), dtype=torch.bool)
    for i, row in enumerate(raw):
        completions[i, :len(row)] = torch.tensor(row[:width])
        mask[i, :len(row)] = True
    assert (~mask).any() and mask.all(dim=1).any()  # both padded and full-width rows
    return prompts, completions, mask


def _naive(model, prompts, completions, mask, *, temperature=1.0, truncate=False):
    """Per-row ``log_softmax(model(prompt + completion).logits / temperature)`` at the completion tokens.

    ``truncate=True`` drops each row's padding first, so the row the model sees has no pad token at all.
    Returns ``(logps (N, T) float32, entropy (N, T) float32)``, zeros where a truncated row has no token.
    """
    rows, width = completions.shape
    logps = torch.zeros(rows, width)
    entropy = torch.zeros(rows, width)
    for i in range(rows):
        completion = completions[i, : int(mask[i].sum())] if truncate else completions[i]
        prompt = prompts[i // N]
        ids = torch.tensor([prompt + completion.tolist()])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(completion)]
        logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
        k = len(completion)
        logps[i, :k] = logp_all.gather(1, completion[:, None]).squeeze(1)
        entropy[i, :k] = -(logp_all.exp() * logp_all).sum(-1).detach()
    return logps, entropy


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_cache_path_equals_padded_path_and_naive_reference(policy, temperature):
    model, tokenizer = policy
    prompts, completions, mask = _batch(tokenizer)
    kwargs = {"n": N, "pad_token_id": tokenizer.pad_token_id, "temperature": temperature, "with_entropy": True}
    with torch.no_grad():
        fast, fast_h = completion_logprobs(model, prompts, completions, **kwargs)
        padded, padded_h = completion_logprobs_padded(model, prompts, completions, **kwargs)
        naive, naive_h = _naive(model, prompts, completions, mask, temperature=temperature)
        naive_cut, _ = _naive(model, prompts, completions, mask, temperature=temperature, truncate=True)
    assert fast.shape == completions.shape and fast.dtype == torch.float32
    assert fast_h.shape == completions.shape and fast_h.dtype == torch.float32
    # Every position (pad tokens after EOS are ordinary tokens to all three computations) ...
    torch.testing.assert_close(fast, naive, **TOL)
    torch.testing.assert_close(padded, naive, **TOL)
    torch.testing.assert_close(fast_h, naive_h, **TOL)
    torch.testing.assert_close(padded_h, naive_h, **TOL)
    # ... and the completion tokens equal those of rows that never contained a pad token.
    torch.testing.assert_close(fast[mask], naive_cut[mask], **TOL)
    assert fast[mask].lt(0).all()


def test_without_entropy_returns_none_and_same_logps(policy):
    model, tokenizer = policy
    prompts, completions, _ = _batch(tokenizer)
    with torch.no_grad():
        lp, h = completion_logprobs(model, prompts, completions, n=N, pad_token_id=tokenizer.pad_token_id)
        lp_h, _ = completion_logprobs(model, prompts, completions, n=N, pad_token_id=tokenizer.pad_token_id,
                                      with_entropy=True, chunk_size=5)  # ragged chunks: 54 rows / 5
    assert h is None
    torch.testing.assert_close(lp, lp_h, **TOL)


def _grads(model, fn, *args, **kwargs):
    model.zero_grad(set_to_none=True)
    logps = fn(*args, **kwargs)
    upstream, mask = logps[1], logps[2]
    (logps[0] * upstream * mask).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradients_match_wrt_every_parameter(policy, temperature):
    """d/dθ Σ w·mask·logp, random weights w: the cache path must route gradient through the cached prompt
    keys/values into the prompt's forward, exactly as the single padded forward and the naive rows do."""
    model, tokenizer = policy
    prompts, completions, mask = _batch(tokenizer)
    upstream = torch.randn(completions.shape, generator=torch.Generator().manual_seed(0))
    kw = {"n": N, "pad_token_id": tokenizer.pad_token_id, "temperature": temperature}

    def fast():
        return completion_logprobs(model, prompts, completions, **kw)[0], upstream, mask

    def padded():
        return completion_logprobs_padded(model, prompts, completions, **kw)[0], upstream, mask

    def naive():
        return _naive(model, prompts, completions, mask, temperature=temperature, truncate=True)[0], upstream, mask

    g_fast, g_padded, g_naive = _grads(model, fast), _grads(model, padded), _grads(model, naive)
    assert set(g_fast) == {name for name, _ in model.named_parameters()}
    for name in g_fast:
        assert g_naive[name].abs().sum() > 0, name  # every parameter really receives gradient
        torch.testing.assert_close(g_fast[name], g_naive[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")
        torch.testing.assert_close(g_padded[name], g_naive[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_single_token_completions_and_n_one(policy):
    """Width 1 skips the body forward (only the prefill predicts); n=1 skips the cache repeat."""
    model, tokenizer = policy
    prompts, completions, mask = _batch(tokenizer)
    first = completions[:, :1]
    with torch.no_grad():
        fast, _ = completion_logprobs(model, prompts, first, n=N, pad_token_id=tokenizer.pad_token_id)
        naive, _ = _naive(model, prompts, first, torch.ones_like(first, dtype=torch.bool))
        one, _ = completion_logprobs(model, prompts, completions[::N], n=1, pad_token_id=tokenizer.pad_token_id)
        ref = completion_logprobs_padded(model, prompts, completions[::N], n=1,
                                         pad_token_id=tokenizer.pad_token_id)[0]
    torch.testing.assert_close(fast, naive, **TOL)
    torch.testing.assert_close(one, ref, **TOL)


def test_row_count_mismatch_is_an_error(policy):
    model, tokenizer = policy
    prompts, completions, _ = _batch(tokenizer)
    with pytest.raises(ValueError, match="9 rows but 3 prompts x n=2"):
        completion_logprobs(model, prompts, completions, n=2, pad_token_id=tokenizer.pad_token_id)


def test_completion_logits_match_a_naive_per_row_forward(policy):
    """`completion_logits` (used for token-level losses such as pairwise Cringe): position t of row i holds the
    logits that predict completion token t, as one unpadded row through the model gives them."""
    from rlxf.models.forward import completion_logits

    model, tokenizer = policy
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompts = [enc("Say 7:"), enc("What is 12+30?")]
    completions = [enc("seven"), enc("42")]
    logits, ids, mask = completion_logits(model, prompts, completions, pad_token_id=tokenizer.pad_token_id)
    assert logits.shape == (2, 5, len(tokenizer)) and mask.sum(1).tolist() == [5, 2]
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        with torch.no_grad():
            naive = model(torch.tensor([p + c])).logits[0, len(p) - 1: len(p) + len(c) - 1]
        torch.testing.assert_close(logits[i, : len(c)].detach(), naive, **TOL)
        assert ids[i, : len(c)].tolist() == c
