"""The feedback contract: `feedback(prompts, completions, **context) -> Scores(values, info)`.

Every source of reward (verifiers, reward models, judges) implements `Feedback`. `Scores.values` is one
float32 score per completion, shape `(B,)`; `Scores.info` maps a key to a per-item list of length `B`
(e.g. `parsed`, `parse_failed`, `correct`, `source`), so evaluation can report coverage and provenance and
several batches' infos concatenate key by key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from rlxf.types import Scores

__all__ = [
    "FeedbackError", "FeedbackSourceFailed", "Scores", "Feedback", "validate_scores", "check_batch", "context_list",
    "finite_mask", "row_problems", "shown_json",
]


class FeedbackError(ValueError):
    """A feedback was called with, or returned, something that breaks the contract."""


class FeedbackSourceFailed(FeedbackError):
    """A feedback source gave up for good (e.g. its function timed out on every call of a row): a run cannot go
    on scoring with it and stops, resumable, with this message."""


@runtime_checkable
class Feedback(Protocol):
    """Scores completions; context items are per-item lists aligned with `completions` (`answer=[...]`)."""

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores: ...


def check_batch(prompts: Sequence[str], completions: Sequence[str], *, source: str) -> int:
    """The batch size `B`, after checking that prompts and completions are aligned lists of strings."""
    if len(prompts) != len(completions):
        raise FeedbackError(f"{source}: {len(prompts)} prompts for {len(completions)} completions")
    for i, text in enumerate(completions):
        if not isinstance(text, str):
            raise FeedbackError(f"{source}: completion {i} must be a str, got {type(text).__name__}")
    return len(completions)


def context_list(context: dict[str, Any], key: str, n: int, *, source: str) -> list[Any]:
    """`context[key]` as a list of length `n`, or a FeedbackError saying what is missing or misaligned."""
    if key not in context:
        have = ", ".join(sorted(context)) or "none"
        raise FeedbackError(f"{source}: needs context '{key}' (a list, one item per completion); got: {have}")
    items = context[key]
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise FeedbackError(f"{source}: context '{key}' must be a list, got {type(items).__name__}")
    if len(items) != n:
        raise FeedbackError(f"{source}: context '{key}' has {len(items)} items for {n} completions")
    return list(items)


def row_problems(feedback: Any, row: Mapping[str, Any]) -> list[str]:
    """Why the prompt `row` (one parsed JSONL row: `prompt`/`messages` plus context fields) cannot be scored by
    `feedback`; empty when it can, or when the source states no needs.

    A source states its needs by defining `row_problems(self, row) -> list[str]`, each problem phrased for the
    data file (`missing 'answer' (...)`, `'answer' must be an integer ..., got string "seven"`), so a loader can
    report it as `file:line: problem` before training rather than as a failed batch mid-run. Sources without
    the method (reward models, a user's `python_function`) give [].
    """
    check = getattr(feedback, "row_problems", None)
    return list(check(row)) if callable(check) else []


def shown_json(value: Any, limit: int = 60) -> str:
    """A row's value as a data file shows it, with its JSON type: `string "seven"`, `number 7.5`, `boolean
    true`, `null`, `array [1, 2]`; the text is cut to `limit` characters (default 60)."""
    if value is None:
        return "null"
    kind = ("boolean" if isinstance(value, bool) else "number" if isinstance(value, (int, float))
            else "string" if isinstance(value, str) else "array" if isinstance(value, (list, tuple))
            else "object" if isinstance(value, Mapping) else type(value).__name__)
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return f"{kind} {text if len(text) <= limit else text[: limit - 3] + '...'}"


def validate_scores(
    scores: Scores,
    n: int,
    *,
    on_nonfinite: Literal["raise", "record"] = "raise",
    fill: float = 0.0,
) -> Scores:
    """Check that a feedback returned exactly one finite float score per completion.

    Checks: `scores` is a `Scores`; `values` is a 1-D floating tensor of length `n`; every `info` value is a
    list of length `n`; `step_values`, when given, holds `n` 1-D floating tensors (step scores are checked for
    finiteness like values, but never filled: a non-finite step score always raises). Non-finite values (NaN,
    +-inf) either raise a FeedbackError naming the items (`on_nonfinite="raise"`), or (`"record"`) are replaced
    by `fill` and flagged in `info["nonfinite"]` (bool per item) so the replacement is visible downstream rather
    than silent.

    Returns a new `Scores` whose `values` are detached float32 on the CPU; `info` is shared, not copied.
    """
    if on_nonfinite not in ("raise", "record"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'record', got {on_nonfinite!r}")
    if not isinstance(scores, Scores):
        raise FeedbackError(f"feedback must return Scores, got {type(scores).__name__}")
    source = _source_name(scores)
    values = scores.values
    if not isinstance(values, Tensor):
        raise FeedbackError(f"{source}: Scores.values must be a torch.Tensor, got {type(values).__name__}")
    if values.dim() != 1 or values.shape[0] != n:
        raise FeedbackError(f"{source}: expected {n} scores of shape ({n},), got shape {tuple(values.shape)}")
    if not values.is_floating_point():
        raise FeedbackError(f"{source}: Scores.values must be floating point, got {values.dtype}")
    for key, items in scores.info.items():
        if not isinstance(items, list) or len(items) != n:
            got = f"length {len(items)}" if isinstance(items, list) else type(items).__name__
            raise FeedbackError(f"{source}: info['{key}'] must be a list of {n} items, got {got}")

    steps = _checked_steps(scores.step_values, n, source)
    values = values.detach().to(device="cpu", dtype=torch.float32)
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        idx = bad.nonzero().flatten().tolist()
        if on_nonfinite == "raise":
            shown = ", ".join(f"{i}={values[i].item()}" for i in idx[:10])
            more = f" (+{len(idx) - 10} more)" if len(idx) > 10 else ""
            raise FeedbackError(f"{source}: {len(idx)} of {n} scores are not finite: {shown}{more}")
        if not math.isfinite(fill):
            raise ValueError(f"fill must be finite, got {fill}")
        values = torch.where(bad, torch.full_like(values, fill), values)
        info = dict(scores.info)
        info["nonfinite"] = bad.tolist()
        return Scores(values, info, steps)
    return Scores(values, scores.info, steps)


def finite_mask(scores: Scores) -> Tensor:
    """``(B,)`` bool: True for the items whose score is real, False for those :func:`validate_scores` recorded as
    non-finite (``info["nonfinite"]``, filled with a placeholder that must not be trained on)."""
    return ~torch.tensor(scores.info.get("nonfinite") or [False] * len(scores), dtype=torch.bool)


def _checked_steps(steps: list[Tensor] | None, n: int, source: str) -> list[Tensor] | None:
    """Per-item step scores as detached float32 CPU tensors, or a FeedbackError naming the first bad item."""
    if steps is None:
        return None
    if not isinstance(steps, list) or len(steps) != n:
        raise FeedbackError(f"{source}: Scores.step_values must be a list of {n} tensors")
    out = []
    for i, item in enumerate(steps):
        if not isinstance(item, Tensor) or item.dim() != 1 or not item.is_floating_point():
            raise FeedbackError(f"{source}: step_values[{i}] must be a 1-D float tensor (one score per step)")
        if not bool(torch.isfinite(item).all()):
            raise FeedbackError(f"{source}: step_values[{i}] has non-finite step scores: {item.tolist()}")
        out.append(item.detach().to(device="cpu", dtype=torch.float32))
    return out


def _source_name(scores: Scores) -> str:
    sources = scores.info.get("source")
    if isinstance(sources, list) and sources:
        return ", ".join(sorted({str(s) for s in sources}))
    return "feedback"
