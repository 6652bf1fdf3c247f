"""UnitTestVerifier: code extraction, program assembly, HumanEval and MBPP reference solutions pass, wrong ones fail."""

import json
import time
from pathlib import Path

import pytest
import torch

from rlxf.feedback import (
    Feedback,
    FeedbackError,
    UnitTestVerifier,
    build_program,
    extract_code,
    make_feedback,
    validate_scores,
)

DATA = Path(__file__).resolve().parents[2] / "../shared/data"
HUMANEVAL = [json.loads(line) for line in (DATA / "humaneval/HumanEval.jsonl").read_text().splitlines()]
MBPP = [json.loads(line) for line in (DATA / "mbpp/mbpp.jsonl").read_text().splitlines()]


def score_humaneval(verifier, rows, completions, prompts=None):
    prompts = [r["prompt"] for r in rows] if prompts is None else prompts
    return verifier(prompts, completions, test=[r["test"] for r in rows], entry_point=[r["entry_point"] for r in rows])


def score_mbpp(verifier, rows, completions):
    return verifier([r["text"] for r in rows], completions, test_list=[r["test_list"] for r in rows],
                    test_setup_code=[r["test_setup_code"] for r in rows])


# --- extraction and assembly --------------------------------------------------------------------------------


def test_extract_code_from_fences():
    assert extract_code("def f():\n    return 1\n") == ("def f():\n    return 1\n", False)
    text = "Here:\n```python\ndef f():\n    return 1\n```\nand a fix:\n```\ndef f():\n    return 2\n```\nDone."
    assert extract_code(text) == ("def f():\n    return 1\n\n\ndef f():\n    return 2\n", True)
    assert extract_code("```bash\npip install x\n```\n```py\nx = 1\n```") == ("x = 1\n", True)
    assert extract_code("```python\nx = 1\ny = 2") == ("x = 1\ny = 2\n", True)  # truncated generation
    assert extract_code("```bash\nrm -rf /\n```") == ("```bash\nrm -rf /\n```", False)


def test_build_program_humaneval_and_mbpp():
    """The parts are joined in order, each ending in a newline; the marker is written to fd 2 last."""
    program = build_program("    return a + b", prompt="def add(a, b):\n",
                            test="def check(c):\n    assert c(1, 2) == 3", entry_point="add", marker="M")
    assert program == ("def add(a, b):\n    return a + b\ndef check(c):\n    assert c(1, 2) == 3\ncheck(add)\n"
                       "__import__('os').write(2, b'\\nM\\n')\n")
    program = build_program("class A: pass", test_list=["assert a", "assert b"], test_setup_code="a = b = A()")
    assert program == "class A: pass\na = b = A()\nassert a\nassert b\n"
    with pytest.raises(FeedbackError, match="entry_point"):
        build_program("x", test="def check(c): pass")
    with pytest.raises(FeedbackError, match="test_list"):
        build_program("x")
    with pytest.raises(FeedbackError, match="list of assert"):
        build_program("x", test_list="assert True")


def test_missing_or_misaligned_context_is_a_clear_error():
    verifier = UnitTestVerifier()
    with pytest.raises(FeedbackError, match="needs context 'test_list'"):
        verifier(["p"], ["c"], answer=[1])
    with pytest.raises(FeedbackError, match="2 items"):
        verifier(["p"], ["c"], test_list=[["assert True"], ["assert True"]])
    with pytest.raises(FeedbackError, match=r"entry_point.*\(item 0\)"):
        verifier(["p"], ["c"], test=["def check(c): pass"])
    with pytest.raises(ValueError, match="include_prompt"):
        UnitTestVerifier(include_prompt="sometimes")


# --- HumanEval ----------------------------------------------------------------------------------------------

FAST_HUMANEVAL = HUMANEVAL[:: len(HUMANEVAL) // 10][:10]


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    verifier = UnitTestVerifier(workers=2)
    assert isinstance(verifier, Feedback) and isinstance(make_feedback("unit_tests"), UnitTestVerifier)
    rows = FAST_HUMANEVAL + FAST_HUMANEVAL
    completions = [r["canonical_solution"] for r in FAST_HUMANEVAL] + ["    return None\n"] * len(FAST_HUMANEVAL)
    scores = score_humaneval(verifier, rows, completions)
    validate_scores(scores, len(rows))
    assert scores.values.tolist() == [1.0] * 10 + [0.0] * 10, scores.info["stderr_tail"]
    assert scores.info["status"] == ["ok"] * 10 + ["error"] * 10
    assert scores.info["correct"] == [True] * 10 + [False] * 10
    assert all("Error" in tail for tail in scores.info["stderr_tail"][10:])  # AssertionError, TypeError
    assert scores.info["source"] == ["unit_tests"] * 20 and len(scores.info["seconds"]) == 20


def test_full_function_in_fences_and_instruction_prompts():
    """A full function in markdown passes after the HumanEval prompt (it redefines the docstring-only stub);
    a prose instruction as the prompt is not prepended with include_prompt='auto'."""
    row = HUMANEVAL[0]
    full = row["prompt"] + row["canonical_solution"]
    verifier = UnitTestVerifier()
    reply = f"Sure, here it is:\n```python\n{full}```\nThis sorts first."
    scores = score_humaneval(verifier, [row] * 3, [reply] * 3,
                             prompts=[row["prompt"], "Write has_close_elements in Python, please.", "hello"])
    assert scores.values.tolist() == [1.0] * 3 and scores.info["code_extracted"] == [True] * 3
    # a body alone needs the signature from the prompt: without it, it is a syntax error
    never = UnitTestVerifier(include_prompt="never")
    assert score_humaneval(never, [row], [row["canonical_solution"]]).values.tolist() == [0.0]


def test_exiting_early_with_status_zero_does_not_pass():
    row = HUMANEVAL[2]
    hacks = ["    import sys; sys.exit(0)\n", "    import os; os._exit(0)\n",
             "    pass\nimport os\nos._exit(0)\n"]
    scores = score_humaneval(UnitTestVerifier(), [row] * 3, hacks)
    assert scores.values.tolist() == [0.0, 0.0, 0.0]
    assert scores.info["status"][2] == "ok"  # the program itself did exit cleanly


def test_hostile_completions_score_zero_and_are_recorded():
    row = HUMANEVAL[0]
    verifier = UnitTestVerifier(timeout_s=1.0, memory_mb=256)
    completions = ["    while True:\n        pass\n", "    x = bytearray(10 ** 10)\n",
                   "    import ctypes; ctypes.string_at(0)\n"]
    scores = score_humaneval(verifier, [row] * 3, completions)
    assert scores.values.tolist() == [0.0, 0.0, 0.0]
    assert scores.info["status"] == ["timeout", "memory", "killed"]


@pytest.mark.slow
def test_every_humaneval_canonical_solution_passes():
    start = time.perf_counter()
    scores = score_humaneval(UnitTestVerifier(workers=2), HUMANEVAL, [r["canonical_solution"] for r in HUMANEVAL])
    seconds = time.perf_counter() - start
    failed = [r["task_id"] for r, ok in zip(HUMANEVAL, scores.info["correct"], strict=True) if not ok]
    print(f"HumanEval canonical solutions: {len(HUMANEVAL) - len(failed)}/{len(HUMANEVAL)} in {seconds:.1f} s")
    assert failed == []
    assert torch.equal(scores.values, torch.ones(len(HUMANEVAL)))


# --- MBPP ---------------------------------------------------------------------------------------------------


def test_mbpp_reference_solutions_pass_and_wrong_ones_fail():
    rows = MBPP[:8] + [r for r in MBPP if r["test_setup_code"]][:1]
    verifier = UnitTestVerifier(workers=2)
    scores = score_mbpp(verifier, rows, [r["code"] for r in rows])
    assert scores.values.tolist() == [1.0] * len(rows), scores.info["stderr_tail"]
    wrong = [r["code"] + "\n" + f"{_function_name(r)} = lambda *args: None" for r in rows[:3]]
    assert score_mbpp(verifier, rows[:3], wrong).values.tolist() == [0.0] * 3


def test_mixed_humaneval_and_mbpp_batch():
    he, mb = HUMANEVAL[1], MBPP[1]
    scores = UnitTestVerifier()(
        [he["prompt"], mb["text"]], [he["canonical_solution"], mb["code"]],
        test=[he["test"], None], entry_point=[he["entry_point"], None], test_list=[None, mb["test_list"]],
    )
    assert scores.values.tolist() == [1.0, 1.0]


@pytest.mark.slow
def test_all_mbpp_reference_solutions():
    """Every reference solution passes; task 123 (amicable numbers below 9999, quadratic) needs ~10 s of CPU."""
    scores = score_mbpp(UnitTestVerifier(workers=2, timeout_s=60), MBPP, [r["code"] for r in MBPP])
    failed = [r["task_id"] for r, ok in zip(MBPP, scores.info["correct"], strict=True) if not ok]
    print(f"MBPP reference solutions: {len(MBPP) - len(failed)}/{len(MBPP)} pass; failing task ids: {failed}")
    assert failed == []


def _function_name(row) -> str:
    return row["test_list"][0].split("assert", 1)[1].strip().lstrip("(").split("(")[0].strip()
