"""Loading and saving policies (rlxf.models.loading): round trips through plain transformers, clear errors.

The fast tests use the tiny in-code model; the slow one loads the real SmolLM2 default (from the user cache,
or dequantised from the embedded GGUF on first use).
"""
from __future__ import annotations

import pytest
import torch

from rlxf.models import load_policy, save_policy

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 53+93?"}]


def _render(tokenizer, messages=MESSAGES):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_tiny_is_deterministic_in_its_seed():
    a, _ = load_policy("tiny", seed=0)
    b, _ = load_policy("tiny", seed=0)
    c, _ = load_policy("tiny", seed=1)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert a.config.tie_word_embeddings and a.lm_head.weight is a.model.embed_tokens.weight


def test_save_policy_round_trips_through_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = load_policy("tiny", seed=5)
    assert save_policy(model, tokenizer, tmp_path / "out") == tmp_path / "out"
    assert (tmp_path / "out" / "model.safetensors").exists()

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype and torch.equal(restored[name], tensor), name
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied

    assert loaded_tok.chat_template == tokenizer.chat_template
    assert _render(loaded_tok) == _render(tokenizer) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 53+93?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    text = _render(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert loaded_tok(text, add_special_tokens=False)["input_ids"] == ids
    plain = text.replace("<|im_start|>", "").replace("<|im_end|>", "")
    assert len(ids) == len(plain) + 5  # one token per character, one per chat marker (3 starts, 2 ends)
    assert (loaded_tok.eos_token_id, loaded_tok.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert loaded_tok.decode(ids[-12:]) == tokenizer.decode(ids[-12:])

    # The same directory through load_policy gives the same model outputs.
    again, again_tok = load_policy(str(tmp_path / "out"))
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(again(input_ids=x).logits, model(input_ids=x).logits)
    assert again_tok.chat_template == tokenizer.chat_template


def test_load_policy_dtype(tmp_path):
    model, tokenizer = load_policy("tiny", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    save_policy(model, tokenizer, tmp_path)
    loaded, _ = load_policy(str(tmp_path), dtype=torch.bfloat16)
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_missing_directory_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="neither 'smollm2', 'tiny' nor an existing directory") as err:
        load_policy(str(missing))
    assert str(missing) in str(err.value)
    assert not missing.exists()


@pytest.mark.slow
def test_default_smollm2_loads_with_its_chat_template():
    model, tokenizer = load_policy("smollm2")
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 30
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id is not None
    assert _render(tokenizer, [{"role": "user", "content": "What is 53+93?"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 53+93?<|im_end|>\n<|im_start|>assistant\n"
    )
    # The dequantised weights are a working model: greedy continuation of the template is plain text.
    ids = tokenizer(_render(tokenizer, [{"role": "user", "content": "Hi"}]), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all() and logits.shape == (1, ids.shape[1], len(tokenizer))


def test_saving_and_loading_print_no_bars_or_warnings(tmp_path, capfd):
    """The run's progress bar is the one line a user watches: transformers' own bars stay off while rlxf saves and
    loads a policy (and are back on after), and the cached forward and the generator pass the KV cache by the
    keyword this transformers takes (the old one warns on every call)."""
    import warnings

    from transformers.utils import logging as transformers_logging

    from rlxf.rollout import TransformersGenerator

    model, tokenizer = load_policy("tiny")
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        save_policy(model, tokenizer, tmp_path / "m")
        loaded, tokenizer = load_policy(str(tmp_path / "m"))
        generator = TransformersGenerator(loaded, eos_token_ids={tokenizer.eos_token_id},
                                          pad_token_id=tokenizer.pad_token_id)
        generator.generate([[1, 2, 3]], n=2, max_new_tokens=3, rng=torch.Generator().manual_seed(0))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert transformers_logging.is_progress_bar_enabled()
