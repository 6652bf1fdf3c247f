"""TransformersGenerator (rlxf.rollout): the lean sampling loop against transformers itself.

* sampler log-probs equal a fresh full forward pass of ``prompt + completion`` (no cache, no padding);
* greedy decoding equals ``model.generate(do_sample=False)`` token for token on a left-padded batch;
* masks, ``finished`` flags, seeding, grouping of the ``n`` samples and argument errors.

A random tiny model says EOS about once in 75 tokens, so most tests add a constant to the EOS logit
(a forward hook on the LM head, seen identically by the generator, ``generate`` and the reference
forward) to get completions of every kind: stopped early, stopped at once, truncated.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from rlxf.data.batching import pad_left
from rlxf.models import load_policy
from rlxf.rollout import Rollout, TransformersGenerator
from rlxf.rollout.base import completion_mask, sample_categorical
from rlxf.testing import sampled_logps_reference

TOL = {"rtol": 1e-5, "atol": 1e-5}
TEXTS = ["<|im_start|>user\nSay 7<|im_end|>\n<|im_start|>assistant\n", "Hi", "What is 12+30?", "a b c d e f", "?"]


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_policy("tiny", seed=11)
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert len({len(p) for p in prompts}) == len(prompts)
    return model, tokenizer, prompts


@contextlib.contextmanager
def eos_bias(model, eos: int, bias: float):
    """Add ``bias`` to the EOS logit (2.0: about half of 8-token samples stop; 1.0: greedy replies of
    lengths 10, 1, 12 (truncated), 1, 1 on TEXTS)."""

    def hook(module, inputs, output):
        output = output.clone()
        output[..., eos] += bias
        return output

    handle = model.lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _generator(tokenizer, model, pad=None):
    return TransformersGenerator(model, eos_token_ids={tokenizer.eos_token_id},
                                 pad_token_id=tokenizer.pad_token_id if pad is None else pad)


_reference_logps = sampled_logps_reference


def _check_structure(rollout: Rollout, eos: int, pad: int):
    """Mask = up to and including the first EOS; pad after it; ``finished`` = an EOS was sampled."""
    width = rollout.completion_ids.shape[1]
    for row, mask, done in zip(rollout.completion_ids.tolist(), rollout.completion_mask, rollout.finished,
                               strict=True):
        end = row.index(eos) + 1 if eos in row else width
        assert mask.tolist() == [t < end for t in range(width)]
        assert bool(done) == (eos in row[:end])
        assert all(t == pad for t in row[end:])
    assert rollout.completion_mask.dtype == torch.bool and rollout.finished.dtype == torch.bool
    assert (rollout.sampler_logps[~rollout.completion_mask] == 0).all()
    assert (rollout.sampler_logps[rollout.completion_mask] < 0).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logps_equal_a_fresh_full_forward(tiny, temperature):
    model, tokenizer, prompts = tiny
    rng = torch.Generator().manual_seed(0)
    with eos_bias(model, tokenizer.eos_token_id, 2.0):
        rollout = _generator(tokenizer, model).generate(prompts, n=4, max_new_tokens=8, temperature=temperature,
                                                        rng=rng)
        expected = _reference_logps(model, prompts, rollout, temperature)
    assert rollout.completion_ids.shape == (len(prompts) * 4, 8) and rollout.n == 4
    assert rollout.finished.any() and not rollout.finished.all()  # both kinds of row are exercised
    _check_structure(rollout, tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.testing.assert_close(rollout.sampler_logps, expected, **TOL)


@pytest.mark.parametrize("bias", [0.0, 1.0])
def test_greedy_equals_transformers_generate_on_a_left_padded_batch(tiny, bias):
    """bias 0: no reply stops within 12 tokens (all truncated); bias 1: replies stop at 10, 1, -, 1, 1."""
    model, tokenizer, prompts = tiny
    new = 12
    ids, attn = pad_left(prompts, tokenizer.pad_token_id)
    assert (~attn).any(dim=1).sum() == len(prompts) - 1  # every prompt but the longest is left-padded
    with eos_bias(model, tokenizer.eos_token_id, bias), torch.no_grad():
        rollout = _generator(tokenizer, model).generate(prompts, max_new_tokens=new, greedy=True)
        out = model.generate(
            input_ids=ids, attention_mask=attn.long(), do_sample=False, max_new_tokens=new,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )[:, ids.shape[1]:]
        expected = _reference_logps(model, prompts, rollout, 1.0)
    assert out.shape == rollout.completion_ids.shape
    assert rollout.completion_ids.tolist() == out.tolist()
    if bias:
        assert rollout.finished.any() and not rollout.finished.all()
    else:
        assert not rollout.finished.any() and rollout.lengths.tolist() == [new] * len(prompts)
    _check_structure(rollout, tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.testing.assert_close(rollout.sampler_logps, expected, **TOL)


def test_completion_mask_when_pad_is_eos(tiny):
    """SmolLM2's pad token is its EOS: everything after the first EOS is EOS too, and only the first counts."""
    model, tokenizer, prompts = tiny
    eos = tokenizer.eos_token_id
    with eos_bias(model, eos, 2.0):
        rollout = _generator(tokenizer, model, pad=eos).generate(prompts, n=3, max_new_tokens=8,
                                                                 rng=torch.Generator().manual_seed(1))
    assert rollout.finished.any()
    _check_structure(rollout, eos, eos)
    tokens = torch.tensor([[5, eos, eos, eos], [eos, eos, eos, eos], [5, 6, 7, 8], [eos, 5, eos, 6]])
    assert completion_mask(tokens, torch.tensor([eos])).tolist() == [
        [True, True, False, False], [True, False, False, False], [True] * 4, [True, False, False, False]]


def test_same_seed_same_samples_and_another_seed_differs(tiny):
    model, tokenizer, prompts = tiny
    gen = _generator(tokenizer, model)

    def sample(seed):
        return gen.generate(prompts, n=2, max_new_tokens=6, rng=torch.Generator().manual_seed(seed))

    a, b, c = sample(7), sample(7), sample(8)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.sampler_logps, b.sampler_logps) and torch.equal(a.completion_mask, b.completion_mask)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_n_samples_are_grouped_contiguously(tiny):
    """At a vanishing temperature sampling is argmax, so rows p*n .. p*n+n-1 all equal prompt p's greedy
    reply; the log-prob test above checks the same grouping at temperature 1 through ``prompt_index``."""
    model, tokenizer, prompts = tiny
    gen = _generator(tokenizer, model)
    n = 3
    with eos_bias(model, tokenizer.eos_token_id, 1.0):
        greedy = gen.generate(prompts, max_new_tokens=12, greedy=True)
        cold = gen.generate(prompts, n=n, max_new_tokens=12, temperature=1e-4,
                            rng=torch.Generator().manual_seed(0))
    assert greedy.finished.any() and not greedy.finished.all()
    assert cold.prompt_index.tolist() == [p for p in range(len(prompts)) for _ in range(n)]
    assert cold.completion_ids.tolist() == greedy.completion_ids.repeat_interleave(n, dim=0).tolist()
    assert cold.prompt_ids == prompts and cold.lengths.tolist() == greedy.lengths.repeat_interleave(n).tolist()


def test_generate_restores_training_mode(tiny):
    model, tokenizer, prompts = tiny
    model.train()
    _generator(tokenizer, model).generate(prompts[:2], max_new_tokens=2, greedy=True)
    assert model.training
    model.eval()
    _generator(tokenizer, model).generate(prompts[:2], max_new_tokens=2, greedy=True)
    assert not model.training


def test_sample_categorical_draws_from_the_given_distribution():
    """Inverse-CDF sampling: 200k draws per row distribution, frequencies within 5 standard errors
    (sqrt(p(1-p)/N) <= 0.0012) of p, and zero-probability tokens (first, middle, last) never drawn."""
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 0.1, 0.0, 0.0, 0.9]], dtype=torch.float64)
    draws = 200_000
    logps = probs.log().float().repeat_interleave(draws, dim=0)
    tokens = sample_categorical(logps, torch.Generator().manual_seed(0))
    assert tokens.shape == (2 * draws,) and tokens.dtype == torch.long
    for row in range(2):
        freq = torch.bincount(tokens[row * draws:(row + 1) * draws], minlength=5).double() / draws
        assert (freq[probs[row] == 0] == 0).all()
        torch.testing.assert_close(freq, probs[row], rtol=0, atol=5 * 0.0012)


def test_argument_errors(tiny):
    model, tokenizer, prompts = tiny
    gen = _generator(tokenizer, model)
    with pytest.raises(ValueError, match="greedy decoding gives one completion per prompt"):
        gen.generate(prompts, n=2, greedy=True)
    with pytest.raises(ValueError, match="every prompt needs at least one token"):
        gen.generate([prompts[0], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        gen.generate(prompts, temperature=0.0)


@pytest.mark.parametrize("backend", ["transformers", "fast_llama"])
def test_load_weights_makes_a_generator_on_a_copy_sample_like_one_on_the_trained_module(tiny, backend):
    """A generator built on its own copy of the policy samples with the policy's new weights once they are
    loaded (same tokens and sampler log-probs as a generator on the trained module itself, same draws), and
    records the version; a generator on the training module itself copies nothing."""
    import copy

    from rlxf.rollout import FastLlamaGenerator
    from rlxf.rollout.base import load_state_into

    model, tokenizer, prompts = tiny
    make = TransformersGenerator if backend == "transformers" else FastLlamaGenerator
    policy = copy.deepcopy(model)
    detached = make(copy.deepcopy(model), eos_token_ids={tokenizer.eos_token_id}, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))  # "training" on the policy only

    def sample(generator):
        return generator.generate(prompts, n=2, max_new_tokens=6, rng=torch.Generator().manual_seed(3))

    on_policy = sample(make(policy, eos_token_ids={tokenizer.eos_token_id}, pad_token_id=tokenizer.pad_token_id))
    stale = sample(detached)
    assert not torch.equal(stale.sampler_logps, on_policy.sampler_logps)
    assert detached.version == 0
    detached.load_weights(policy.state_dict(), version=7)
    fresh = sample(detached)
    assert detached.version == 7
    assert torch.equal(fresh.completion_ids, on_policy.completion_ids)
    torch.testing.assert_close(fresh.sampler_logps, on_policy.sampler_logps, rtol=0, atol=0)
    assert load_state_into(policy, policy.state_dict()) == 0  # its own tensors: nothing to copy
    with pytest.raises(ValueError, match="tensors the model does not have"):
        detached.load_weights({"no.such.weight": torch.zeros(1)}, version=8)
    with pytest.raises(ValueError, match="has shape"):
        detached.load_weights({"model.norm.weight": torch.zeros(3)}, version=8)
