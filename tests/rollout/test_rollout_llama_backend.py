"""FastLlamaGenerator (rlxf.rollout.llama_backend) against its slow reference, TransformersGenerator.

* greedy tokens identical on a left-padded batch of prompts of different lengths;
* with the same seed, identical sampled tokens and sampler log-probs within 1e-5 (both draw by inverse CDF
  from the same generator, so they agree whenever the logits agree to float rounding);
* sampler log-probs equal a fresh full forward pass of ``prompt + completion`` (no cache, no padding);
* prompts that share a prefix (a chat template's system prompt) are prefilled once for the prefix and once for
  the rests, with the padding between them: the same tokens and log-probs;
* weights are re-read on every call (the policy trains in place between calls);
* unsupported models are refused with a clear error.

Tiny random llamas stop rarely on their one EOS, so most tests also stop on every fourth token id: rows then
finish at different steps, which exercises the masks and the dropping of finished rows from the batch.
Three layouts: tied embeddings (like SmolLM2), untied with one KV head for four query heads, and tied in the
``use_kn_layout`` storage the online RL recipe trains with.
"""
from __future__ import annotations

import copy

import pytest
import torch

from rlxf.models import load_policy, tiny_tokenizer
from rlxf.models.layout import use_kn_layout
from rlxf.rollout import Rollout, TransformersGenerator
from rlxf.rollout.llama_backend import FastLlamaGenerator, _shared_prefix, supports
from rlxf.testing import sampled_logps_reference

TOL = {"rtol": 1e-5, "atol": 1e-5}
TEXTS = ["<|im_start|>user\nSay 7<|im_end|>\n<|im_start|>assistant\n", "Hi", "What is 12+30?", "a b c d e f", "?",
         "12345678"]


def _untied_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=False,
        rms_norm_eps=1e-6, rope_theta=500.0, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        return LlamaForCausalLM(config)


@pytest.fixture(scope="module", params=["tied", "untied", "tied_kn"])
def setup(request):
    tokenizer = tiny_tokenizer()
    if request.param == "untied":
        model = _untied_model(tokenizer)
    else:
        model, _ = load_policy("tiny", seed=11)
        if request.param == "tied_kn":
            model = use_kn_layout(copy.deepcopy(model))
    model.eval()
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert len({len(p) for p in prompts}) == len(prompts)  # every prompt but the longest is left-padded
    return model, tokenizer, prompts


def _stops(tokenizer, many: bool) -> set[int]:
    return {tokenizer.eos_token_id} | (set(range(3, len(tokenizer), 4)) if many else set())


def _pair(model, tokenizer, many_stops: bool = True):
    kw = {"eos_token_ids": _stops(tokenizer, many_stops), "pad_token_id": tokenizer.pad_token_id}
    return FastLlamaGenerator(model, **kw), TransformersGenerator(model, **kw)


_reference_logps = sampled_logps_reference


def _assert_same(fast: Rollout, slow: Rollout):
    assert fast.completion_ids.tolist() == slow.completion_ids.tolist()
    assert torch.equal(fast.completion_mask, slow.completion_mask) and torch.equal(fast.finished, slow.finished)
    assert fast.prompt_ids == slow.prompt_ids and fast.n == slow.n
    torch.testing.assert_close(fast.sampler_logps, slow.sampler_logps, **TOL)


@pytest.mark.parametrize("many_stops", [False, True])
def test_greedy_equals_transformers_generator(setup, many_stops):
    model, tokenizer, prompts = setup
    fast, slow = _pair(model, tokenizer, many_stops)
    got = fast.generate(prompts, max_new_tokens=20, greedy=True)
    _assert_same(got, slow.generate(prompts, max_new_tokens=20, greedy=True))
    if not many_stops:
        assert got.completion_ids.shape == (len(prompts), 20)
    torch.testing.assert_close(got.sampler_logps, _reference_logps(model, prompts, got, 1.0), **TOL)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_same_seed_samples_equal_transformers_generator(setup, temperature):
    model, tokenizer, prompts = setup
    fast, slow = _pair(model, tokenizer)
    got = fast.generate(prompts, n=3, max_new_tokens=16, temperature=temperature,
                        rng=torch.Generator().manual_seed(0))
    _assert_same(got, slow.generate(prompts, n=3, max_new_tokens=16, temperature=temperature,
                                    rng=torch.Generator().manual_seed(0)))
    assert got.completion_ids.shape[0] == 3 * len(prompts)
    assert got.finished.any() and len(set(got.lengths.tolist())) > 3  # rows stop at many different steps


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logps_equal_a_fresh_full_forward(setup, temperature):
    model, tokenizer, prompts = setup
    fast, _ = _pair(model, tokenizer)
    rollout = fast.generate(prompts, n=4, max_new_tokens=12, temperature=temperature,
                            rng=torch.Generator().manual_seed(1))
    expected = _reference_logps(model, prompts, rollout, temperature)
    torch.testing.assert_close(rollout.sampler_logps, expected, **TOL)
    assert (rollout.sampler_logps[~rollout.completion_mask] == 0).all()
    assert (rollout.sampler_logps[rollout.completion_mask] < 0).all()


def _shared_prompts(tokenizer, kind: str) -> list[list[int]]:
    """Prompts with a long common prefix: chat-templated questions, or one prompt that extends another."""
    if kind == "chat":
        system = {"role": "system", "content": "You are a careful assistant. Answer briefly."}
        questions = ["What is 2+3?", "What is 12+30?", "Say hi", "What is 7+7? Think.", "?"]
        texts = [tokenizer.apply_chat_template([system, {"role": "user", "content": q}], tokenize=False,
                                               add_generation_prompt=True) for q in questions]
    else:
        base = "The quick brown fox jumps over the lazy dog, then naps in the sun. "
        texts = [base, base + "And then?", base + "Why"]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    shared = _shared_prefix(prompts)
    if kind == "nested":
        assert shared == len(prompts[0]) - 1  # capped: the shortest prompt keeps its last token to predict from
    else:
        assert shared > 30
    return prompts


@pytest.mark.parametrize("kind", ["chat", "nested"])
def test_shared_prefix_is_prefilled_once_with_the_same_result(setup, kind):
    model, tokenizer, _ = setup
    prompts = _shared_prompts(tokenizer, kind)
    fast, slow = _pair(model, tokenizer)
    _assert_same(fast.generate(prompts, max_new_tokens=12, greedy=True),
                 slow.generate(prompts, max_new_tokens=12, greedy=True))
    got = fast.generate(prompts, n=3, max_new_tokens=12, rng=torch.Generator().manual_seed(2))
    _assert_same(got, slow.generate(prompts, n=3, max_new_tokens=12, rng=torch.Generator().manual_seed(2)))
    torch.testing.assert_close(got.sampler_logps, _reference_logps(model, prompts, got, 1.0), **TOL)


def test_weights_are_reread_on_every_call(setup):
    """An in-place update (as fused AdamW does, without bumping version counters) is seen by the next call."""
    model, tokenizer, prompts = setup
    model = copy.deepcopy(model)
    fast, slow = _pair(model, tokenizer, many_stops=False)
    before = fast.generate(prompts, max_new_tokens=8, greedy=True)
    with torch.no_grad():
        for p in model.parameters():
            p.data.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    after = fast.generate(prompts, max_new_tokens=8, greedy=True)
    assert not torch.equal(before.sampler_logps, after.sampler_logps)
    _assert_same(after, slow.generate(prompts, max_new_tokens=8, greedy=True))


def test_training_mode_and_argument_errors(setup):
    model, tokenizer, prompts = setup
    fast, _ = _pair(model, tokenizer)
    model.train()
    fast.generate(prompts[:2], max_new_tokens=2, greedy=True)
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="greedy decoding gives one completion per prompt"):
        fast.generate(prompts, n=2, greedy=True)
    with pytest.raises(ValueError, match="every prompt needs at least one token"):
        fast.generate([prompts[0], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        fast.generate(prompts, temperature=0.0)


def test_bfloat16_model_runs_in_its_dtype():
    model, tokenizer = load_policy("tiny", seed=11, dtype=torch.bfloat16)
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    fast, _ = _pair(model, tokenizer)
    rollout = fast.generate(prompts, n=2, max_new_tokens=8, rng=torch.Generator().manual_seed(0))
    assert rollout.sampler_logps.dtype == torch.float32 and rollout.sampler_logps.isfinite().all()
    expected = _reference_logps(model, prompts, rollout, 1.0)
    torch.testing.assert_close(rollout.sampler_logps, expected, rtol=0, atol=0.15)  # bf16 rounding, 8 bits


def test_unsupported_models_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=80, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    assert not supports(gpt2) and not FastLlamaGenerator.supports(gpt2)
    with pytest.raises(ValueError, match="needs a transformers LlamaForCausalLM, got GPT2LMHeadModel"):
        FastLlamaGenerator(gpt2, eos_token_ids={0}, pad_token_id=0)
    scaled = LlamaForCausalLM(LlamaConfig(
        vocab_size=80, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ))
    assert not supports(scaled)
    with pytest.raises(ValueError, match="rope_scaling None"):
        FastLlamaGenerator(scaled, eos_token_ids={0}, pad_token_id=0)
    model, _ = load_policy("tiny", seed=0)
    assert supports(model)


@pytest.mark.slow
def test_smollm2_greedy_equals_transformers_generator():
    from rlxf.data import arithmetic_rows, encode_prompts

    model, tokenizer = load_policy("smollm2")
    prompts = encode_prompts(tokenizer, arithmetic_rows(16, seed=12345))
    kw = {"eos_token_ids": {tokenizer.eos_token_id}, "pad_token_id": tokenizer.pad_token_id}
    fast = FastLlamaGenerator(model, **kw).generate(prompts, max_new_tokens=48, greedy=True)
    slow = TransformersGenerator(model, **kw).generate(prompts, max_new_tokens=48, greedy=True)
    assert fast.completion_ids.tolist() == slow.completion_ids.tolist()
    assert fast.finished.any() and not fast.finished.all()
    # 30 float32 layers: the two forwards round differently by ~1e-5 in log-prob.
    torch.testing.assert_close(fast.sampler_logps, slow.sampler_logps, rtol=0, atol=1e-4)


def test_make_generator_picks_the_fast_engine_where_it_can():
    from rlxf.rollout import FastLlamaGenerator, TransformersGenerator, make_generator

    model, tokenizer = load_policy("tiny", seed=0)
    special = {"eos_token_ids": {tokenizer.eos_token_id}, "pad_token_id": tokenizer.pad_token_id}
    assert type(make_generator(model, **special)) is FastLlamaGenerator
    assert type(make_generator(model, kind="fast", **special)) is FastLlamaGenerator
    assert type(make_generator(model, kind="transformers", **special)) is TransformersGenerator
    # bf16 autocast sampling is the transformers engine's; the fast one computes in the model's dtype.
    autocast = make_generator(model, autocast_dtype=torch.bfloat16, **special)
    assert type(autocast) is TransformersGenerator and autocast.autocast_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="takes no autocast"):
        make_generator(model, kind="fast", autocast_dtype=torch.bfloat16, **special)
    with pytest.raises(ValueError, match="unknown generator 'vllm'"):
        make_generator(model, kind="vllm", **special)
