"""The toy task of the main job: "What is a+b?" with a, b uniform in 0..99.

Reproduces shared/reference/trl-bench/arith.py draw for draw, so that `make_problems(200, seed=12345)` is
the anchor's held-out set and `make_problems(n, seed=1)` its training stream.
"""

from __future__ import annotations

import random

__all__ = ["make_problems", "question", "arithmetic_rows"]


def make_problems(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """`n` pairs (a, b), each drawn as (randint(0, 99), randint(0, 99)) from one `random.Random(seed)`."""
    if n < 0:
        raise ValueError(f"make_problems: n must be >= 0, got {n}")
    rng = random.Random(seed)
    return [(rng.randint(0, 99), rng.randint(0, 99)) for _ in range(n)]


def question(a: int, b: int) -> str:
    """The prompt text, exactly the anchor's: "What is {a}+{b}?"."""
    return f"What is {a}+{b}?"


def arithmetic_rows(n: int, seed: int = 0) -> list[dict[str, str | int]]:
    """Prompt rows `{"prompt": question(a, b), "answer": a + b}` for `make_problems(n, seed)`."""
    return [{"prompt": question(a, b), "answer": a + b} for a, b in make_problems(n, seed)]
