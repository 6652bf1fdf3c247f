"""The prompt rows of an online recipe (training and held-out), checked before anything is created on disk.

Both online loops (`rlxf.recipes.online_rl`, `rlxf.recipes.online_preference`) read them the same way, from the
config fields ``prompts``, ``eval_prompts``, ``prompts_per_step``, ``max_steps``, ``train_seed``, ``eval_seed``,
``eval_size``, ``max_prompt_tokens`` and ``max_new_tokens``.
"""
from __future__ import annotations

import json
from typing import Any

from rlxf.data import DataError, arithmetic_rows, encode_prompts, load_prompts
from rlxf.feedback import row_problems

__all__ = ["MAX_CHARS_PER_TOKEN", "check_prompt_lengths", "load_rows"]

# More characters than this per allowed prompt token cannot fit (BPE tokens are far shorter): such a row is refused
# before any tokenizer sees it, so a 50 MB line is one error message, not an exhausted tokenizer.
MAX_CHARS_PER_TOKEN = 64


def _prompt_files(config: Any) -> list[str]:
    return [p for p in (None if config.prompts == "arithmetic" else config.prompts, config.eval_prompts) if p]


def load_rows(config: Any, feedback: Any) -> tuple[list[dict], list[dict]]:
    """Training and held-out rows, validated before anything is created on disk: each row's shape, what the
    feedback needs from it (e.g. an integer ``answer`` for the arithmetic verifier) and a prompt of plausible
    length, every problem reported as ``file:line``."""
    max_chars = config.max_prompt_tokens * MAX_CHARS_PER_TOKEN

    def check(row: dict) -> list[str]:
        text = row.get("prompt") if isinstance(row.get("prompt"), str) else json.dumps(row.get("messages"))
        too_long = [f"prompt of {len(text):,} characters cannot fit in max_prompt_tokens={config.max_prompt_tokens}"
                    ] if len(text) > max_chars else []
        return too_long + row_problems(feedback, row)

    if config.prompts == "arithmetic":
        train = arithmetic_rows(config.prompts_per_step * config.max_steps, seed=config.train_seed)
    else:
        train = load_prompts(config.prompts, check=check)
    if config.eval_prompts:
        held_out = load_prompts(config.eval_prompts, check=check)
    elif config.prompts == "arithmetic":
        held_out = arithmetic_rows(config.eval_size, seed=config.eval_seed)
    else:
        held_out = []
    if len(train) < config.prompts_per_step:
        raise DataError(
            f"{config.prompts}: {len(train)} prompts, fewer than prompts_per_step={config.prompts_per_step}"
        )
    return train, held_out


def check_prompt_lengths(config: Any, tokenizer: Any, context_length: int | None) -> None:
    """Refuse, with its ``file:line``, every prompt row whose chat-templated tokens exceed ``max_prompt_tokens`` or
    leave no room for ``max_new_tokens`` in the model's context (the files are read again: rows carry no line)."""
    limit = config.max_prompt_tokens
    if context_length:
        limit = min(limit, context_length - config.max_new_tokens)
    why = (f"max_prompt_tokens={config.max_prompt_tokens}" if limit == config.max_prompt_tokens else
           f"the model's context of {context_length} tokens less max_new_tokens={config.max_new_tokens}")

    def check(row: dict) -> list[str]:
        n = len(encode_prompts(tokenizer, [row])[0])
        return [f"prompt of {n} tokens (chat template included) is longer than {limit}, {why}"] if n > limit else []

    for path in _prompt_files(config):
        load_prompts(path, check=check)
