"""The sympy side of `MathAnswerVerifier`: parse two answers with math-verify and compare them, under a timer.

This file has no rlxf imports on purpose. `MathAnswerVerifier(isolation="process")` runs it as a script
(`python -P _math_worker.py`) in a child process that imports only math-verify and sympy (not torch), reads
one JSON request per line on stdin and writes one JSON reply per line on stdout. The parent kills and
restarts the child when a reply does not come within its deadline, so even sympy work stuck in C code (where
no Python signal gets through) cannot hang training. `isolation="inline"` imports `check` directly instead.

Request: {"gold": str, "pred": str, "raw": bool, "timeout_s": float}; `raw` means "let math-verify find the
answer in the whole reply"; otherwise `pred` and `gold` are one answer each (the contents of a box).
Reply: {"correct": bool, "status": "ok" | "parse_failed" | "timeout" | "error", "parsed": str | None,
"gold_parsed": str | None, "error": str | None}.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from functools import lru_cache
from typing import Any


class CheckTimeout(BaseException):  # noqa: N818 - BaseException so that no `except Exception` swallows it
    """The timer of one check ran out."""


def _on_alarm(signum, frame):
    raise CheckTimeout


class _NoTimeoutWarning(logging.Filter):
    """math-verify warns once that its own timeouts are off; here they are off because `check` times itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


@lru_cache(maxsize=1)
def _library():
    import math_verify

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_NoTimeoutWarning())
    # the first parse builds the LaTeX grammar's tables (about a second): do it now, outside any check's timer
    math_verify.parse(_boxed("1"), extraction_config=[math_verify.LatexExtractionConfig()], parsing_timeout=None)
    return math_verify


def _boxed(answer: str) -> str:
    """One answer, wrapped so that math-verify's LaTeX extraction reads the whole of it (and nothing else)."""
    return "\\boxed{" + answer + "}"


def _parse(text: str, *, raw: bool) -> list[Any]:
    mv = _library()
    if raw:
        configs = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
    else:
        configs = [mv.LatexExtractionConfig(boxed_match_priority=0)]
        text = _boxed(text)
    # timeouts are ours (the caller's timer covers the whole check), so math-verify's own are switched off
    return mv.parse(text, extraction_config=configs, parsing_timeout=None, raise_on_error=False)


@lru_cache(maxsize=1024)
def _parse_gold(gold: str) -> tuple[Any, ...]:
    return tuple(_parse(gold, raw=False))


def _symbolic(parsed: list[Any] | tuple[Any, ...]) -> str | None:
    """The first parsed expression as text (math-verify returns [expression, matched string], or only the
    string when LaTeX parsing failed, or [] when nothing was found)."""
    for item in parsed:
        if not isinstance(item, str):
            return str(item)
    return None


def _compare(gold: str, pred: str, raw: bool) -> dict[str, Any]:
    mv = _library()
    gold_parsed = _parse_gold(gold)
    parsed = _parse(pred, raw=raw)
    symbolic = _symbolic(parsed)
    if not parsed:
        return _reply(False, "parse_failed", None, _symbolic(gold_parsed))
    correct = bool(mv.verify(list(gold_parsed), parsed, timeout_seconds=None, raise_on_error=False))
    return _reply(correct, "ok" if symbolic is not None else "parse_failed", symbolic, _symbolic(gold_parsed))


def _reply(correct: bool, status: str, parsed: str | None, gold_parsed: str | None, error: str | None = None):
    return {"correct": correct, "status": status, "parsed": parsed, "gold_parsed": gold_parsed, "error": error}


def check(gold: str, pred: str, *, raw: bool = False, timeout_s: float = 5.0) -> dict[str, Any]:
    """Compare `pred` with `gold` under a `timeout_s` wall-clock timer (SIGALRM; main thread only)."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return _compare(gold, pred, raw)
    except CheckTimeout:
        return _reply(False, "timeout", None, None, f"no result within {timeout_s} s")
    except Exception as exc:  # noqa: BLE001 - a malformed answer is a score of 0 with the reason recorded
        return _reply(False, "error", None, None, f"{type(exc).__name__}: {exc}"[:300])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def main() -> None:
    """Serve requests from stdin until it closes; limit the address space first when asked."""
    if len(sys.argv) > 1 and int(sys.argv[1]) > 0:
        import resource

        limit = int(sys.argv[1]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _library()  # import before announcing readiness, so the first request's deadline covers no import
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        reply = check(request["gold"], request["pred"], raw=request["raw"], timeout_s=request["timeout_s"])
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
