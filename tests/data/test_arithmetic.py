"""The arithmetic toy task must reproduce the anchor (shared/reference/trl-bench/arith.py) draw for draw."""

import importlib.util
from pathlib import Path

import pytest

from rlxf.data import arithmetic_rows, make_problems, question

ANCHOR = Path(__file__).resolve().parents[2] / "../shared/reference/trl-bench/arith.py"


def test_held_out_problems_are_the_anchors():
    # Pasted from random.Random(12345): (randint(0, 99), randint(0, 99)) five times. The anchor's held-out
    # eval is make_problems(200, seed=12345), so its first two problems are 53+93 and 1+38.
    assert make_problems(5, seed=12345) == [(53, 93), (1, 38), (47, 24), (34, 72), (55, 20)]


def test_training_stream_and_default_seed():
    # Pasted from random.Random(1) (the anchor's training stream) and random.Random(0) (its default seed).
    assert make_problems(5, seed=1) == [(17, 72), (97, 8), (32, 15), (63, 97), (57, 60)]
    assert make_problems(5) == [(49, 97), (53, 5), (33, 65), (62, 51), (38, 61)]


def test_prefix_stable_and_in_range():
    long = make_problems(300, seed=7)
    assert make_problems(10, seed=7) == long[:10]
    assert all(0 <= a <= 99 and 0 <= b <= 99 for a, b in long)
    assert make_problems(0, seed=7) == []
    with pytest.raises(ValueError, match="n must be >= 0"):
        make_problems(-1, seed=7)


def test_question_and_rows():
    assert question(53, 93) == "What is 53+93?"
    assert arithmetic_rows(2, seed=12345) == [
        {"prompt": "What is 53+93?", "answer": 146},
        {"prompt": "What is 1+38?", "answer": 39},
    ]


@pytest.mark.skipif(not ANCHOR.is_file(), reason="shared/reference/trl-bench/arith.py not present")
def test_matches_anchor_module():
    spec = importlib.util.spec_from_file_location("anchor_arith", ANCHOR)
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    for seed in (12345, 1, 0):
        assert make_problems(200, seed=seed) == anchor.make_problems(200, seed=seed)
    assert question(7, 8) == anchor.question(7, 8)
