"""Data: prompt and preference files with their checks, chat-template rendering and prompt encoding, padding,
held-out splits and batch plans, and the arithmetic toy task."""

from rlxf.data.arithmetic import arithmetic_rows, make_problems, question
from rlxf.data.batching import (
    batch_for_step,
    held_out_indices,
    kl_partners,
    left_padded_positions,
    make_batches,
    pad_left,
    pad_right,
    padding_slots,
    rows_for_step,
)
from rlxf.data.encoding import context_of, encode_prompts
from rlxf.data.prompts import DataError, load_prompts, render_prompt

__all__ = [
    "DataError", "arithmetic_rows", "batch_for_step", "context_of", "encode_prompts", "held_out_indices",
    "kl_partners", "left_padded_positions", "load_prompts", "make_batches", "make_problems", "pad_left",
    "pad_right", "padding_slots", "question", "render_prompt", "rows_for_step",
]
