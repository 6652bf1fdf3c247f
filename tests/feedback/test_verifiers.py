"""Verifiers, their answer parsers, the Scores checks and the feedback registry."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from rlxf.feedback import (
    FEEDBACK,
    ArithmeticVerifier,
    Feedback,
    FeedbackError,
    NumericAnswerVerifier,
    Scores,
    boxed_answer,
    finite_mask,
    gsm8k_answer,
    last_integer,
    last_number,
    list_feedback,
    make_feedback,
    parse_number,
    register_feedback,
    validate_scores,
)
from rlxf.testing.data import GSM8K_SOLUTION_KEYS, gsm8k_labelled_solutions

REPO = Path(__file__).resolve().parents[2]
ANCHOR = REPO / "../shared/reference/trl-bench/arith.py"
GSM8K_SOLUTIONS = REPO / "../shared/data/gsm8k/example_model_solutions.jsonl"

# --- the anchor's strict arithmetic rule ------------------------------------------------------------------

STRICT_CASES = [
    # (reply, answer, last integer by the anchor's rule, reward)
    ("53 + 93 = 146.", 146, 146, 1.0),
    ("1,234", 1234, 1234, 1.0),  # commas are deleted before matching
    ("-5", -5, -5, 1.0),
    ("I cannot do arithmetic.", 146, None, 0.0),
    ("146 is the sum, I checked 3 times", 146, 3, 0.0),  # right answer in the middle, a later number wins
    ("16-3", 13, -3, 0.0),  # every '-' before a digit is a sign under the anchor's rule
    ("x2 = 7.5", 5, 5, 1.0),  # "7.5" is two integers, 7 and 5
    ("", 0, None, 0.0),
]


@pytest.mark.parametrize("reply, answer, parsed, reward", STRICT_CASES)
def test_arithmetic_strict_rule(reply, answer, parsed, reward):
    assert last_integer(reply) == parsed
    scores = ArithmeticVerifier()(["q"], [reply], answer=[answer])
    assert scores.values.dtype == torch.float32 and scores.values.tolist() == [reward]
    assert scores.info == {
        "parsed": [parsed],
        "parse_failed": [parsed is None],
        "correct": [reward == 1.0],
        "source": ["arithmetic"],
    }


@pytest.mark.skipif(not ANCHOR.is_file(), reason="shared/reference/trl-bench/arith.py not present")
def test_arithmetic_matches_anchor_checker():
    spec = importlib.util.spec_from_file_location("anchor_arith", ANCHOR)
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    replies = [reply for reply, *_ in STRICT_CASES] + [
        "1,2,3",
        "٣",
        "0-0",
        "The sum is 1 4 6",
        "--7",
        "12abc34",
    ]
    answers = [146, 1234, -5, 0, 3, -3, 5, 123, 3, 0, 6, -7, 34]
    for reply in replies:
        for answer in answers:
            got = ArithmeticVerifier()(["q"], [reply], answer=[answer]).info["correct"][0]
            assert got == anchor.last_number_is_answer(reply, answer), (reply, answer)


def test_arithmetic_answer_forms_and_errors():
    verifier = ArithmeticVerifier()
    assert verifier(["q"] * 3, ["146", "146", "146"], answer=["146", 146.0, " 146 "]).values.tolist() == [
        1,
        1,
        1,
    ]
    with pytest.raises(FeedbackError, match="answer 0 must be an integer, got 146.5"):
        verifier(["q"], ["146"], answer=[146.5])
    with pytest.raises(FeedbackError, match="needs context 'answer'"):
        verifier(["q"], ["146"])
    with pytest.raises(FeedbackError, match="'answer' has 1 items for 2 completions"):
        verifier(["q", "q"], ["1", "2"], answer=[1])
    with pytest.raises(FeedbackError, match="2 prompts for 1 completions"):
        verifier(["q", "q"], ["1"], answer=[1])
    with pytest.raises(FeedbackError, match="completion 0 must be a str"):
        verifier(["q"], [[{"role": "assistant", "content": "1"}]], answer=[1])


# --- answer parsers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("1,234", 1234),
        ("1,234,567.5", 1234567.5),
        ("-5", -5),
        ("− 5", -5),  # Unicode minus, space after the sign
        ("+7", 7),
        ("2.50", 2.5),
        (".5", 0.5),
        ("3/4", 0.75),
        ("-3/4", -0.75),
        ("6/3", 2),  # whole values come back as int
        ("$18", 18),
        ("-$5", -5),
        ("$-5", -5),
        ("\\$1,000.", 1000),
        ("18.", 18),
        ("50%", 50),
        ("\\frac{3}{4}", 0.75),
        ("-\\dfrac{1}{2}", -0.5),
        ("{{12}}", 12),
        ("\\text{12}", 12),
        ("1{,}234", 1234),
        ("1\\,234", 1234),
        ("  42  ", 42),
    ],
)
def test_parse_number(text, value):
    got = parse_number(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "text", ["", ".", "abc", "18 eggs", "x+1", "1/0", "1,2", "1,2345", "3/4/5", "{1}{2}", "--5"]
)
def test_parse_number_rejects(text):
    assert parse_number(text) is None


def test_last_number():
    assert last_number("5 - 3 = 2") == "2"
    assert last_number("16-3") == "3"  # unlike the anchor's rule, the '-' of a subtraction is not a sign
    assert last_number("x = -7 and y2") == "-7"  # "y2" is a name, not a number
    assert last_number("costs $1,234.50 in total.") == "$1,234.50"
    assert last_number("a list: 1,2,3") == "3"
    assert last_number("ratio 5/3.") == "5/3"
    assert last_number("no digits") is None


def test_gsm8k_answer():
    assert gsm8k_answer("She makes 9 * 2 = $18.\n#### 1,234") == "1,234"
    assert gsm8k_answer("#### 5\nno, wait\n####  $-12.") == "$-12"  # the last marker counts
    assert gsm8k_answer("#### 18 eggs") == "18"
    assert gsm8k_answer("#### eighteen") is None
    assert gsm8k_answer("18") is None


def test_boxed_answer():
    assert boxed_answer("so \\boxed{\\frac{3}{4}}.") == "\\frac{3}{4}"
    assert boxed_answer("$\\boxed{{12}}$") == "{12}"
    assert boxed_answer("\\boxed{1} then \\boxed{\\text{2}}") == "\\text{2}"  # the last box
    assert boxed_answer("\\boxed{7} and \\boxed{8") == "7"  # an unclosed box is skipped
    assert boxed_answer("\\fbox{ 9 }") == "9"
    assert boxed_answer("\\boxed 5$") == "5"
    assert boxed_answer("no box") is None


# --- NumericAnswerVerifier ----------------------------------------------------------------------------------


def test_numeric_formats():
    completions = [
        "9 * 2 = 18, plus 1216.\n#### 1,234",
        "The answer is $\\boxed{\\frac{3}{4}}$.",
        "So \\boxed{{12}} apples; 13 would be wrong.",
        "First 3, then 4, so 7.",
        "I give up.",
        "#### eighteen (not 18)",  # a present marker decides: no fall-back to the later 18
        "\\boxed{x+1}",
    ]
    answers = ["1,234", "3/4", 12, 7.0, 1, 18, 1]
    scores = NumericAnswerVerifier()(["q"] * 7, completions, answer=answers)
    assert scores.values.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert scores.info["parsed"] == [1234, 0.75, 12, 7, None, None, None]
    assert scores.info["parse_failed"] == [False, False, False, False, True, True, True]
    assert scores.info["correct"] == [True, True, True, True, False, False, False]
    assert scores.info["format"] == ["gsm8k", "boxed", "boxed", "last_number", None, None, None]
    assert scores.info["source"] == ["numeric"] * 7


def test_numeric_modes_and_tolerance():
    text = "\\boxed{5} but #### 6, finally 7"
    assert NumericAnswerVerifier("auto").extract(text) == (6, "gsm8k")
    assert NumericAnswerVerifier("boxed").extract(text) == (5, "boxed")
    assert NumericAnswerVerifier("last_number").extract(text) == (7, "last_number")
    assert NumericAnswerVerifier("gsm8k").extract("7") == (None, "gsm8k")
    third = NumericAnswerVerifier()(
        ["q"] * 3, ["0.3333333", "0.33", "0.3333333"], answer=["1/3", "1/3", 1 / 3]
    )
    assert third.values.tolist() == [1.0, 0.0, 1.0]  # |0.3333333 - 1/3| = 3.3e-8 <= 1e-6
    loose = NumericAnswerVerifier(tol=0.02)(["q"], ["0.33"], answer=["1/3"])
    assert loose.values.tolist() == [1.0]
    big = NumericAnswerVerifier()(["q"] * 2, ["1" + "0" * 400, "0.5"], answer=[10**400, 10**400])
    assert big.values.tolist() == [1.0, 0.0]  # exact for ints, and no OverflowError against a float


def test_numeric_gold_answers_and_errors():
    solution = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert NumericAnswerVerifier()(["q"], ["72"], answer=[solution]).values.tolist() == [1.0]
    with pytest.raises(FeedbackError, match="cannot read a number from answer 0: 'seventy'"):
        NumericAnswerVerifier()(["q"], ["72"], answer=["seventy"])
    with pytest.raises(FeedbackError, match="cannot read a number from answer 0: nan"):
        NumericAnswerVerifier()(["q"], ["72"], answer=[math.nan])
    with pytest.raises(ValueError, match="mode must be one of auto, gsm8k, boxed, last_number"):
        NumericAnswerVerifier(mode="regex")
    with pytest.raises(ValueError, match="tol must be"):
        NumericAnswerVerifier(tol=-1.0)


# --- Scores checks and registry -----------------------------------------------------------------------------


def test_validate_scores():
    good = Scores(torch.tensor([1.0, 0.0], dtype=torch.float64), {"source": ["x", "x"]})
    checked = validate_scores(good, 2)
    assert (
        checked.values.dtype == torch.float32 and checked.values.tolist() == [1.0, 0.0] and len(checked) == 2
    )
    with pytest.raises(FeedbackError, match=r"x: expected 3 scores of shape \(3,\), got shape \(2,\)"):
        validate_scores(good, 3)
    with pytest.raises(FeedbackError, match="must be floating point"):
        validate_scores(Scores(torch.tensor([1, 0])), 2)
    with pytest.raises(FeedbackError, match=r"info\['parsed'\] must be a list of 2 items, got length 1"):
        validate_scores(Scores(torch.zeros(2), {"parsed": [1]}), 2)
    with pytest.raises(FeedbackError, match="feedback must return Scores, got list"):
        validate_scores([1.0, 0.0], 2)


def test_validate_scores_nonfinite():
    bad = Scores(torch.tensor([1.0, math.nan, -math.inf]), {"source": ["rm"] * 3})
    with pytest.raises(FeedbackError, match=r"rm: 2 of 3 scores are not finite: 1=nan, 2=-inf"):
        validate_scores(bad, 3)
    recorded = validate_scores(bad, 3, on_nonfinite="record", fill=-1.0)
    assert recorded.values.tolist() == [1.0, -1.0, -1.0]
    assert recorded.info == {"source": ["rm"] * 3, "nonfinite": [False, True, True]}
    assert finite_mask(recorded).tolist() == [True, False, False] and finite_mask(bad).all()
    assert "nonfinite" not in bad.info  # the input is left as it was


def test_validate_scores_step_values():
    """Process feedback's per-step scores travel with the values: checked per item, kept through `record`."""
    steps = [torch.tensor([0.5, 1.0], dtype=torch.float64), torch.zeros(0)]
    checked = validate_scores(Scores(torch.tensor([1.0, math.nan]), {}, steps), 2, on_nonfinite="record")
    assert [s.dtype for s in checked.step_values] == [torch.float32] * 2
    assert checked.step_values[0].tolist() == [0.5, 1.0] and checked.step_values[1].numel() == 0
    with pytest.raises(FeedbackError, match="list of 2 tensors"):
        validate_scores(Scores(torch.zeros(2), {}, steps[:1]), 2)
    with pytest.raises(FeedbackError, match=r"step_values\[1\] must be a 1-D float tensor"):
        validate_scores(Scores(torch.zeros(2), {}, [torch.zeros(1), torch.zeros(1, 1)]), 2)
    with pytest.raises(FeedbackError, match=r"step_values\[0\] has non-finite step scores"):
        validate_scores(Scores(torch.zeros(2), {}, [torch.tensor([math.inf]), torch.zeros(1)]), 2)


def test_verifiers_satisfy_the_protocol_and_validate():
    for verifier in (ArithmeticVerifier(), NumericAnswerVerifier()):
        assert isinstance(verifier, Feedback)
        scores = verifier(["q"] * 2, ["1", "two"], answer=[1, 2])
        assert validate_scores(scores, 2).values.tolist() == [1.0, 0.0]


def test_registry():
    names = [name for name, _ in list_feedback()]
    assert names == sorted(names) and {"arithmetic", "numeric"} <= set(names)
    assert all(summary and "\n" not in summary for _, summary in list_feedback())
    assert isinstance(make_feedback("arithmetic"), ArithmeticVerifier)
    numeric = make_feedback("numeric", mode="boxed", tol=0.5)
    assert (numeric.mode, numeric.tol) == ("boxed", 0.5)
    with pytest.raises(
        KeyError, match=r"unknown feedback 'numerc' \(did you mean 'numeric'\?\); available: ari"
    ):
        make_feedback("numerc")
    with pytest.raises(ValueError, match="already registered"):
        register_feedback("numeric", "dup")(NumericAnswerVerifier)

    @register_feedback("constant_test", "always 0.5")
    def constant(value=0.5):
        return lambda prompts, completions, **context: Scores(torch.full((len(completions),), value), {})

    try:
        assert make_feedback("constant_test", value=0.25)(["q"], ["a"]).values.tolist() == [0.25]
        assert ("constant_test", "always 0.5") in list_feedback()
    finally:
        del FEEDBACK["constant_test"]


# --- real data ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not GSM8K_SOLUTIONS.is_file(), reason="shared/data/gsm8k not present")
def test_numeric_agrees_with_gsm8k_labels():
    """OpenAI's labelled GPT-3 samples: gold is the ground truth's final "A: n" line; replies end "A: n".

    Measured: 5276/5276 (100.00%) agreement with `is_correct` in auto mode (the replies have no #### or
    \\boxed, so this exercises last_number + parse_number, incl. "1,450,000" and long decimals).
    """
    rows, golds, replies, labels = gsm8k_labelled_solutions(GSM8K_SOLUTIONS)
    assert len(rows) == 1319 and sum(labels) == 286 + 515 + 458 + 742  # the README's counts
    questions = [row["question"] for row in rows for _ in GSM8K_SOLUTION_KEYS]
    scores = NumericAnswerVerifier()(questions, replies, answer=golds)
    agree = sum(c == label for c, label in zip(scores.info["correct"], labels, strict=True))
    print(f"\nNumericAnswerVerifier vs is_correct: {agree}/{len(labels)} = {agree / len(labels):.4%}")
    assert agree / len(labels) >= 0.999
