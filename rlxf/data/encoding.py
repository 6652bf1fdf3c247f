"""Prompt rows as the policy sees them (token ids) and as feedback sees them (per-completion context lists)."""
from __future__ import annotations

from typing import Any

from rlxf.data.prompts import render_prompt

__all__ = ["context_of", "encode_prompts"]


def encode_prompts(tokenizer: Any, rows: list[dict[str, Any]]) -> list[list[int]]:
    """Chat-template each row and tokenize without adding special tokens (the template already has them)."""
    texts = [render_prompt(tokenizer, row) for row in rows]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def context_of(rows: list[dict[str, Any]], repeat: int = 1) -> dict[str, list]:
    """Per-completion context lists (every field but the prompt), each row repeated ``repeat`` times."""
    keys = sorted({k for r in rows for k in r} - {"prompt", "messages"})
    return {k: [r.get(k) for r in rows for _ in range(repeat)] for k in keys}
