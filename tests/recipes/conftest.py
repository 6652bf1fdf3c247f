"""Fixtures the recipe tests share."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

# The copy task: each prompt names one digit, the reply must end with it (the arithmetic verifier reads the
# last integer of the reply). A (template, digit) pair is held out when digit % 4 == template index % 4,
# so every held-out prompt combines a template and a digit that were both trained on, never together.
TEMPLATES = ["{d}", "Say {d}", "{d}!", "say {d}", "{d} ok", "Echo {d}", "{d}?", "Copy {d}"]


def write_jsonl(path: Path, rows: list) -> Path:
    """``rows`` as JSONL (a str row is written as it is, for malformed-line tests)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def copy_task(tmp_path_factory) -> tuple[Path, Path]:
    """``(train.jsonl, eval.jsonl)`` of the copy task: 60 training and 20 held-out prompts."""
    tmp = tmp_path_factory.mktemp("copy_task")
    train, held_out = [], []
    for t, d in itertools.product(range(len(TEMPLATES)), range(10)):
        (held_out if d % 4 == t % 4 else train).append({"prompt": TEMPLATES[t].format(d=d), "answer": d})
    assert (len(train), len(held_out)) == (60, 20)
    return write_jsonl(tmp / "train.jsonl", train), write_jsonl(tmp / "eval.jsonl", held_out)
