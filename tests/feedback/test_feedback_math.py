"""MathAnswerVerifier: symbolic equivalence via math-verify, answer extraction, timeouts, real-data agreement."""

import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from rlxf.feedback import FeedbackError, NumericAnswerVerifier, make_feedback, validate_scores
from rlxf.feedback.math import MathAnswerVerifier, extract_answer
from rlxf.testing.data import gsm8k_labelled_solutions

DATA = Path(__file__).resolve().parents[2] / "../shared/data"
MATH500 = DATA / "math500_roll/math500.jsonl"
SVAMP = DATA / "svamp/SVAMP.jsonl"
GSM8K_SOLUTIONS = DATA / "gsm8k/example_model_solutions.jsonl"


@pytest.fixture(scope="module")
def verifier():
    with MathAnswerVerifier() as v:  # one worker process for the module's tests
        yield v


EQUIVALENT = [
    # (reference, reply's boxed answer): equal as mathematics, different as text
    ("\\frac{1}{2}", "0.5"),
    ("\\frac{1}{2}", "1/2"),
    ("0.5", "\\dfrac{1}{2}"),
    ("\\frac{\\sqrt2}{2}", "\\sqrt{2}/2"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
    ("[1,3)", "[1, 3)"),
    ("(-\\infty, 2] \\cup (5, \\infty)", "(5,\\infty)\\cup(-\\infty,2]"),
    ("\\{1,2,3\\}", "\\{3,2,1\\}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\pi/2)"),
    ("x^2+2x+1", "(x+1)^2"),
    ("p - q", "-q + p"),
    ("106^\\circ", "106"),
    ("1,000", "1000"),
    ("10\\%", "0.1"),
    ("\\text{(C)}", "\\text{(C)}"),
]

NOT_EQUIVALENT = [
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("\\frac{1}{3}", "0.33"),  # rounded to 2 places: not equal (math-verify compares at 6 places)
    ("(1,3]", "[1,3)"),  # same end points, other interval
    ("\\{1,2,3\\}", "\\{1,2\\}"),
    ("(3, \\frac{\\pi}{2})", "(\\frac{\\pi}{2}, 3)"),  # a tuple is ordered
    ("x^2+2x+1", "(x-1)^2"),
    ("\\sqrt{2}", "1.41"),
    ("\\text{(C)}", "\\text{(D)}"),
    ("2", "-2"),
]


@pytest.mark.parametrize("gold, answer", EQUIVALENT)
def test_equivalent_forms_score_one(verifier, gold, answer):
    scores = verifier(["q"], [f"Thus the answer is $\\boxed{{{answer}}}$."], answer=[gold])
    assert scores.values.tolist() == [1.0], scores.info
    assert scores.info["status"] == ["ok"] and scores.info["extracted"] == [answer]


@pytest.mark.parametrize("gold, answer", NOT_EQUIVALENT)
def test_different_answers_score_zero(verifier, gold, answer):
    scores = verifier(["q"], [f"\\boxed{{{answer}}}"], answer=[gold])
    assert scores.values.tolist() == [0.0], scores.info
    assert scores.info["status"] == ["ok"] and scores.info["parse_failed"] == [False]


def test_info_records_every_outcome(verifier):
    completions = ["So $\\boxed{\\frac{3}{4}}$.", "I do not know.", "\\boxed{7} then \\boxed{8}"]
    scores = verifier(["q"] * 3, completions, answer=["0.75", "1", "8"])
    assert isinstance(validate_scores(scores, 3).values, type(scores.values))
    assert scores.values.tolist() == [1.0, 0.0, 1.0]
    assert scores.info["extracted"] == ["\\frac{3}{4}", None, "8"]  # the last box counts
    assert scores.info["parsed"] == ["3/4", None, "8"]
    assert scores.info["gold_parsed"] == ["0.750000000000000", None, "8"]  # no answer: the reference is not read
    assert scores.info["status"] == ["ok", "no_answer", "ok"]
    assert scores.info["parse_failed"] == [False, True, False]
    assert scores.info["timeout"] == [False, False, False] and scores.info["error"] == [None, None, None]
    assert scores.info["correct"] == [True, False, True]
    assert scores.info["format"] == ["boxed"] * 3 and scores.info["source"] == ["math"] * 3


def test_reference_answer_forms(verifier):
    """Solutions as references are reduced to their final answer; numbers (SVAMP floats) are accepted."""
    golds = ["The sum is $\\boxed{\\frac{1}{2}}$.", "48/2 = 24 clips\n#### 72", 51.0, 7, "$\\frac{2}{3}$"]
    replies = ["\\boxed{0.5}", "\\boxed{72}", "\\boxed{51}", "\\boxed{7.0}", "\\boxed{4/6}"]
    assert verifier(["q"] * 5, replies, answer=golds).values.tolist() == [1.0] * 5
    for bad, message in [(None, "answer 0 must be LaTeX text or a number, got None"), ("  ", "answer 0 is empty"),
                         (float("nan"), "answer 0 is not finite"), (True, "got True")]:
        with pytest.raises(FeedbackError, match=message):
            verifier(["q"], ["\\boxed{1}"], answer=[bad])
    with pytest.raises(FeedbackError, match="math: needs context 'ground_truth'"):
        MathAnswerVerifier(answer_key="ground_truth")(["q"], ["\\boxed{1}"], answer=["1"])


def test_extraction_modes():
    text = "First \\boxed{5}, then #### 6, and $1,234.50 at the end"
    assert extract_answer(text, "boxed") == ("5", "boxed")
    assert extract_answer(text, "gsm8k") == ("6", "gsm8k")
    assert extract_answer(text, "last_number") == ("1234.5", "last_number")  # normalised by parse_number
    assert extract_answer(text, "auto") == ("6", "gsm8k")  # a present marker decides, #### first
    assert extract_answer("so \\boxed{x+1}", "auto") == ("x+1", "boxed")
    assert extract_answer("so 3/4", "auto") == ("0.75", "last_number")
    assert extract_answer("no answer", "boxed") == (None, "boxed")
    assert extract_answer("anything", "any") == ("anything", "any")
    with pytest.raises(ValueError, match="mode must be one of boxed, gsm8k, last_number, auto, any"):
        extract_answer("1", "regex")


def test_modes_end_to_end():
    replies = ["Half of it: 1/2", "#### 12", "The answer is $\\frac{1}{2}$."]
    auto = MathAnswerVerifier("auto", isolation="inline")
    assert auto(["q"] * 2, replies[:2], answer=["\\frac12", "12"]).values.tolist() == [1.0, 1.0]
    anywhere = MathAnswerVerifier("any", isolation="inline")  # math-verify finds the LaTeX answer in the prose
    scores = anywhere(["q"], replies[2:], answer=["0.5"])
    assert scores.values.tolist() == [1.0] and scores.info["extracted"] == [None]


def test_constructor_checks():
    with pytest.raises(ValueError, match="mode must be one of"):
        MathAnswerVerifier("latex")
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        MathAnswerVerifier(timeout_s=0)
    with pytest.raises(ValueError, match="isolation must be 'process' or 'inline'"):
        MathAnswerVerifier(isolation="thread")
    with pytest.raises(ValueError, match="memory_mb must be >= 0"):
        MathAnswerVerifier(memory_mb=-1)


def test_pathological_answer_times_out_inline():
    """2^(2^(2^100)) makes sympy try to build an astronomically large integer; the timer stops it."""
    verifier = MathAnswerVerifier(isolation="inline", timeout_s=0.5)
    replies = ["\\boxed{2^{2^{2^{100}}}}", "\\boxed{\\frac{1}{2}}"]
    start = time.perf_counter()
    scores = verifier(["q"] * 2, replies, answer=["1", "0.5"])
    assert time.perf_counter() - start < 5
    assert scores.values.tolist() == [0.0, 1.0]
    assert scores.info["timeout"] == [True, False] and scores.info["status"] == ["timeout", "ok"]
    assert "no result within 0.5 s" in scores.info["error"][0]


def test_a_hung_worker_is_killed_and_replaced(monkeypatch):
    """A worker that does not answer (here: stopped with SIGSTOP, as sympy stuck in C code would be) is
    killed after timeout_s + grace, the item is a recorded timeout, and the next check gets a new worker."""
    monkeypatch.setattr("rlxf.feedback.math._GRACE_S", 0.2)
    with MathAnswerVerifier(timeout_s=0.5) as verifier:
        assert verifier(["q"], ["\\boxed{1}"], answer=["1"]).values.tolist() == [1.0]
        hung = verifier._worker.proc
        os.kill(hung.pid, signal.SIGSTOP)
        start = time.perf_counter()
        scores = verifier(["q"], ["\\boxed{1}"], answer=["1"])
        assert 0.6 <= time.perf_counter() - start < 3
        assert scores.values.tolist() == [0.0] and scores.info["timeout"] == [True]
        assert "worker process killed" in scores.info["error"][0]
        assert hung.poll() is not None  # the stopped child is gone
        assert verifier(["q"], ["\\boxed{2}"], answer=["2"]).values.tolist() == [1.0]
        assert verifier._worker.proc.pid != hung.pid
    assert verifier._worker is None


def test_a_worker_that_cannot_start_is_a_clear_error(tmp_path, monkeypatch):
    broken = tmp_path / "worker.py"
    broken.write_text("import sys\nsys.exit(1)\n")  # as when math-verify is missing: exits before "ready"
    monkeypatch.setattr("rlxf.feedback.math._WORKER", broken)
    with pytest.raises(FeedbackError, match="math-verify worker exited with status 1 before it was ready"):
        MathAnswerVerifier(startup_timeout_s=5)(["q"], ["\\boxed{1}"], answer=["1"])
    broken.write_text("import time\ntime.sleep(30)\n")  # never ready
    with pytest.raises(FeedbackError, match="math-verify worker did not start within 0.5 s"):
        MathAnswerVerifier(startup_timeout_s=0.5)(["q"], ["\\boxed{1}"], answer=["1"])


def test_a_worker_that_dies_mid_check_is_a_recorded_error(tmp_path, monkeypatch):
    """A crash (here: a worker that exits with status 3 on its first request) is not a timeout: status
    "error" with the exit status; the next check starts a new worker (which crashes the same way here)."""
    crashing = tmp_path / "worker.py"
    crashing.write_text('import sys\nprint(\'{"ready": true}\', flush=True)\nsys.stdin.readline()\nsys.exit(3)\n')
    monkeypatch.setattr("rlxf.feedback.math._WORKER", crashing)
    with MathAnswerVerifier(timeout_s=5) as verifier:
        start = time.perf_counter()
        scores = verifier(["q"] * 2, ["\\boxed{1}", "\\boxed{2}"], answer=["1", "2"])
        assert time.perf_counter() - start < 4  # no waiting for the deadline
    assert scores.values.tolist() == [0.0, 0.0]
    assert scores.info["status"] == ["error", "error"] and scores.info["timeout"] == [False, False]
    assert scores.info["error"] == ["worker process died (exit status 3)"] * 2


def test_inline_needs_the_main_thread():
    import threading

    errors = []
    thread = threading.Thread(target=lambda: _capture(errors, MathAnswerVerifier(isolation="inline")))
    thread.start()
    thread.join()
    assert len(errors) == 1 and "only works in the main thread; use isolation='process'" in str(errors[0])


def _capture(errors, verifier):
    try:
        verifier(["q"], ["\\boxed{1}"], answer=["1"])
    except FeedbackError as exc:
        errors.append(exc)


def test_pickles_without_its_worker(verifier):
    import pickle

    verifier(["q"], ["\\boxed{1}"], answer=["1"])
    copy = pickle.loads(pickle.dumps(verifier))
    assert copy._worker is None and copy.mode == verifier.mode
    with copy:
        assert copy(["q"], ["\\boxed{1}"], answer=["1"]).values.tolist() == [1.0]


def test_registered_as_math():
    verifier = make_feedback("math", mode="auto", answer_key="ground_truth", timeout_s=2.0)
    assert isinstance(verifier, MathAnswerVerifier)
    assert (verifier.mode, verifier.answer_key, verifier.timeout_s) == ("auto", "ground_truth", 2.0)


def test_svamp_rows_through_the_numeric_verifier():
    """SVAMP answers are floats (51.0); the numeric verifier reads the reply's last number against them."""
    rows = [{"Body": "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack",
             "Question": "How much do you have to pay to buy each pack?", "Answer": 51.0},
            {"Body": "Dan had $ 3 left", "Question": "How much?", "Answer": 1.5}]
    prompts = [r["Body"] + " " + r["Question"] for r in rows]
    scores = NumericAnswerVerifier()(prompts, ["76 - 25 = 51.", "It was 1.50 dollars"], answer=[51.0, 1.5])
    assert scores.values.tolist() == [1.0, 1.0]
    assert NumericAnswerVerifier()(prompts, ["25", "3"], answer=[51.0, 1.5]).values.tolist() == [0.0, 0.0]


# --- real data (measured; the numbers are in docs/feedback/verifiers.md) --------------------------------------


def _rewrite_presentation(latex: str) -> str:
    """The same answer typeset differently: \\dfrac -> \\frac, no \\left/\\right, no thin spaces (\\, \\! ...), no
    spaces except after a command name (where one ends the name)."""
    s = latex.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\\(left|right)(?![a-zA-Z])", "", s)
    s = re.sub(r"(?<!\\)\\[,!;: ]", "", s)  # not the "\\ " of a row break "\\\\ "
    return re.sub(r"(?<![A-Za-z])\s+", "", s)


_SIMPLE_FRAC = re.compile(r"(?<![0-9\s])\\d?frac\{([^{}]+)\}\{([^{}]+)\}")  # not a mixed number 1\frac{4}{5}


def _rewrite_fractions(latex: str) -> str:
    """\\frac{a}{b} with brace-free a and b written as (a)/(b): the same value, other notation (a mixed number
    such as 1\\frac{4}{5} is left alone: 1(4)/(5) would be a product)."""
    return _SIMPLE_FRAC.sub(r"(\1)/(\2)", latex)


@pytest.mark.slow
@pytest.mark.skipif(not MATH500.is_file(), reason="shared/data/math500_roll not present")
def test_math500_reference_answers():
    """MATH-500 (500 LaTeX answers). The data has no worked solutions, so the gold answer is boxed inside a
    reply ("... so the answer is $\\boxed{gold}$.") and verified against the `ground_truth` field, as written
    and rewritten (presentation-only rewrites; \\frac{a}{b} -> (a)/(b)); the false-positive rate is measured by
    verifying each problem's answer against the next problem's.

    Measured (math-verify 0.9.0, 2 busy CPU cores): as written 500/500; presentation rewrite 47/47 (the answers
    it changes); fraction rewrite 54/54; next problem's answer: 1/498 text-different pairs accepted ('5' vs
    'x=5': math-verify reads an assignment as its value); 0 timeouts; 26-47 ms per check.
    """
    rows = [json.loads(line) for line in MATH500.read_text(encoding="utf-8").splitlines()]
    golds = [row["ground_truth"] for row in rows]
    assert len(rows) == 500
    reply = "Reasoning steps... so the answer is $\\boxed{{{}}}$."
    with MathAnswerVerifier(answer_key="ground_truth") as verifier:
        start = time.perf_counter()
        same = verifier(["q"] * 500, [reply.format(g) for g in golds], ground_truth=golds)
        per_check = (time.perf_counter() - start) / 500
        counts = {"as written": (sum(same.info["correct"]), 500)}
        for label, rewrite in [("presentation", _rewrite_presentation), ("fractions", _rewrite_fractions)]:
            changed = [i for i, g in enumerate(golds) if rewrite(g) != g]
            scores = verifier(["q"] * len(changed), [reply.format(rewrite(golds[i])) for i in changed],
                              ground_truth=[golds[i] for i in changed])
            counts[label] = (sum(scores.info["correct"]), len(changed))
        shifted = golds[1:] + golds[:1]
        cross = verifier(["q"] * 500, [reply.format(g) for g in shifted], ground_truth=golds)
        different = [i for i in range(500) if shifted[i].strip() != golds[i].strip()]
        false_pos = [(golds[i], shifted[i]) for i in different if cross.info["correct"][i]]
    print(f"\nMATH-500 gold vs gold: {counts}; next problem's answer accepted: {len(false_pos)}/{len(different)} "
          f"{false_pos}; timeouts {sum(same.info['timeout'])}; {1000 * per_check:.0f} ms per check; "
          f"statuses {Counter(same.info['status'])}")
    assert counts["as written"] == (500, 500)
    for label in ("presentation", "fractions"):
        assert counts[label][0] >= 0.99 * counts[label][1] and counts[label][1] > 40
    assert len(false_pos) <= 0.01 * len(different)


@pytest.mark.slow
@pytest.mark.skipif(not GSM8K_SOLUTIONS.is_file(), reason="shared/data/gsm8k not present")
def test_math_verifier_agrees_with_gsm8k_labels():
    """OpenAI's 4 x 1319 labelled GPT-3 GSM8K samples; replies end "A: n", so mode="last_number".

    Measured: 5276/5276 (100.00%) agreement with `is_correct` (as NumericAnswerVerifier), ~10 ms per check.
    """
    rows, golds, replies, labels = gsm8k_labelled_solutions(GSM8K_SOLUTIONS)
    with MathAnswerVerifier("last_number") as verifier:
        start = time.perf_counter()
        scores = verifier(["q"] * len(replies), replies, answer=golds)
        seconds = time.perf_counter() - start
    agree = sum(c == label for c, label in zip(scores.info["correct"], labels, strict=True))
    print(f"\nMathAnswerVerifier(last_number) vs is_correct: {agree}/{len(labels)} = {agree / len(labels):.4%}; "
          f"{1000 * seconds / len(labels):.1f} ms per check; statuses {Counter(scores.info['status'])}")
    assert agree / len(labels) >= 0.999


@pytest.mark.slow
@pytest.mark.skipif(not SVAMP.is_file(), reason="shared/data/svamp not present")
def test_svamp_answers_match_their_equations():
    """SVAMP (1000 problems): a reply stating the value of the row's own `Equation` is verified against the
    row's `Answer` by the numeric verifier (as "... = v." and boxed) and by the math verifier (boxed).

    Measured: 999/1000 for each; the one miss is row chal-680, whose Equation gives 5 but whose Answer is 1.0
    (an upstream labelling error). A reply off by one: the math verifier accepts 0/1000; the numeric verifier
    accepts 5/1000, all answers above 10^6, where its relative tolerance (tol=1e-6) exceeds 1.
    """
    rows = [json.loads(line) for line in SVAMP.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1000
    prompts = [row["Body"] + " " + row["Question"] for row in rows]
    answers = [row["Answer"] for row in rows]
    values = [eval(row["Equation"], {"__builtins__": {}}) for row in rows]  # noqa: S307 - "( 76.0 - 25.0 )"
    text = [_plain_number(v) for v in values]
    plain = [f"{row['Equation']} = {t}." for row, t in zip(rows, text, strict=True)]
    boxed = [f"So the answer is $\\boxed{{{t}}}$." for t in text]
    off = [_plain_number(v + 1) for v in values]
    numeric = NumericAnswerVerifier()
    results = {
        "numeric, plain": sum(numeric(prompts, plain, answer=answers).info["correct"]),
        "numeric, boxed": sum(numeric(prompts, boxed, answer=answers).info["correct"]),
    }
    off_accepted = numeric(prompts, off, answer=answers).info["correct"]
    results["numeric, off by one"] = sum(off_accepted)
    with MathAnswerVerifier() as verifier:
        results["math, boxed"] = sum(verifier(prompts, boxed, answer=answers).info["correct"])
        results["math, off by one"] = sum(verifier(prompts, [f"\\boxed{{{t}}}" for t in off],
                                                   answer=answers).info["correct"])
    wrong = [row["ID"] for row, v in zip(rows, values, strict=True) if abs(v - row["Answer"]) > 1e-6]
    print(f"\nSVAMP: {results}; rows whose Equation disagrees with their Answer: {wrong}")
    assert wrong == ["chal-680"]  # "( ( 4.0 - 2.0 ) + 3.0 )" with Answer 1.0: an upstream labelling error
    assert results == {"numeric, plain": 999, "numeric, boxed": 999, "numeric, off by one": 5, "math, boxed": 999,
                       "math, off by one": 0}
    # the numeric verifier's tolerance is relative (1e-6): off by one is "close" for answers above a million
    assert all(abs(a) > 1e6 for a, ok in zip(answers, off_accepted, strict=True) if ok)


def _plain_number(value: float) -> str:
    """1538832.0 -> "1538832", 2.5 -> "2.5" (no exponent, no lost digits)."""
    return str(int(value)) if float(value).is_integer() else repr(round(value, 6))
