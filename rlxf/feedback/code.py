"""Unit-test verifier for code completions (HumanEval, MBPP): 1.0 when the tests pass in the sandbox, else 0.

Each completion becomes one program, run by `rlxf.feedback.sandbox.run_many` (a worker pool of sandboxed
processes):

    [prompt, when it is code] + code from the completion + the item's tests + a pass marker

HumanEval items (Chen et al. 2021) give `test` (source defining `check(candidate)`) and `entry_point`; the tests
are `test` followed by `check(<entry_point>)`. MBPP items (Austin et al. 2021) give `test_list` (assert
statements) and optionally `test_setup_code`, which runs after the code (it builds objects from classes the
solution defines). The pass marker is a random token written straight to fd 2 after the last test, so that a
program which merely exits with status 0 early (`sys.exit(0)`, `os._exit(0)`) before the tests ran does not pass.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Any, Literal

import torch

from rlxf.feedback.base import FeedbackError, Scores, check_batch, shown_json
from rlxf.feedback.sandbox import run_many

__all__ = ["UnitTestVerifier", "extract_code", "build_program"]

_FENCE = re.compile(r"```[ \t]*([\w+.#-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}
_DEFINITION = re.compile(r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]", re.MULTILINE)
_STDERR_TAIL = 500


def extract_code(text: str) -> tuple[str, bool]:
    """The code in a completion: (code, whether markdown fences were found).

    Fenced blocks tagged `python`/`py` or untagged are joined in order (a later block that redefines a function
    wins, as when the code is run); an unclosed fence runs to the end of the text (a truncated generation).
    Text without such fences is returned unchanged.
    """
    blocks = [body for tag, body in _FENCE.findall(text) if tag.lower() in _PYTHON_TAGS]
    if not blocks:
        return text, False
    return "\n\n".join(block.rstrip() + "\n" for block in blocks), True


def build_program(
    code: str,
    *,
    prompt: str | None = None,
    test: str | None = None,
    entry_point: str | None = None,
    test_list: Sequence[str] | None = None,
    test_setup_code: str | None = None,
    marker: str | None = None,
) -> str:
    """The program that runs `code` against one item's tests (HumanEval `test`+`entry_point`, or MBPP `test_list`).

    prompt: code to put first (the HumanEval signature and docstring a body completes; a full function in
    `code` then simply redefines it). marker: printed to stderr (fd 2) after the last test passed.
    """
    parts = [prompt, code] if prompt else [code]
    if test_list:
        if isinstance(test_list, str):
            raise FeedbackError("unit_tests: test_list must be a list of assert statements, got a str")
        if test_setup_code:
            parts.append(test_setup_code)
        parts.append("\n".join(test_list))
    elif test:
        if not entry_point:
            raise FeedbackError("unit_tests: a HumanEval-style `test` needs its `entry_point`")
        parts += [test, f"check({entry_point})"]
    else:
        raise FeedbackError("unit_tests: each item needs `test_list` (MBPP) or `test` + `entry_point` (HumanEval)")
    if marker:
        parts.append(f"__import__('os').write(2, b'\\n{marker}\\n')")
    return "".join(part if part.endswith("\n") else part + "\n" for part in parts)


class UnitTestVerifier:
    """1.0 when the completion's code passes every unit test of its item, else 0.0.

    Context (per-item lists; an item uses whichever it has): `test_list` and optional `test_setup_code` (MBPP),
    or `test` and `entry_point` (HumanEval). Completions are code, optionally in markdown fences.

    timeout_s, memory_mb: sandbox limits per program (wall clock; address space). workers: programs run at once.
    include_prompt: put the prompt before the code: `"auto"` when the prompt compiles as Python and defines a
    function or class (a HumanEval signature and docstring, not an instruction in prose), `"always"`, `"never"`.

    info per item: `source` ("unit_tests"), `correct` (bool), `status` (the sandbox's: ok, error, timeout,
    memory, killed), `seconds`, `stderr_tail` (last 500 characters of stderr), `code_extracted` (fences found).
    `row_problems` reports a prompt row whose tests are missing or malformed at load time.
    """

    name = "unit_tests"

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        memory_mb: int = 1024,
        workers: int = 2,
        include_prompt: Literal["auto", "always", "never"] = "auto",
    ):
        if include_prompt not in ("auto", "always", "never"):
            raise ValueError(f"include_prompt must be 'auto', 'always' or 'never', got {include_prompt!r}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.timeout_s, self.memory_mb, self.workers = float(timeout_s), int(memory_mb), int(workers)
        self.include_prompt = include_prompt

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        items = _items(context, n)
        marker = f"rlxf-unit-tests-passed-{secrets.token_hex(8)}"
        programs, extracted = [], []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            code, fenced = extract_code(completion)
            extracted.append(fenced)
            try:
                programs.append(build_program(code, prompt=self._prompt(prompt), marker=marker, **items[i]))
            except FeedbackError as exc:
                raise FeedbackError(f"{exc} (item {i})") from None
        results = run_many(programs, timeout_s=self.timeout_s, memory_mb=self.memory_mb, workers=self.workers)
        correct = [r.status == "ok" and r.stderr.rstrip().endswith(marker) for r in results]
        info = {
            "source": [self.name] * n,
            "correct": correct,
            "status": [r.status for r in results],
            "seconds": [r.seconds for r in results],
            "stderr_tail": [r.stderr.replace(marker, "").rstrip()[-_STDERR_TAIL:] for r in results],
            "code_extracted": extracted,
        }
        return Scores(torch.tensor([float(c) for c in correct], dtype=torch.float32), info)

    def row_problems(self, row: dict[str, Any]) -> list[str]:
        """What a prompt row lacks for this verifier: tests in the form `build_program` runs.

        As there, a non-empty `test_list` wins: it must be a list of non-blank strings (blank ones would let
        any code pass), with `test_setup_code` a string when given. Otherwise `test` (non-blank source
        defining `check`) and `entry_point` (the function's name, a non-empty string) are both needed.
        """
        test_list, test = row.get("test_list"), row.get("test")
        if test_list:
            problems = []
            if not isinstance(test_list, list) or not all(isinstance(t, str) and t.strip() for t in test_list):
                problems.append("'test_list' must be a list of assert statements (non-blank strings) for the "
                                f"unit-test verifier, got {shown_json(test_list)}")
            setup = row.get("test_setup_code")
            if setup and not isinstance(setup, str):
                problems.append(f"'test_setup_code' must be a string of Python, got {shown_json(setup)}")
            return problems
        if test is None and "test_list" not in row:
            return ["missing 'test_list' (MBPP asserts) or 'test' + 'entry_point' (HumanEval): the unit-test "
                    "verifier runs the reply's code against them"]
        if test is None:
            return [f"'test_list' is {shown_json(test_list)} and there is no 'test' + 'entry_point': the "
                    "unit-test verifier has no tests to run"]
        problems = []
        if not isinstance(test, str) or not test.strip():
            problems.append(f"'test' must be Python source defining check(candidate), got {shown_json(test)}")
        entry_point = row.get("entry_point")
        if entry_point is None:
            problems.append("missing 'entry_point' (the name of the function that HumanEval's 'test' checks)")
        elif not isinstance(entry_point, str) or not entry_point.strip():
            problems.append(f"'entry_point' must be a function name, got {shown_json(entry_point)}")
        return problems

    def _prompt(self, prompt: str) -> str | None:
        if self.include_prompt == "never" or not prompt:
            return None
        if self.include_prompt == "always":
            return prompt
        if not _DEFINITION.search(prompt):
            return None
        try:
            compile(prompt, "<prompt>", "exec")
        except (SyntaxError, ValueError):
            return None
        return prompt


def _items(context: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Per-item keyword arguments for `build_program` from the aligned context lists."""
    keys = ("test", "entry_point", "test_list", "test_setup_code")
    columns = {}
    for key in keys:
        if key in context and context[key] is not None:
            values = context[key]
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != n:
                got = f"{len(values)} items" if isinstance(values, Sequence) else type(values).__name__
                raise FeedbackError(f"unit_tests: context '{key}' must be a list of {n} items, got {got}")
            columns[key] = list(values)
    if "test" not in columns and "test_list" not in columns:
        have = ", ".join(sorted(context)) or "none"
        raise FeedbackError(f"unit_tests: needs context 'test_list' (MBPP) or 'test' + 'entry_point' (HumanEval); "
                            f"got: {have}")
    return [{key: columns[key][i] for key in columns} for i in range(n)]
