"""Feedback sources by name, for configs and the CLI: `make_feedback("numeric", mode="boxed")`."""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from typing import Any

from rlxf.feedback.base import Feedback, FeedbackError
from rlxf.feedback.code import UnitTestVerifier
from rlxf.feedback.combine import LengthPenalty
from rlxf.feedback.contained import python_function
from rlxf.feedback.judges import CritiqueJudge, PairwiseJudge, PointwiseJudge
from rlxf.feedback.math import MathAnswerVerifier
from rlxf.feedback.oracles import GoldRewardModel
from rlxf.feedback.pairwise import BradleyTerryPairwise
from rlxf.feedback.reward_model import RewardModelFeedback
from rlxf.feedback.self_judge import SelfJudge
from rlxf.feedback.self_play import SelfPlayFeedback
from rlxf.feedback.verifiers import ArithmeticVerifier, NumericAnswerVerifier

__all__ = ["FEEDBACK", "register_feedback", "make_feedback", "list_feedback", "make_feedback_from_spec"]


def _self_play(source: str, **options: Any) -> Feedback:
    """`self_play:<spec>`: `SelfPlayFeedback` over the feedback that `<spec>` builds, read through
    `BradleyTerryPairwise` when it has no ``compare`` (a pointwise score r: P(a better) = sigmoid(r_a - r_b)).
    Keywords after the inner spec's own (`self_play:pairwise_judge:mode=text,batch_size=2`) belong to it: the
    spec parser hands them over as `options`, and they are written back onto the inner spec here."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError("self_play needs the spec of a pairwise source, e.g. self_play:pairwise_judge")
    if options:
        extra = ",".join(f"{key}={_spec_text(value)}" for key, value in options.items())
        source = f"{source},{extra}" if ":" in source else f"{source}:{extra}"
    if source.partition(":")[0].strip() == "self_play":
        raise ValueError("self_play cannot wrap self_play")
    inner = make_feedback_from_spec(source)
    pairwise = inner if callable(getattr(inner, "compare", None)) else BradleyTerryPairwise(inner)
    return SelfPlayFeedback(pairwise)


def _spec_text(value: Any) -> str:
    """A value as `_scalar` reads it back: quoted text, true/false, null, or the number."""
    if isinstance(value, str):
        return f'"{value}"' if "'" in value else f"'{value}'"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value)


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
    "math": (
        MathAnswerVerifier,
        "1.0 iff the final answer (\\boxed{...} by default) equals `answer` symbolically (math-verify, timed out)",
    ),
    "length_penalty": (
        LengthPenalty,
        "DAPO soft overlong penalty in [-1, 0] (`max_length`, `cache_length`; token counts from context)",
    ),
    "gold_reward": (
        GoldRewardModel,
        "synthetic oracle: a known linear reward of text features (length, keywords, seeded hashed words)",
    ),
    "judge": (
        PointwiseJudge,
        "LLM judge (default SmolLM2): expected 1-5 rubric score from the verdict-token probabilities",
    ),
    "critique_judge": (
        CritiqueJudge,
        "LLM judge that writes a critique (info['critique']) before its 1-5 verdict",
    ),
    "pairwise_judge": (
        PairwiseJudge,
        "LLM A/B judge over both orders: compare() gives P(a better); as feedback P(beats `reference`)",
    ),
    "reward_model": (
        RewardModelFeedback.from_path,
        "a saved reward model directory (`path`, e.g. runs/<run>/final): its reward, with uncertainty for ensembles",
    ),
    "unit_tests": (
        UnitTestVerifier,
        "1.0 iff the code passes its HumanEval (`test`, `entry_point`) or MBPP (`test_list`) tests in the sandbox",
    ),
    "python_function": (
        python_function,
        "a user reward function (`path`='module:function' or 'file.py:function') in a contained worker process",
    ),
    "self_judge": (
        SelfJudge,
        "the policy being trained judges its own samples (Self-Rewarding): expected 1-5 score, or the mean of "
        "`samples` sampled judgements; the recipe binds the policy (bind_policy)",
    ),
    "self_play": (
        _self_play,
        "SPO: each completion's win rate against the others of its prompt, by a pairwise source (self_play:<spec>)",
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


_KEY = re.compile(r"\s*([A-Za-z_]\w*)\s*=(.*)", re.DOTALL)


def make_feedback_from_spec(spec: str) -> Feedback:
    """A feedback from a one-string spec, as written in configs and on the command line.

    Forms (the first ':' separates the name, so the argument may contain ':' itself):

    * `name`: `make_feedback(name)`, e.g. `arithmetic`;
    * `name:arg`: arg is the factory's first parameter, e.g. `reward_model:/path/to/run` (path),
      `python_function:my_mod:fn` (path "my_mod:fn"), `math:auto` (mode);
    * `name:key=value,key=value`: keyword arguments, e.g. `numeric:mode=boxed,tol=0.01`;
    * `name:arg,key=value,...`: both.

    The argument is read as keywords when every comma-separated part is `identifier=...`, else (the first
    part not being one) as one positional argument plus the keyword parts that follow; failing both, the
    whole text is the positional argument (a path with commas or '=' in it stays whole). Values are read as
    true/false, null/none, int, float, else text; quote a value ('...' or "...") to keep it text.
    Raises FeedbackError naming the spec for an unknown name, unknown or repeated keys, a positional
    argument a factory does not take, or a value the factory rejects.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise FeedbackError(f"feedback spec must be a non-empty string like 'numeric:mode=boxed', got {spec!r}")
    name, colon, arg = spec.strip().partition(":")
    name = name.strip()
    if name not in FEEDBACK:
        close = difflib.get_close_matches(name, FEEDBACK, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise FeedbackError(f"feedback spec {spec!r}: unknown feedback '{name}'{hint}; "
                            f"available: {', '.join(sorted(FEEDBACK))}")
    factory, _ = FEEDBACK[name]
    positional, kwargs = _spec_arguments(spec, arg) if colon else (None, {})
    params = _parameters(factory)
    if positional is not None:
        first = next((p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), None)
        if first is None:
            raise FeedbackError(f"feedback spec {spec!r}: '{name}' takes no positional argument; "
                                f"use key=value ({_accepted(params)})")
        if first.name in kwargs:
            raise FeedbackError(f"feedback spec {spec!r}: '{first.name}' is given twice")
        kwargs = {first.name: positional, **kwargs}
    if params is not None and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in kwargs if k not in params or params[k].kind == params[k].POSITIONAL_ONLY]
        if unknown:
            raise FeedbackError(f"feedback spec {spec!r}: '{name}' has no parameter {', '.join(unknown)}; "
                                f"it takes {_accepted(params)}")
    try:
        return make_feedback(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise FeedbackError(f"feedback spec {spec!r}: {exc}") from exc


def _spec_arguments(spec: str, arg: str) -> tuple[Any, dict[str, Any]]:
    """(positional value or None, keyword values) of the text after the first ':'."""
    if not arg.strip():
        raise FeedbackError(f"feedback spec {spec!r}: nothing after ':'")
    parts = arg.split(",")
    matches = [_KEY.fullmatch(part) for part in parts]
    if all(matches):
        positional, keyed = None, matches
    elif len(parts) > 1 and all(matches[1:]):
        positional, keyed = _scalar(parts[0]), matches[1:]
    else:
        return _scalar(arg), {}
    kwargs: dict[str, Any] = {}
    for match in keyed:
        key, value = match.group(1), match.group(2)
        if key in kwargs:
            raise FeedbackError(f"feedback spec {spec!r}: '{key}' is given twice")
        kwargs[key] = _scalar(value)
    return positional, kwargs


def _scalar(text: str) -> Any:
    """'true' -> True, 'null' -> None, '3' -> 3, '1e-5' -> 1e-05, "'3'" -> '3', anything else as text."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: let the call itself complain
        return None


def _accepted(params: dict[str, inspect.Parameter] | None) -> str:
    names = [p.name for p in (params or {}).values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return ", ".join(names) if names else "no arguments"
