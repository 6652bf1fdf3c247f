"""Data: prompt files and their checks, chat-template rendering, and the arithmetic toy task."""

from rlxf.data.arithmetic import arithmetic_rows, make_problems, question
from rlxf.data.prompts import DataError, load_prompts, render_prompt

__all__ = ["DataError", "load_prompts", "render_prompt", "arithmetic_rows", "make_problems", "question"]
