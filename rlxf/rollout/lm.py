"""A local causal LM as a client: render a chat turn, read the probabilities of given answers, generate text.

This is what LLM judges and critics run on (`rlxf.feedback.judges`); it owns no feedback logic. Generation goes
through any ``Generator`` (the transformers reference backend by default), so a judge samples with the same
engines as a policy.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from rlxf.data.batching import pad_right
from rlxf.models.forward import completion_logprobs
from rlxf.models.loading import load_policy
from rlxf.rollout.base import Generator
from rlxf.rollout.transformers_backend import TransformersGenerator

__all__ = ["LocalLM"]


class LocalLM:
    """A transformers causal LM and its tokenizer: ``render``, ``truncate``, ``choice_logps`` and ``generate``
    (the ``JudgeLM`` interface of `rlxf.feedback.judges`), on CPU or GPU, without gradients.

    Args:
        batch_size: prompts per forward pass (each prompt's K answers share its KV cache).
        chat_template: render messages with the tokenizer's chat template (else the message is the prompt).
        generator: the engine ``generate`` samples with (default: a ``TransformersGenerator`` on ``model``).
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 4, chat_template: bool = True,
                 generator: Generator | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.chat_template = chat_template and getattr(tokenizer, "chat_template", None) is not None
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token")
        self.pad_token_id = int(pad)
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self.generator = generator or TransformersGenerator(model, eos_token_ids=eos, pad_token_id=self.pad_token_id)

    @classmethod
    def load(cls, name_or_path: str = "smollm2", **kwargs: Any) -> LocalLM:
        """``rlxf.models.load_policy(name_or_path)`` as a client."""
        model, tokenizer = load_policy(name_or_path)
        return cls(model, tokenizer, **kwargs)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def render(self, message: str) -> str:
        """The full prompt text for one user message (chat template with the reply started)."""
        if not self.chat_template:
            return message
        messages = [{"role": "user", "content": message}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def truncate(self, text: str, max_tokens: int, *, keep: Literal["head", "tail"] = "head") -> tuple[str, bool]:
        """``text`` cut to at most ``max_tokens`` tokens (keeping its head or its tail), and whether it was cut."""
        ids = self.encode(text)
        if len(ids) <= max_tokens:
            return text, False
        if keep == "head":
            return self.tokenizer.decode(ids[:max_tokens]) + " [...]", True
        return "[...] " + self.tokenizer.decode(ids[len(ids) - max_tokens:]), True

    @torch.no_grad()
    def choice_logps(self, prompts: list[str], choices: Sequence[str]) -> Tensor:
        """``(B, K)`` float32: log P(choice_k | prompt_b), summed over the choice's tokens."""
        choice_ids = [self.encode(c) for c in choices]
        for c, ids in zip(choices, choice_ids, strict=True):
            if not ids:
                raise ValueError(f"answer choice {c!r} encodes to no tokens")
        k = len(choice_ids)
        table, mask = pad_right(choice_ids, self.pad_token_id)
        encoded = [self.encode(p) for p in prompts]
        if any(not ids for ids in encoded):
            raise ValueError("a prompt encodes to no tokens")
        out = torch.empty((len(prompts), k), dtype=torch.float32)
        # Similar lengths together: left padding of a batch costs as much as the longest prompt.
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        was_training = self.model.training
        self.model.eval()  # the client may share weights with a policy in training: restore its mode after
        try:
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                logps, _ = completion_logprobs(
                    self.model, [encoded[i] for i in rows], table.repeat(len(rows), 1), n=k,
                    pad_token_id=self.pad_token_id,
                )
                summed = (logps.float().cpu() * mask.repeat(len(rows), 1)).sum(dim=1)
                out[rows] = summed.view(len(rows), k)
        finally:
            self.model.train(was_training)
        return out

    def generate(self, prompts: list[str], *, max_new_tokens: int) -> list[str]:
        """Greedy continuation of each prompt, at most ``max_new_tokens`` tokens, as text."""
        encoded = [self.encode(p) for p in prompts]
        texts: list[str] = [""] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out = self.generator.generate([encoded[i] for i in rows], max_new_tokens=max_new_tokens, greedy=True)
            for i, tokens in zip(rows, out.completion_token_lists(), strict=True):
                texts[i] = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return texts
