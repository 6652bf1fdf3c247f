"""ContainedRewardFunction: a user's reward function that raises, hangs, segfaults or exits costs only its item."""

import math
import operator
import sys
import textwrap

import pytest
import torch

from rlxf.feedback import ContainedRewardFunction, Feedback, FeedbackError, make_feedback, validate_scores

REWARDS = '''
import os, time

def length(prompt, completion, **context):
    """Per item: the completion's length, or `bonus` from the context when it is given."""
    return len(completion) + context.get("bonus", 0)

def fragile(prompt, completion, **context):
    if completion == "raise":
        raise ValueError("no reward for you")
    if completion == "hang":
        time.sleep(60)
    if completion == "segfault":
        import ctypes
        ctypes.string_at(0)
    if completion == "exit":
        os._exit(7)
    if completion == "nan":
        return float("nan")
    return 1.0

def batch(prompts, completions, **context):
    if "crash" in completions:
        os._exit(3)
    return [float(p == c) for p, c in zip(prompts, completions)]

def wrong_length(prompts, completions, **context):
    return [0.0]

not_callable = 3
'''


@pytest.fixture()
def rewards(tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text(textwrap.dedent(REWARDS))
    return path


def test_scores_per_item_with_context(rewards):
    fn = ContainedRewardFunction(f"{rewards}:length", timeout_s=10)
    assert isinstance(fn, Feedback)
    scores = fn(["p", "q", "r"], ["a", "bcd", ""], bonus=[0, 10, 100])
    assert scores.values.tolist() == [1.0, 13.0, 100.0]  # len + bonus, item by item
    assert scores.values.dtype == torch.float32
    assert scores.info == {"source": ["python_function"] * 3, "error": [None] * 3, "timeout": [False] * 3}
    assert fn.counts == {"calls": 3, "errors": 0, "timeouts": 0, "crashes": 0, "restarts": 0}
    fn.close()


def test_failures_are_contained_and_the_next_call_works(rewards):
    """Each failure is recorded on its own item, the worker is replaced, and later items score normally."""
    fn = ContainedRewardFunction(f"{rewards}:fragile", timeout_s=1.0)
    completions = ["ok", "raise", "ok", "hang", "ok", "segfault", "ok", "exit", "ok", "nan"]
    scores = fn(["p"] * len(completions), completions)
    values = scores.values.tolist()
    assert [values[i] for i in (0, 2, 4, 6, 8)] == [1.0] * 5
    assert all(math.isnan(values[i]) for i in (1, 3, 5, 7, 9))
    errors = scores.info["error"]
    assert "ValueError: no reward for you" in errors[1]
    assert "no result within 1 s" in errors[3] and scores.info["timeout"] == [i == 3 for i in range(10)]
    assert "SIGSEGV" in errors[5]
    assert "exited with code 7" in errors[7]
    assert errors[9] is None  # a NaN returned by the function is its value, not an error
    assert fn.counts == {"calls": 10, "errors": 1, "timeouts": 1, "crashes": 2, "restarts": 3}
    # the recipe's validation turns the NaNs into the fill value and flags them
    checked = validate_scores(scores, len(completions), on_nonfinite="record", fill=0.0)
    assert checked.values.tolist() == [1.0, 0.0] * 5
    assert checked.info["nonfinite"] == [False, True] * 5
    assert fn(["p"], ["ok"]).values.tolist() == [1.0]
    fn.close()


def test_batched_function_and_its_failures(rewards):
    fn = ContainedRewardFunction(f"{rewards}:batch", batched=True, fill=-1.0)
    assert fn(["a", "b"], ["a", "c"]).values.tolist() == [1.0, 0.0]
    crashed = fn(["a", "b"], ["crash", "c"])
    assert crashed.values.tolist() == [-1.0, -1.0] and "exited with code 3" in crashed.info["error"][0]
    assert fn(["x"], ["x"]).values.tolist() == [1.0]
    short = ContainedRewardFunction(f"{rewards}:wrong_length", batched=True)(["a", "b"], ["a", "b"])
    assert short.info["error"] == ["returned 1 scores for 2 completions"] * 2
    fn.close()


def test_import_path_callable_and_registry(rewards, monkeypatch):
    monkeypatch.syspath_prepend(str(rewards.parent))
    fn = make_feedback("python_function", path="rewards:length", timeout_s=5)
    assert isinstance(fn, ContainedRewardFunction)
    assert fn(["p"], ["abcd"]).values.tolist() == [4.0]
    fn.close()
    contains = ContainedRewardFunction(operator.contains)  # a picklable callable: 1.0 when completion in prompt
    assert contains(["hello world", "hello"], ["world", "bye"]).values.tolist() == [1.0, 0.0]
    contains.close()


def test_bad_functions_are_clear_errors(rewards):
    with pytest.raises(ValueError, match="module level"):
        ContainedRewardFunction(lambda p, c: 1.0)
    with pytest.raises(ValueError, match="module:function"):
        ContainedRewardFunction("rewards.length")
    with pytest.raises(FileNotFoundError):
        ContainedRewardFunction("/nonexistent/rewards.py:length")
    with pytest.raises(FeedbackError, match="AttributeError"):
        ContainedRewardFunction(f"{rewards}:missing")(["p"], ["c"])
    with pytest.raises(FeedbackError, match="not callable"):
        ContainedRewardFunction(f"{rewards}:not_callable")(["p"], ["c"])
    with pytest.raises(ValueError, match="timeout_s"):
        ContainedRewardFunction(f"{rewards}:length", timeout_s=0)
    assert "rlxf_user_reward" not in sys.modules  # the user's file is imported by the worker only
