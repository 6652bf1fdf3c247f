"""Math answers checked for symbolic equivalence with math-verify (MATH-500 style LaTeX answers).

`MathAnswerVerifier` scores 1.0 when the final answer of a completion is mathematically equal to the
reference `answer` (`\\frac{1}{2}` = `0.5` = `1/2`, `\\frac{\\sqrt2}{2}` = `\\sqrt{2}/2`, `[1,3)` as an
interval, `\\{1,2\\}` = `\\{2,1\\}` as a set, `(3, \\frac{\\pi}{2})` as a tuple), else 0.0. The answer is found
by a small rule (`mode`); parsing LaTeX into sympy and comparing is left to the maintained `math-verify`
library (HuggingFace; antlr-based LaTeX parser plus sympy), not to hand-written rules.

Sympy can take unbounded time or memory on a hostile answer (`2^{2^{2^{100}}}`), some of it inside C code
that no Python signal interrupts. So by default (`isolation="process"`) every check runs in one long-lived
child process (`rlxf/feedback/_math_worker.py`, which imports math-verify and sympy but not torch) under
an address-space limit; when a reply is late by more than a grace period the child is killed with its
process group and restarted, and the item is recorded as a timeout. `isolation="inline"` runs the same
check in this process under a SIGALRM timer: no child, but it only works in the main thread and cannot
interrupt C code.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rlxf.feedback import _math_worker
from rlxf.feedback.base import FeedbackError, Scores, check_batch, context_list, shown_json
from rlxf.feedback.verifiers import _MARKERS, boxed_answer, gsm8k_answer, last_number, parse_number

__all__ = ["MathAnswerVerifier", "extract_answer"]

MODES = ("boxed", "gsm8k", "last_number", "auto", "any")
_WORKER = Path(__file__).with_name("_math_worker.py")
_GRACE_S = 2.0  # the child's own timer fires first; the kill is for work that ignores it


def extract_answer(text: str, mode: str) -> tuple[str | None, str]:
    """The final answer's text in `text` by the rule `mode`, and the rule that was used.

    boxed: the last complete `\\boxed{...}` (LaTeX kept as written); gsm8k: the number after the last `####`;
    last_number: the last number in the text; auto: the rule whose marker is present (`####`, then a box),
    else the last number. Numbers (gsm8k, last_number) are normalised by `parse_number` ("$1,234.50" ->
    "1234.5"), so that math-verify reads them as numbers. `any` returns the whole text: math-verify's own
    extraction then looks for LaTeX (boxed first) or a plain expression anywhere in it.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "any":
        return text, "any"
    fmt = mode
    if mode == "auto":
        fmt = next((f for f, marker in _MARKERS if marker in text), "last_number")
    if fmt == "boxed":
        return boxed_answer(text), fmt
    span = gsm8k_answer(text) if fmt == "gsm8k" else last_number(text)
    if span is None:
        return None, fmt
    value = parse_number(span)
    return (span if value is None else str(value)), fmt


class MathAnswerVerifier:
    """1.0 when the completion's final answer equals the reference answer symbolically, else 0.0.

    Args:
        mode: how the answer is found in a completion (see `extract_answer`): "boxed" (default, MATH-style
            `\\boxed{}`), "gsm8k" (`#### n`), "last_number", "auto" or "any".
        answer_key: the context list holding the reference answers ("answer"; MATH-500 rows in
            shared/data/math500_roll call it "ground_truth"). A reference is LaTeX or a number; one that
            contains `\\boxed{}` (a worked solution) or `####` is reduced to that final answer first.
        timeout_s: wall-clock limit of one check (parsing both answers and comparing them), > 0.
        isolation: "process" (a killable child process, the default) or "inline" (see the module docstring).
        memory_mb: address-space limit of the child process (0: none).
        startup_timeout_s: how long the child may take to import math-verify and sympy.

    Context: `answer_key` (one reference per completion). info per item: `extracted` (the answer's text or
    None), `parsed` (the sympy expression math-verify read, as text, or None), `gold_parsed` (the same for
    the reference; None where it was not read), `parse_failed` (no answer found, or not readable as maths),
    `timeout`, `error` (message or None), `status` ("ok", "no_answer", "parse_failed", "timeout", "error"),
    `correct`, `format` (the extraction rule used), `source` ("math").
    A parse failure, timeout or error scores 0.0 and is recorded, never raised; only a missing or
    unreadable reference answer raises a FeedbackError (`row_problems` reports such a row at load time).
    """

    name = "math"

    def __init__(
        self,
        mode: str = "boxed",
        *,
        answer_key: str = "answer",
        timeout_s: float = 5.0,
        isolation: str = "process",
        memory_mb: int = 2048,
        startup_timeout_s: float = 120.0,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if isolation not in ("process", "inline"):
            raise ValueError(f"isolation must be 'process' or 'inline', got {isolation!r}")
        if memory_mb < 0:
            raise ValueError(f"memory_mb must be >= 0 (0: no limit), got {memory_mb}")
        self.mode = mode
        self.answer_key = answer_key
        self.timeout_s = float(timeout_s)
        self.isolation = isolation
        self.memory_mb = int(memory_mb)
        self.startup_timeout_s = float(startup_timeout_s)
        self._worker: _WorkerProcess | None = None
        self._lock = threading.Lock()

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        golds = [_gold_answer(a, i) for i, a in enumerate(context_list(context, self.answer_key, n, source=self.name))]
        extracted = [extract_answer(text, self.mode) for text in completions]
        results = [
            self.check(gold, answer) if answer is not None else _no_answer()
            for gold, (answer, _) in zip(golds, extracted, strict=True)
        ]
        correct = [r["correct"] for r in results]
        info = {
            "extracted": [answer if self.mode != "any" else None for answer, _ in extracted],
            "parsed": [r["parsed"] for r in results],
            "gold_parsed": [r["gold_parsed"] for r in results],
            "parse_failed": [r["status"] in ("no_answer", "parse_failed") for r in results],
            "timeout": [r["status"] == "timeout" for r in results],
            "error": [r["error"] for r in results],
            "status": [r["status"] for r in results],
            "correct": correct,
            "format": [fmt for _, fmt in extracted],
            "source": [self.name] * n,
        }
        return Scores(torch.tensor(correct, dtype=torch.float32), info)

    def row_problems(self, row: dict[str, Any]) -> list[str]:
        """What a prompt row lacks for this verifier: a reference under `answer_key` that is a finite number or
        non-empty text. Whether math-verify can read the text is not checked here (it needs the worker)."""
        key = self.answer_key
        if key not in row:
            return [f"missing '{key}' (the math verifier compares the reply's final answer with it)"]
        _, problem = _gold_text(row[key], show=shown_json)
        return [f"'{key}' for the math verifier {problem}"] if problem else []

    def check(self, gold: str, answer: str) -> dict[str, Any]:
        """Compare one extracted `answer` with one reference `gold` (both text); the worker's reply dict."""
        request = {"gold": gold, "pred": answer, "raw": self.mode == "any", "timeout_s": self.timeout_s}
        if self.isolation == "inline":
            if threading.current_thread() is not threading.main_thread():
                raise FeedbackError("math: isolation='inline' times checks with SIGALRM, which only works in the "
                                    "main thread; use isolation='process' here")

            _math_worker._library()  # import and warm up outside the check's timer
            return _math_worker.check(gold, answer, raw=request["raw"], timeout_s=self.timeout_s)
        with self._lock:
            if self._worker is None or not self._worker.alive():
                self._worker = _WorkerProcess(self.memory_mb, self.startup_timeout_s)
            try:
                return self._worker.request(request, self.timeout_s + _GRACE_S)
            except _WorkerGone as gone:  # the child is gone; the next check starts a fresh one
                self._worker = None
                return {"correct": False, "status": gone.status, "parsed": None, "gold_parsed": None,
                        "error": str(gone)}

    def close(self) -> None:
        """Stop the worker process now (it also stops when the verifier is garbage-collected)."""
        with self._lock:
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    def __enter__(self) -> MathAnswerVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # picklable (e.g. to a Ray worker): the child is not copied
        state = dict(self.__dict__)
        state["_worker"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _no_answer() -> dict[str, Any]:
    return {"correct": False, "status": "no_answer", "parsed": None, "gold_parsed": None, "error": None}


def _gold_answer(answer: Any, i: int) -> str:
    """A reference answer as the text of one answer (a solution's box, a `#### n` line, or as written)."""
    text, problem = _gold_text(answer, show=repr)
    if problem:
        raise FeedbackError(f"math: answer {i} {problem}")
    return text


def _gold_text(answer: Any, *, show: Callable[[Any], str]) -> tuple[str, str]:
    """(the reference's answer text, "") or ("", what is wrong with it, e.g. "is empty: '  '"), the bad value
    written by `show` (repr for a FeedbackError, `shown_json` for a data file)."""
    if isinstance(answer, bool) or answer is None or not isinstance(answer, (int, float, str)):
        return "", f"must be LaTeX text or a number, got {show(answer)}"
    if isinstance(answer, (int, float)):
        if isinstance(answer, float) and not math.isfinite(answer):
            return "", f"is not finite: {show(answer)}"
        return str(answer), ""
    text = answer.strip()
    if "\\boxed" in text or "\\fbox" in text:
        text = boxed_answer(text) or text
    elif "####" in text:
        text = gsm8k_answer(text) or text
    text = text.strip()
    while len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text[1:-1].strip()
    if not text:
        return "", f"is empty: {show(answer)}"
    return text, ""


class _WorkerGone(Exception):
    """The worker gave no reply: `status` "timeout" (it was late and has been killed) or "error" (it died)."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class _WorkerProcess:
    """One `_math_worker.py` child: JSON lines over pipes, killed with its process group when late."""

    def __init__(self, memory_mb: int, startup_timeout_s: float):
        # -P: the script's folder (rlxf/feedback, which holds math.py) must not shadow the standard library
        self.proc = subprocess.Popen(
            [sys.executable, "-P", str(_WORKER), str(memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True, bufsize=0,
        )
        self._finalizer = weakref.finalize(self, _kill, self.proc)
        self._buffer = b""
        try:
            ready = self._read_line(time.monotonic() + startup_timeout_s)
        except _WorkerGone:
            ready = None
        if ready is None or not ready.get("ready"):
            try:
                why = f"exited with status {self.proc.wait(timeout=0.5)} before it was ready"
            except subprocess.TimeoutExpired:
                why = f"did not start within {startup_timeout_s:g} s"
            self.close()
            raise FeedbackError(f"math: the math-verify worker {why} (is math-verify installed? "
                                f"`pip install math-verify`)")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, payload: dict[str, Any], deadline_s: float) -> dict[str, Any]:
        """The reply to `payload`; raises _WorkerGone (the child killed or dead) when there is none."""
        try:
            try:
                self.proc.stdin.write((json.dumps(payload) + "\n").encode())
            except OSError as exc:  # BrokenPipeError: it died since the last check
                raise self._died() from exc
            reply = self._read_line(time.monotonic() + deadline_s)
            if reply is None:
                raise _WorkerGone("timeout", f"no reply within {deadline_s:g} s; worker process killed")
            return reply
        except _WorkerGone:
            self.close()
            raise

    def _died(self) -> _WorkerGone:
        try:
            status = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            status = None
        return _WorkerGone("error", f"worker process died (exit status {status})")

    def _read_line(self, deadline: float) -> dict[str, Any] | None:
        """The next JSON line, None when the deadline passes first; raises _WorkerGone when the child exits."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # end of file: the child exited
                raise self._died()
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self._finalizer()


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()
