"""A tiny llama and a tiny character-level tokenizer, built in code, for fast tests (no download)."""
from __future__ import annotations

import string

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# One token per character keeps the tokenizer bijective on digits, so toy arithmetic answers are one token.
_CHARS = string.digits + string.ascii_letters + " +-=?.,:!'\n"
_SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>"]
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` with SmolLM2-style chat markers; EOS is ``<|im_end|>``."""
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + list(_CHARS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(_SPECIALS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def tiny_model(tokenizer, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 128, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` sized for CPU tests (tied embeddings, like SmolLM2)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)
