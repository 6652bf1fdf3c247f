"""Feedback sources by name, for configs and the CLI: `make_feedback("numeric", mode="boxed")`."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from rlxf.feedback.base import Feedback
from rlxf.feedback.verifiers import ArithmeticVerifier, NumericAnswerVerifier

__all__ = ["FEEDBACK", "register_feedback", "make_feedback", "list_feedback"]

# name -> (factory taking the feedback's keyword arguments, one-line summary for `rlxf list`)
FEEDBACK: dict[str, tuple[Callable[..., Feedback], str]] = {
    "arithmetic": (
        ArithmeticVerifier,
        "1.0 iff the last integer in the reply equals `answer` (anchor's rule)",
    ),
    "numeric": (
        NumericAnswerVerifier,
        "1.0 iff the final number (#### n, \\boxed{...} or the last number) is within tol of `answer`",
    ),
}


Factory = Callable[..., Feedback]


def register_feedback(name: str, summary: str) -> Callable[[Factory], Factory]:
    """Decorator adding a feedback factory (a class or function) under `name`; names are unique."""

    def decorator(factory: Factory) -> Factory:
        if name in FEEDBACK:
            raise ValueError(f"feedback '{name}' is already registered")
        FEEDBACK[name] = (factory, summary)
        return factory

    return decorator


def make_feedback(name: str, **kwargs: Any) -> Feedback:
    """A new instance of the feedback registered as `name`, built with `kwargs`."""
    if name not in FEEDBACK:
        close = difflib.get_close_matches(name, FEEDBACK, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise KeyError(f"unknown feedback '{name}'{hint}; available: {', '.join(sorted(FEEDBACK))}")
    factory, _ = FEEDBACK[name]
    return factory(**kwargs)


def list_feedback() -> list[tuple[str, str]]:
    """(name, one-line summary) for every registered feedback, sorted by name."""
    return [(name, summary) for name, (_, summary) in sorted(FEEDBACK.items())]
