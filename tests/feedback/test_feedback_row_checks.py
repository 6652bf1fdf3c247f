"""`row_problems`: each feedback source says at load time which prompt rows it cannot score, as `file:line`.

For every source: rows with the field missing or mistyped are reported (and the scorer indeed refuses them, or
would score them wrongly), rows it accepts are scored correctly, so the check and the scorer agree.
"""

import json
import math

import pytest
import torch

from rlxf.data import DataError, load_prompts
from rlxf.feedback import (
    ArithmeticVerifier,
    FeedbackError,
    Gated,
    GoldRewardModel,
    LengthPenalty,
    Normalized,
    NumericAnswerVerifier,
    PairwiseJudge,
    PointwiseJudge,
    UnitTestVerifier,
    WeightedSum,
    row_problems,
    shown_json,
)
from rlxf.feedback.math import MathAnswerVerifier


def write(tmp_path, rows, name="prompts.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_shown_json_names_the_json_type():
    assert shown_json("seven") == 'string "seven"'
    assert [shown_json(v) for v in (7.5, True, None, [1, 2], {"a": 1})] == [
        "number 7.5", "boolean true", "null", "array [1, 2]", 'object {"a": 1}']
    assert shown_json("x" * 100, limit=10) == 'string "xxxxxx...'


def test_sources_without_needs_give_no_problems():
    assert row_problems(lambda prompts, completions, **context: None, {}) == []
    assert row_problems(GoldRewardModel(), {"prompt": "p"}) == []
    assert LengthPenalty(16, 4).row_problems({"prompt": "p"}) == []


# --- arithmetic ---------------------------------------------------------------------------------------------

ARITHMETIC_BAD = [
    ({"prompt": "p"}, "missing 'answer' (the arithmetic verifier compares the reply's last integer with it)"),
    ({"prompt": "p", "answer": "seven"}, "'answer' must be an integer for the arithmetic verifier, got string "
                                         "\"seven\""),
    ({"prompt": "p", "answer": 7.5}, "got number 7.5"),
    ({"prompt": "p", "answer": True}, "got boolean true"),
    ({"prompt": "p", "answer": None}, "got null"),
    ({"prompt": "p", "answer": "#### 7"}, "got string \"#### 7\""),
    ({"prompt": "p", "answer": [7]}, "got array [7]"),
]


@pytest.mark.parametrize(("row", "problem"), ARITHMETIC_BAD)
def test_arithmetic_refuses_rows_it_cannot_score(row, problem):
    verifier = ArithmeticVerifier()
    problems = row_problems(verifier, row)
    assert len(problems) == 1 and problem in problems[0]
    with pytest.raises(FeedbackError):  # the scorer refuses the same row, mid-run
        verifier(["p"], ["7"], answer=[row.get("answer")])


@pytest.mark.parametrize("answer", [7, "7", " 7 ", 7.0, "+7"])
def test_arithmetic_accepts_and_scores_integers(answer):
    verifier = ArithmeticVerifier()
    assert verifier.row_problems({"prompt": "p", "answer": answer}) == []
    scores = verifier(["p", "p"], ["3 + 4 = 7", "3 + 4 = 8"], answer=[answer, answer])
    assert scores.values.tolist() == [1.0, 0.0]


# --- numeric ------------------------------------------------------------------------------------------------

NUMERIC_BAD = [
    ({"prompt": "p"}, "missing 'answer' (the numeric verifier compares the reply's final number with it)"),
    ({"prompt": "p", "answer": "seven"}, "'answer' must be a number for the numeric verifier"),
    ({"prompt": "p", "answer": "18 eggs"}, "got string \"18 eggs\""),
    ({"prompt": "p", "answer": True}, "got boolean true"),
    ({"prompt": "p", "answer": None}, "got null"),
    ({"prompt": "p", "answer": math.nan}, "got number NaN"),
    ({"prompt": "p", "answer": {"value": 1}}, "got object"),
]


@pytest.mark.parametrize(("row", "problem"), NUMERIC_BAD)
def test_numeric_refuses_rows_it_cannot_score(row, problem):
    verifier = NumericAnswerVerifier()
    problems = row_problems(verifier, row)
    assert len(problems) == 1 and problem in problems[0]
    with pytest.raises(FeedbackError):
        verifier(["p"], ["18"], answer=[row.get("answer")])


@pytest.mark.parametrize(("answer", "right", "wrong"), [
    (18, "#### 18", "#### 19"),
    (7.5, "It is 7.5", "It is 7"),
    ("1,234", "\\boxed{1234}", "\\boxed{1233}"),
    ("3/4", "so 0.75", "so 0.7"),
    ("She has 9 + 9 = 18 eggs.\n#### 18", "#### 18", "#### 81"),
])
def test_numeric_accepts_and_scores_numbers(answer, right, wrong):
    verifier = NumericAnswerVerifier()
    assert verifier.row_problems({"prompt": "p", "answer": answer}) == []
    assert verifier(["p", "p"], [right, wrong], answer=[answer, answer]).values.tolist() == [1.0, 0.0]


# --- math ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("row", "problem"), [
    ({"prompt": "p", "answer": "1"}, "missing 'ground_truth' (the math verifier compares the reply's final answer"),
    ({"prompt": "p", "ground_truth": "  "}, "'ground_truth' for the math verifier is empty: string \"  \""),
    ({"prompt": "p", "ground_truth": "$ $"}, "is empty"),
    ({"prompt": "p", "ground_truth": True}, "must be LaTeX text or a number, got boolean true"),
    ({"prompt": "p", "ground_truth": None}, "got null"),
    ({"prompt": "p", "ground_truth": ["1"]}, "got array [\"1\"]"),
    ({"prompt": "p", "ground_truth": math.inf}, "is not finite: number Infinity"),
])
def test_math_refuses_rows_it_cannot_score(row, problem):
    verifier = MathAnswerVerifier(answer_key="ground_truth", isolation="inline")
    problems = row_problems(verifier, row)
    assert len(problems) == 1 and problem in problems[0]
    with pytest.raises(FeedbackError):
        verifier(["p"], ["\\boxed{1}"], ground_truth=[row.get("ground_truth")])


def test_math_accepts_and_scores_text_and_numbers():
    verifier = MathAnswerVerifier(answer_key="ground_truth", isolation="inline")
    golds = ["\\frac{1}{2}", "$\\frac{2}{3}$", 7, 51.0, "The sum is $\\boxed{12}$."]
    assert [verifier.row_problems({"prompt": "p", "ground_truth": g}) for g in golds] == [[]] * 5
    right = ["\\boxed{0.5}", "\\boxed{4/6}", "\\boxed{7}", "\\boxed{51}", "\\boxed{12}"]
    wrong = ["\\boxed{0.6}", "\\boxed{3/4}", "\\boxed{8}", "\\boxed{50}", "\\boxed{13}"]
    scores = verifier(["p"] * 10, right + wrong, ground_truth=golds + golds)
    assert scores.values.tolist() == [1.0] * 5 + [0.0] * 5
    # the default key is 'answer'
    assert MathAnswerVerifier().row_problems({"prompt": "p", "answer": "1"}) == []


# --- unit tests ---------------------------------------------------------------------------------------------

HUMANEVAL_ROW = {"prompt": "def add(a, b):\n", "test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}
MBPP_ROW = {"prompt": "Write add(a, b).", "test_list": ["assert add(2, 3) == 5", "assert add(0, 0) == 0"],
            "test_setup_code": ""}


@pytest.mark.parametrize(("row", "problem"), [
    ({"prompt": "p"}, "missing 'test_list' (MBPP asserts) or 'test' + 'entry_point' (HumanEval)"),
    ({"prompt": "p", "test_list": [], "test": None}, "'test_list' is array [] and there is no 'test'"),
    ({**HUMANEVAL_ROW, "entry_point": None}, "missing 'entry_point'"),
    ({**HUMANEVAL_ROW, "entry_point": 3}, "'entry_point' must be a function name, got number 3"),
    ({**HUMANEVAL_ROW, "test": ""}, "'test' must be Python source defining check(candidate), got string \"\""),
    ({**MBPP_ROW, "test_list": "assert add(2, 3) == 5"}, "'test_list' must be a list of assert statements"),
    ({**MBPP_ROW, "test_list": ["assert add(2, 3) == 5", 5]}, "(non-blank strings)"),
    ({**MBPP_ROW, "test_setup_code": ["x = 1"]}, "'test_setup_code' must be a string of Python, got array"),
])
def test_unit_tests_refuse_rows_without_usable_tests(row, problem):
    problems = row_problems(UnitTestVerifier(), row)
    assert len(problems) == 1 and problem in problems[0]
    keys = ("test", "entry_point", "test_list", "test_setup_code")
    context = {key: [row.get(key)] for key in keys if row.get(key) is not None}
    try:  # mid-run, the scorer refuses the row, crashes on it, or fails even the right code
        scores = UnitTestVerifier()(["p"], ["def add(a, b):\n    return a + b\n"], **context)
    except (FeedbackError, TypeError, AttributeError):
        return
    assert scores.values.tolist() == [0.0]


def test_blank_test_list_is_refused_because_anything_would_pass():
    row = {**MBPP_ROW, "test_list": ["", "  "]}
    assert "(non-blank strings)" in row_problems(UnitTestVerifier(), row)[0]
    scores = UnitTestVerifier()(["p"], ["def add(a, b):\n    return 0\n"], test_list=[row["test_list"]])
    assert scores.values.tolist() == [1.0]  # what the check prevents: wrong code "passes" no tests


def test_unit_tests_accept_and_score_humaneval_and_mbpp_rows():
    verifier = UnitTestVerifier()
    assert verifier.row_problems(HUMANEVAL_ROW) == [] and verifier.row_problems(MBPP_ROW) == []
    rows = [HUMANEVAL_ROW, MBPP_ROW] * 2
    right, wrong = "def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n"
    scores = verifier([r["prompt"] for r in rows], [right, right, wrong, wrong],
                      test=[r.get("test") for r in rows], entry_point=[r.get("entry_point") for r in rows],
                      test_list=[r.get("test_list") for r in rows],
                      test_setup_code=[r.get("test_setup_code") for r in rows])
    assert scores.values.tolist() == [1.0, 1.0, 0.0, 0.0], scores.info["stderr_tail"]


# --- combinators --------------------------------------------------------------------------------------------


def test_combinators_report_the_union_of_their_parts():
    arithmetic, numeric = ArithmeticVerifier(), NumericAnswerVerifier()
    summed = WeightedSum({"task": (arithmetic, 1.0), "length": (LengthPenalty(16, 4), 1.0)})
    gated = Gated(Normalized(arithmetic), numeric)
    nested = WeightedSum({"gated": (gated, 1.0), "again": (arithmetic, 0.0)})
    missing = {"prompt": "p"}
    assert summed.row_problems(missing) == row_problems(arithmetic, missing)
    # the gate's and the reward's problems, each once (the arithmetic verifier is in it twice)
    expected = row_problems(numeric, missing) + row_problems(arithmetic, missing)
    assert gated.row_problems(missing) == expected and nested.row_problems(missing) == expected
    assert len(expected) == 2
    half = {"prompt": "p", "answer": 7.5}  # a number, not an integer: only the arithmetic verifier objects
    assert row_problems(gated, half) == ["'answer' must be an integer for the arithmetic verifier, got number 7.5"]
    fine = {"prompt": "p", "answer": "7"}
    assert nested.row_problems(fine) == []
    scores = summed(["p", "p"], ["7", "8"], answer=["7", "7"], completion_tokens=[3, 3])
    assert scores.values.tolist() == [1.0, 0.0]


# --- judges -------------------------------------------------------------------------------------------------


class UniformLM:
    """A judge model that renders a message as itself and finds every verdict equally likely."""

    def __init__(self):
        self.seen = []

    def render(self, message):
        return message

    def truncate(self, text, max_tokens, *, keep="head"):
        return text, False

    def choice_logps(self, prompts, choices):
        self.seen += prompts
        return torch.zeros(len(prompts), len(choices))

    def generate(self, prompts, *, max_new_tokens):
        raise AssertionError("logprobs mode does not generate")


def test_judge_needs_its_template_fields_and_pairwise_a_reference(tmp_path):
    lm = UniformLM()
    judge = PointwiseJudge(lm, template="{instruction} {response} ref={reference_answer}")
    assert row_problems(judge, {"prompt": "p"}) == [
        "missing 'reference_answer' (the judge template fills {reference_answer} with it)"]
    assert row_problems(judge, {"prompt": "p", "reference_answer": None}) != []
    assert row_problems(PointwiseJudge(lm), {"prompt": "p"}) == []  # the bundled template needs no context
    fine = {"prompt": "p", "reference_answer": 4}
    assert judge.row_problems(fine) == []
    assert judge(["p"], ["r"], reference_answer=[4]).values.tolist() == [3.0] and lm.seen[-1] == "p r ref=4"

    pairwise = PairwiseJudge(lm, template="{instruction}|{response_a}|{response_b}")
    assert row_problems(pairwise, {"prompt": "p"}) == [
        "missing 'reference' (the pairwise judge scores a reply by its chance of beating it)"]
    assert "must be a reply (a string)" in row_problems(pairwise, {"prompt": "p", "reference": ["a"]})[0]
    assert pairwise.row_problems({"prompt": "p", "reference": "a"}) == []
    assert pairwise(["p"], ["b"], reference=["a"]).values.tolist() == [0.5]


# --- at load time, as file:line ------------------------------------------------------------------------------


def test_load_prompts_reports_rows_the_feedback_cannot_score_as_file_and_line(tmp_path):
    verifier = ArithmeticVerifier()
    rows = [{"prompt": "1+1?", "answer": 2}, {"prompt": "2+5?"}, {"prompt": "3+4?", "answer": "seven"},
            {"prompt": "9-2?", "answer": "7"}, {"prompt": "", "answer": 7.5}]
    path = write(tmp_path, rows)
    with pytest.raises(DataError) as err:
        load_prompts(path, check=lambda row: row_problems(verifier, row))
    assert err.value.problems == [
        f"{path}:2: missing 'answer' (the arithmetic verifier compares the reply's last integer with it)",
        f"{path}:3: 'answer' must be an integer for the arithmetic verifier, got string \"seven\"",
        f"{path}:5: 'prompt' is empty; 'answer' must be an integer for the arithmetic verifier, got number 7.5",
    ]
    assert str(err.value).startswith(f"3 bad rows in {path}:")
    good, problems = load_prompts(path, strict=False, check=lambda row: row_problems(verifier, row))
    assert good == [rows[0], rows[3]] and len(problems) == 3
    # the rows that pass the check are scored without error
    assert verifier([r["prompt"] for r in good], ["2", "7"], answer=[r["answer"] for r in good]).values.tolist() == [
        1.0, 1.0]


def test_load_prompts_checks_code_rows_for_their_tests(tmp_path):
    verifier = UnitTestVerifier()
    path = write(tmp_path, [HUMANEVAL_ROW, {"prompt": "Write add."}, MBPP_ROW,
                            {**HUMANEVAL_ROW, "entry_point": None}])
    good, problems = load_prompts(path, strict=False, check=lambda row: row_problems(verifier, row))
    assert good == [HUMANEVAL_ROW, MBPP_ROW]
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:2", f"{path}:4"]
    assert "missing 'test_list' (MBPP asserts) or 'test' + 'entry_point'" in problems[0]
    assert "missing 'entry_point'" in problems[1]
