"""Rule-based verifiers: a completion scores 1.0 when its final answer equals the reference `answer`, else 0.

Answer extraction is a handful of small pure functions (`last_integer`, `last_number`, `gsm8k_answer`,
`boxed_answer` find the answer's text; `parse_number` turns such text into a number), so that each rule
can be tested on its own and reused by evaluation code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import torch

from rlxf.feedback.base import FeedbackError, Scores, check_batch, context_list, shown_json

__all__ = [
    "ArithmeticVerifier",
    "NumericAnswerVerifier",
    "last_integer",
    "last_number",
    "gsm8k_answer",
    "boxed_answer",
    "parse_number",
]

Number = int | float

# The anchor's strict rule (shared/reference/trl-bench/arith.py); keep bit-exact, including `\d` matching
# any Unicode digit and commas being deleted anywhere in the text.
_ANCHOR_INT = re.compile(r"-?\d+")

# One number as written in prose: optional sign and/or `$`, digits with optional thousands groups (a comma
# group must be exactly three digits, so "1,2,3" is three numbers), optional decimals, optional "/den".
# The look-behind keeps "x2" or the "-3" of "16-3" from being read as numbers (the "3" of "16-3" is one).
_INT = r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)"
_NUMBER_TOKEN = re.compile(
    r"(?<![\w.])(?:[-−+]?\$\s?[-−]?|[-−+])?" + _INT + r"(?:\.[0-9]+)?(?:/[0-9]+(?![0-9]|[.,][0-9]))?"
)

# What `parse_number` accepts once LaTeX and currency decorations are stripped.
_NUM = r"(?:(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+)"
_PLAIN = re.compile(rf"([-+]?)\s*({_NUM})(?:\s*/\s*({_NUM}))?")
_LATEX_FRAC = re.compile(rf"([-+]?)\s*\\frac\s*\{{\s*({_NUM})\s*\}}\s*\{{\s*({_NUM})\s*\}}")
_LATEX_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_LATEX_SPACES = re.compile(r"\\[!,;: ]")
_BOXED = re.compile(r"\\(?:boxed|fbox)(?:\s*\{|\s+(?=[^\s{]))")


def last_integer(text: str) -> int | None:
    """The last integer in `text`, read with the anchor's rule: `re.findall(r"-?\\d+", text without commas)`.

    "53 + 93 = 146." -> 146; "1,234" -> 1234; "16-3" -> -3 (the rule reads every '-' as a sign); None when
    there is no digit at all.
    """
    numbers = _ANCHOR_INT.findall(text.replace(",", ""))
    return int(numbers[-1]) if numbers else None


def last_number(text: str) -> str | None:
    """The text of the last number in `text` (sign, `$`, thousands commas, decimals, "a/b"), or None."""
    matches = _NUMBER_TOKEN.findall(text)
    return matches[-1] if matches else None


def gsm8k_answer(text: str) -> str | None:
    """The number right after the last `####` (GSM8K's final-answer line, "#### 1,234"), or None.

    As in GSM8K's own grader, the number must follow the marker directly (spaces allowed): "#### 18 eggs"
    gives "18", "#### eighteen" gives None.
    """
    at = text.rfind("####")
    if at < 0:
        return None
    match = _NUMBER_TOKEN.match(text, at + 4 + _leading_spaces(text, at + 4))
    return match.group(0) if match else None


def boxed_answer(text: str) -> str | None:
    """The contents of the last complete `\\boxed{...}` (or `\\fbox{...}`, `\\boxed 5`) in `text`, or None.

    Braces are matched by depth, so `\\boxed{\\frac{3}{4}}` gives `\\frac{3}{4}`; an unclosed box is skipped.
    """
    found = None
    for match in _BOXED.finditer(text):
        start = match.end()
        if not match.group(0).endswith("{"):  # "\boxed 5": the answer is the next whitespace-free run
            run = re.match(r"[^\s$]+", text[start:])
            found = run.group(0) if run else found
            continue
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found = text[start : i - 1].strip()
    return found


def parse_number(text: str) -> Number | None:
    """`text` as a number: an int when the value is whole, else a float; None when it is not one number.

    Accepts a sign, thousands commas ("1,234"), decimals ("2.50", ".5"), simple fractions ("3/4", "-3/4",
    `\\frac{3}{4}`, `\\dfrac`), currency (`$`, `\\$`), a trailing '.' or '%' (the percentage's number),
    LaTeX spacing (`\\,`, `{,}`), `\\text{...}` wrappers and redundant outer braces. Anything else, e.g.
    "18 eggs", "x+1", "1/0", is None: this parses one number, it does not search for one.
    """
    s = text.strip().replace("−", "-").replace("{,}", ",").replace("\\$", "$")
    s = _LATEX_SPACES.sub("", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    while (unwrapped := _LATEX_WRAPPER.sub(r"\1", s)) != s:
        s = unwrapped
    s = _strip_outer_braces(s.replace("$", "").strip())
    s = s.rstrip(".%").rstrip()
    match = _LATEX_FRAC.fullmatch(s) or _PLAIN.fullmatch(s)
    if match is None:
        return None
    sign, num, den = match.groups()
    value = Fraction(num.replace(",", ""))
    if den is not None:
        divisor = Fraction(den.replace(",", ""))
        if divisor == 0:
            return None
        value /= divisor
    if sign == "-":
        value = -value
    if value.denominator == 1:
        return int(value)
    try:
        return float(value)
    except OverflowError:
        return None


class ArithmeticVerifier:
    """1.0 when the last integer of the completion equals `answer`, else 0.0 (the anchor's strict rule).

    Context: `answer` (one int per completion; integral floats and integer strings are accepted; a bool,
    7.5 or "seven" raises FeedbackError, and `row_problems` reports such a row at load time).
    info per item: `parsed` (the last integer or None), `parse_failed` (no integer at all), `correct`,
    `source` ("arithmetic").
    """

    name = "arithmetic"

    def row_problems(self, row: dict[str, Any]) -> list[str]:
        """What a prompt row lacks for this verifier: an `answer` that `__call__` reads as an integer."""
        if "answer" not in row:
            return ["missing 'answer' (the arithmetic verifier compares the reply's last integer with it)"]
        if _as_integer(row["answer"]) is None:
            return [f"'answer' must be an integer for the arithmetic verifier, got {shown_json(row['answer'])}"]
        return []

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        answers = context_list(context, "answer", n, source=self.name)
        answers = [_integer_answer(a, i) for i, a in enumerate(answers)]
        parsed = [last_integer(text) for text in completions]
        correct = [p is not None and p == a for p, a in zip(parsed, answers, strict=True)]
        info = {
            "parsed": parsed,
            "parse_failed": [p is None for p in parsed],
            "correct": correct,
            "source": [self.name] * n,
        }
        return Scores(torch.tensor(correct, dtype=torch.float32), info)


class NumericAnswerVerifier:
    """1.0 when the completion's final numeric answer is within `tol` of `answer`, else 0.0.

    mode picks where the answer is read:
      "gsm8k": the number after the last `####`; "boxed": the last `\\boxed{...}`; "last_number": the last
      number anywhere; "auto": the first of those formats whose marker (`####`, `\\boxed`) appears in the
      completion, else the last number. A present marker decides: "#### eighteen" is a parse failure, not a
      fall-back to some earlier number, since the model declared that text its answer.
    Match: |pred - gold| <= tol * max(1, |pred|, |gold|) (math.isclose with rel_tol = abs_tol = tol); two
    ints must be equal.

    Context: `answer` per completion: a number, a number string ("1,234", "3/4") or a GSM8K solution
    ending in "#### n". An answer that cannot be parsed raises FeedbackError (bad data, not a wrong reply);
    `row_problems` reports such a row at load time.
    info per item: `parsed`, `parse_failed`, `correct`, `format` (the format read, None when nothing
    parsed), `source` ("numeric").
    """

    name = "numeric"
    MODES = ("auto", "gsm8k", "boxed", "last_number")

    def __init__(self, mode: str = "auto", tol: float = 1e-6):
        if mode not in self.MODES:
            modes = ", ".join(self.MODES)
            raise ValueError(f"NumericAnswerVerifier: mode must be one of {modes}; got {mode!r}")
        if not (tol >= 0 and math.isfinite(tol)):
            raise ValueError(f"NumericAnswerVerifier: tol must be a finite number >= 0, got {tol!r}")
        self.mode = mode
        self.tol = float(tol)

    def row_problems(self, row: dict[str, Any]) -> list[str]:
        """What a prompt row lacks for this verifier: an `answer` that `__call__` reads as a finite number."""
        if "answer" not in row:
            return ["missing 'answer' (the numeric verifier compares the reply's final number with it)"]
        if _as_number(row["answer"]) is None:
            return ["'answer' must be a number for the numeric verifier (18, \"1,234\", \"3/4\", or a solution "
                    f"ending \"#### 18\"), got {shown_json(row['answer'])}"]
        return []

    def extract(self, text: str) -> tuple[Number | None, str]:
        """(parsed answer or None, the format it was read with) for one completion."""
        fmt = self.mode
        if fmt == "auto":
            fmt = next((f for f, marker in _MARKERS if marker in text), "last_number")
        span = _EXTRACTORS[fmt](text)
        return (parse_number(span) if span is not None else None), fmt

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        answers = context_list(context, "answer", n, source=self.name)
        golds = [_numeric_answer(a, i) for i, a in enumerate(answers)]
        extracted = [self.extract(text) for text in completions]
        parsed = [value for value, _ in extracted]
        correct = [p is not None and _close(p, g, self.tol) for p, g in zip(parsed, golds, strict=True)]
        info = {
            "parsed": parsed,
            "parse_failed": [p is None for p in parsed],
            "correct": correct,
            "format": [fmt if value is not None else None for value, fmt in extracted],
            "source": [self.name] * n,
        }
        return Scores(torch.tensor(correct, dtype=torch.float32), info)


_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "gsm8k": gsm8k_answer,
    "boxed": boxed_answer,
    "last_number": last_number,
}
_MARKERS = (("gsm8k", "####"), ("boxed", "\\boxed"), ("boxed", "\\fbox"))


def _leading_spaces(text: str, start: int) -> int:
    return len(text[start:]) - len(text[start:].lstrip(" \t"))


def _strip_outer_braces(s: str) -> str:
    """Drop braces wrapping the whole string: "{{12}}" -> "12", but "{1}{2}" stays as it is."""
    while s.startswith("{") and s.endswith("}"):
        depth = 0
        for i, ch in enumerate(s):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if depth == 0 and i < len(s) - 1:
                return s
        s = s[1:-1].strip()
    return s


def _close(pred: Number, gold: Number, tol: float) -> bool:
    if isinstance(pred, int) and isinstance(gold, int):
        return pred == gold
    try:
        return math.isclose(pred, gold, rel_tol=tol, abs_tol=tol)
    except OverflowError:  # an int too large for a float cannot be within tol of a finite float
        return False


def _as_integer(answer: Any) -> int | None:
    """A reference answer as the arithmetic verifier's int: an int, an integral float or an integer string
    (" 7 "); None otherwise (a bool is not a number here, though Python counts it as an int)."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int):
        return answer
    if isinstance(answer, float) and answer.is_integer():
        return int(answer)
    if isinstance(answer, str):
        try:
            return int(answer.strip())
        except ValueError:
            return None
    return None


def _integer_answer(answer: Any, i: int) -> int:
    value = _as_integer(answer)
    if value is None:
        got = f"bool {answer!r}" if isinstance(answer, bool) else repr(answer)
        raise FeedbackError(f"arithmetic: answer {i} must be an integer, got {got}")
    return value


def _as_number(answer: Any) -> Number | None:
    """A reference answer as the numeric verifier's finite number (a number, a number string, or a GSM8K
    solution's "#### n"); None when it is none of those."""
    value: Number | None = None
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        value = answer
    elif isinstance(answer, str):
        value = parse_number(answer)
        if value is None and "####" in answer:
            span = gsm8k_answer(answer)
            value = parse_number(span) if span is not None else None
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value


def _numeric_answer(answer: Any, i: int) -> Number:
    value = _as_number(answer)
    if value is None:
        raise FeedbackError(f"numeric: cannot read a number from answer {i}: {answer!r}")
    return value
