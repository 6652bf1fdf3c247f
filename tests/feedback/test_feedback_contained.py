"""ContainedRewardFunction: a user's reward function that raises, hangs, segfaults or exits costs only its item."""

import math
import operator
import resource
import sys
import textwrap

import pytest
import torch

from rlxf.feedback import (
    ContainedRewardFunction,
    Feedback,
    FeedbackError,
    FeedbackSourceFailed,
    make_feedback,
    make_feedback_from_spec,
    validate_scores,
)
from rlxf.feedback.contained import _memory_rlimit

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

def hog(prompt, completion, **context):
    """Allocates `completion` MB (zero-filled, so the pages cost no RAM until written) and returns the size."""
    return float(len(bytearray(int(completion) << 20)) >> 20)

def tensor_mb(prompt, completion, **context):
    """Imports torch in the worker and allocates `completion` MB of float32."""
    import torch
    return torch.empty(int(completion) << 18).numel() / (1 << 18)

def typed(prompt, completion, **context):
    import numpy
    return {"str": "0.5", "bool": True, "none": None, "np_bool": numpy.bool_(True), "float64": numpy.float64(0.25),
            "int64": numpy.int64(2), "int": 3, "inf": float("inf")}[completion]

def batch_typed(prompts, completions, **context):
    import numpy
    return {"list": [1, "0.5"], "array": numpy.array([0.5, 1.5]), "str": "0.5", "bools": [1.0, True]}[prompts[0]]

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
    count = ContainedRewardFunction(str.count)  # a picklable callable: how often the completion is in the prompt
    assert count(["hello world", "hello"], ["o", "x"]).values.tolist() == [2.0, 0.0]
    count.close()


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


def test_memory_limit_is_the_workers_own(rewards):
    """An allocation beyond memory_limit_mb is a MemoryError in the worker, recorded on its item; the worker
    survives it, the next item scores, and the caller's own limits and memory are untouched."""
    parent_limits = [resource.getrlimit(r) for r in (resource.RLIMIT_DATA, resource.RLIMIT_AS)]
    fn = ContainedRewardFunction(f"{rewards}:hog", memory_limit_mb=300)
    scores = fn(["p"] * 3, ["600", "50", "600"])
    assert math.isnan(scores.values[0]) and scores.values[1] == 50.0 and math.isnan(scores.values[2])
    refused = "MemoryError (worker memory limit 300 MB, memory_limit_mb)"
    assert scores.info["error"] == [refused, None, refused]
    assert fn.counts == {"calls": 3, "errors": 2, "timeouts": 0, "crashes": 0, "restarts": 0}
    fn.close()
    assert [resource.getrlimit(r) for r in (resource.RLIMIT_DATA, resource.RLIMIT_AS)] == parent_limits
    assert len(bytearray(600 << 20)) == 600 << 20  # the caller itself may still allocate it
    unlimited = ContainedRewardFunction(f"{rewards}:hog", memory_limit_mb=0)
    assert unlimited(["p"], ["600"]).values.tolist() == [600.0]  # the same allocation passes without the limit
    unlimited.close()


def test_the_default_memory_limit_lets_a_torch_worker_run(rewards):
    """With the default 4096 MB the worker imports torch and allocates 100 MB; 8 GB is refused with the limit
    named (torch's allocator raises RuntimeError, not MemoryError)."""
    fn = ContainedRewardFunction(f"{rewards}:tensor_mb")
    assert fn.memory_limit_mb == 4096
    scores = fn(["p", "p", "p"], ["100", "8192", "1"])
    assert scores.values[0] == 100.0 and math.isnan(scores.values[1]) and scores.values[2] == 1.0
    assert "allocate" in scores.info["error"][1]
    assert scores.info["error"][1].endswith("(worker memory limit 4096 MB, memory_limit_mb)")
    fn.close()


def test_the_memory_limit_is_data_on_linux_and_address_space_elsewhere():
    assert _memory_rlimit("Linux", "6.18.44-fc-v1147") == "RLIMIT_DATA"
    assert _memory_rlimit("Linux", "4.7.0") == "RLIMIT_DATA"
    assert _memory_rlimit("Linux", "4.6.9") == "RLIMIT_AS"  # RLIMIT_DATA bounded only brk before 4.7
    assert _memory_rlimit("Darwin", "23.1.0") == "RLIMIT_AS"
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="memory_limit_mb must be a whole number"):
            ContainedRewardFunction("m:f", memory_limit_mb=bad)
        with pytest.raises(ValueError, match="max_consecutive_timeouts must be a whole number"):
            ContainedRewardFunction("m:f", max_consecutive_timeouts=bad)


def test_a_function_that_keeps_timing_out_is_declared_failed(rewards):
    """Timeouts in a row count across calls; an answer in time (a score or an error) starts the count again;
    the third in a row raises FeedbackSourceFailed at once."""
    fn = ContainedRewardFunction(f"{rewards}:fragile", timeout_s=0.3, max_consecutive_timeouts=3)
    first = fn(["p"] * 6, ["hang", "ok", "hang", "hang", "raise", "hang"])  # in a row: 1, 0, 1, 2, 0, 1
    assert first.info["timeout"] == [True, False, True, True, False, True]
    with pytest.raises(FeedbackSourceFailed) as failed:
        fn(["p"] * 3, ["hang", "hang", "ok"])  # 2, 3: failed
    assert str(failed.value) == (f"python_function '{rewards}:fragile': 3 calls in a row timed out after 0.3 s "
                                 "each; the function is declared failed (raise timeout_s or fix the function)")
    assert fn.counts["calls"] == 8 and fn.counts["timeouts"] == 6  # the item after the third was not called
    fn.close()
    patient = ContainedRewardFunction(f"{rewards}:fragile", timeout_s=0.3, max_consecutive_timeouts=0)
    assert patient(["p"] * 4, ["hang"] * 4).info["timeout"] == [True] * 4
    patient.close()


def test_only_real_numbers_are_scores(rewards):
    """int, float and numpy scalars are scores (inf as it is); str, bool (Python's or numpy's) and None are the
    item's error, and the worker goes on."""
    fn = ContainedRewardFunction(f"{rewards}:typed")
    completions = ["str", "bool", "none", "np_bool", "float64", "int64", "int", "inf"]
    scores = fn(["p"] * len(completions), completions)
    values = scores.values.tolist()
    assert all(math.isnan(v) for v in values[:4]) and values[4:] == [0.25, 2.0, 3.0, math.inf]
    errors = scores.info["error"]
    assert errors[:3] == ["returned str '0.5', not a number", "returned bool True, not a number",
                          "returned NoneType None, not a number"]
    assert errors[3].startswith("returned bool") and errors[3].endswith(", not a number")  # numpy bool_: np.True_
    assert errors[4:] == [None] * 4
    assert fn.counts == {"calls": 8, "errors": 4, "timeouts": 0, "crashes": 0, "restarts": 0}
    fn.close()
    contains = ContainedRewardFunction(operator.contains)  # returns a bool
    assert contains(["hello"], ["he"]).info["error"] == ["returned bool True, not a number"]
    contains.close()


def test_a_batched_function_must_return_numbers(rewards):
    fn = ContainedRewardFunction(f"{rewards}:batch_typed", batched=True)
    assert fn(["array", "q"], ["a", "b"]).values.tolist() == [0.5, 1.5]  # a numpy array of numbers
    for prompt, error in [("list", "returned a list whose element 1 is str '0.5', not a number"),
                          ("bools", "returned a list whose element 1 is bool True, not a number"),
                          ("str", "returned str '0.5', not a list of numbers")]:
        scores = fn([prompt, "q"], ["a", "b"])
        assert all(math.isnan(v) for v in scores.values.tolist()) and scores.info["error"] == [error] * 2
    fn.close()


def test_the_registry_loads_the_function_when_the_feedback_is_made(rewards, monkeypatch):
    """A wrong module or function name fails in make_feedback_from_spec, in one line, not at the first call."""
    monkeypatch.syspath_prepend(str(rewards.parent))
    with pytest.raises(FeedbackError) as no_function:
        make_feedback_from_spec("python_function:rewards:nope")
    assert str(no_function.value) == ("feedback spec 'python_function:rewards:nope': python_function: cannot load "
                                      "the reward function 'rewards:nope': AttributeError: module 'rewards' has "
                                      "no attribute 'nope'")
    with pytest.raises(FeedbackError) as no_module:
        make_feedback_from_spec("python_function:no_such_rlxf_module:fn,timeout_s=2")
    assert str(no_module.value).endswith("python_function: cannot load the reward function "
                                         "'no_such_rlxf_module:fn': ModuleNotFoundError: No module named "
                                         "'no_such_rlxf_module'")
    good = make_feedback_from_spec("python_function:rewards:length")
    assert good._proc is not None and good._proc.poll() is None  # started and loaded already
    assert good(["p"], ["abc"]).values.tolist() == [3.0] and good.counts["restarts"] == 0
    good.close()
    with pytest.raises(FeedbackError) as direct:
        ContainedRewardFunction(f"{rewards}:missing").start()
    assert "\n" not in str(direct.value) and "Traceback" in direct.value.worker_traceback
