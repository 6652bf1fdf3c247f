"""Combining feedback: weighted sums, normalisation, constraint gates and length penalties.

Each combinator is itself a `Feedback` (`combinator(prompts, completions, **context) -> Scores`), so they
nest: `WeightedSum({"task": (Gated(rm, verifier), 1.0), "length": (LengthPenalty(512, 128), 1.0)})`. Each
is one named step that a recipe or config asks for; nothing here happens unless asked for.

Provenance is kept, not flattened away: a combinator's `info` holds every source's values as
`"<name>.value"` and every source's own info keys as `"<name>.<key>"` (e.g. `"task.correct"`), so evaluation
can still report a verifier's coverage inside a sum. Non-finite source values are never hidden: an item
whose source value is NaN or inf (and that value is used) comes out NaN, and the recipe's `validate_scores`
records it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlxf.feedback.base import (
    Feedback,
    FeedbackError,
    Scores,
    check_batch,
    context_list,
    row_problems,
    validate_scores,
)

__all__ = ["WeightedSum", "Normalized", "RunningMoments", "Gated", "LengthPenalty", "overlong_penalty"]

NORMALIZATIONS = ("batch_zscore", "running_zscore", "rank")


def _call_source(feedback: Feedback, name: str, prompts: list[str], completions: list[str], context: dict,
                 n: int) -> tuple[Tensor, dict[str, list[Any]]]:
    """One source's float32 `(B,)` values (non-finite values kept as NaN/inf) and its info, after the checks."""
    scores = feedback(prompts, completions, **context)
    try:
        validate_scores(scores, n, on_nonfinite="record")  # the shape and info checks; NaN is passed on below
    except FeedbackError as exc:
        raise FeedbackError(f"source '{name}': {exc}") from exc
    return scores.values.detach().to(device="cpu", dtype=torch.float32), dict(scores.info)


def _parts_problems(parts: Sequence[Feedback], row: dict[str, Any]) -> list[str]:
    """Every part's `row_problems` for `row`, in order, each problem once (two verifiers needing the same
    'answer' say so once)."""
    return list(dict.fromkeys(problem for part in parts for problem in row_problems(part, row)))


def _prefixed(name: str, values: Tensor, info: dict[str, list[Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {f"{name}.value": values.tolist()}
    out.update({f"{name}.{key}": items for key, items in info.items()})
    return out


class WeightedSum:
    """r(x, y) = sum_k w_k * r_k(x, y): a fixed linear combination of named feedback sources.

    Args:
        sources: {name: (feedback, weight)}, at least one; weights are finite floats (0 keeps a source in
            `info` for monitoring without affecting the reward; negative weights are allowed).

    values: float32 `(B,)`. info: `"<name>.value"` and `"<name>.<key>"` for every source, `source`
    ("weighted_sum"). A non-finite source value makes that item's sum non-finite (also with weight 0).
    """

    name = "weighted_sum"

    def __init__(self, sources: Mapping[str, tuple[Feedback, float]]):
        if not sources:
            raise ValueError("WeightedSum needs at least one source")
        self.sources: dict[str, tuple[Feedback, float]] = {}
        for name, item in sources.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"source names must be non-empty strings without '.', got {name!r}")
            if not (isinstance(item, tuple) and len(item) == 2 and callable(item[0])):
                raise ValueError(f"source '{name}' must be (feedback, weight), got {item!r}")
            weight = item[1]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"source '{name}': weight must be a finite number, got {weight!r}")
            self.sources[name] = (item[0], float(weight))

    def row_problems(self, row: dict[str, Any]) -> list[str]:
        """What a prompt row lacks for any source (every source is called, whatever its weight)."""
        return _parts_problems([feedback for feedback, _ in self.sources.values()], row)

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        total = torch.zeros(n, dtype=torch.float32)
        info: dict[str, list[Any]] = {}
        for name, (feedback, weight) in self.sources.items():
            values, source_info = _call_source(feedback, name, prompts, completions, context, n)
            # a weight of 0 must not turn inf into 0 silently: 0 * inf is NaN, which is what we want here
            total = total + weight * values
            info.update(_prefixed(name, values, source_info))
        info["source"] = [self.name] * n
        return Scores(total, info)


@dataclass
class RunningMoments:
    """Count, mean and sum of squared deviations (M2) of every finite value seen so far (float64 maths).

    Batches are merged with the parallel update of Chan, Golub and LeVeque (1979): for a batch with count
    n_b, mean m_b and M2_b, delta = m_b - mean; mean += delta * n_b / N; M2 += M2_b + delta^2 * count * n_b / N
    with N = count + n_b. `std` is the population standard deviation sqrt(M2 / count).
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, values: Tensor) -> None:
        """Add the finite entries of `values` (any shape)."""
        finite = values[torch.isfinite(values)].to(torch.float64)
        n_b = int(finite.numel())
        if n_b == 0:
            return
        mean_b = float(finite.mean())
        m2_b = float(((finite - mean_b) ** 2).sum())
        total = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * self.count * n_b / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def state_dict(self) -> dict[str, float | int]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


class Normalized:
    """One source's values normalised, by a named method.

    Methods (over the finite values of the batch; non-finite ones stay NaN and are left out of every
    statistic):

    * "batch_zscore": (r - mean_B) / (std_B + eps), population std of this batch (a batch of one gives 0);
    * "running_zscore": (r - mean) / (std + eps) with the running mean and population std of every batch
      so far, this one included (the state is updated first, so the first batch equals batch_zscore). The
      state is the public `state` (`RunningMoments`, with `state_dict()`/`load_state_dict()` for
      checkpoints); pass one in to share or restore it;
    * "rank": the average rank of r in the batch scaled to [0, 1], (rank - 1) / (m - 1) for m finite values
      (ties share their average rank; a batch of one gives 0.5). Scale-free and robust to outliers.

    values: float32 `(B,)`. info: the source's info, plus `raw` (the values before normalisation);
    `source` becomes "<method>(<source>)".
    """

    def __init__(self, feedback: Feedback, method: str = "batch_zscore", *, eps: float = 1e-6,
                 state: RunningMoments | None = None):
        if method not in NORMALIZATIONS:
            raise ValueError(f"method must be one of {', '.join(NORMALIZATIONS)}, got {method!r}")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        if state is not None and method != "running_zscore":
            raise ValueError("state is only used by method='running_zscore'")
        self.feedback = feedback
        self.method = method
        self.eps = float(eps)
        self.state = state if state is not None else RunningMoments()
        self.name = method

    def row_problems(self, row: dict[str, Any]) -> list[str]:
        """What a prompt row lacks for the normalised source."""
        return _parts_problems([self.feedback], row)

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        raw, info = _call_source(self.feedback, "normalized", prompts, completions, context, n)
        finite = torch.isfinite(raw)
        out = torch.full_like(raw, math.nan)
        if bool(finite.any()):
            out[finite] = self._normalize(raw[finite].to(torch.float64)).to(torch.float32)
        inner = info.get("source") or ["feedback"] * n
        info = dict(info)
        info["raw"] = raw.tolist()
        info["source"] = [f"{self.method}({s})" for s in inner]
        return Scores(out, info)

    def _normalize(self, x: Tensor) -> Tensor:
        if self.method == "rank":
            return _average_ranks(x)
        if self.method == "running_zscore":
            self.state.update(x)
            mean, std = self.state.mean, self.state.std
        else:
            mean, std = float(x.mean()), float(x.std(unbiased=False)) if x.numel() > 1 else 0.0
        return (x - mean) / (std + self.eps)


def _average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..m of `x` (ties averaged), scaled to [0, 1]; 0.5 for a single value."""
    m = x.numel()
    if m == 1:
        return torch.full_like(x, 0.5)
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    sorted_x = x[order]
    i = 0
    while i < m:
        j = i
        while j + 1 < m and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0  # 0-based average rank of the tie block
        i = j + 1
    return ranks / (m - 1)


class Gated:
    """The reward only where a constraint passes: r(x, y) if g(x, y) >= threshold, else `fill`.

    E.g. a reward model's score only for answers a verifier accepts, or only for replies a safety judge
    passes. Both feedbacks are called on the whole batch.

    Args:
        reward: the feedback whose values are kept.
        gate: the constraint feedback (a verifier's 1/0, a judge's probability, ...).
        threshold: the gate passes where its value is >= threshold.
        fill: the value where the gate fails (finite).

    values: float32 `(B,)`. A NaN gate gives NaN (unknown whether it passed); a non-finite reward gives a
    non-finite value only where the gate passes. info: `gate_passed` (bool), `"reward.value"`,
    `"gate.value"` and both sources' info keys under `"reward."` and `"gate."`; `source` ("gated").
    """

    name = "gated"

    def __init__(self, reward: Feedback, gate: Feedback, threshold: float = 0.5, *, fill: float = 0.0):
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold!r}")
        if not math.isfinite(fill):
            raise ValueError(f"fill must be finite, got {fill!r}")
        self.reward, self.gate, self.threshold, self.fill = reward, gate, float(threshold), float(fill)

    def row_problems(self, row: dict[str, Any]) -> list[str]:
        """What a prompt row lacks for the gate or the reward (both are called on every item)."""
        return _parts_problems([self.gate, self.reward], row)

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        gate, gate_info = _call_source(self.gate, "gate", prompts, completions, context, n)
        reward, reward_info = _call_source(self.reward, "reward", prompts, completions, context, n)
        passed = gate >= self.threshold
        values = torch.where(passed, reward, torch.full_like(reward, self.fill))
        values = torch.where(torch.isnan(gate), torch.full_like(values, math.nan), values)
        info = {"gate_passed": passed.tolist(), **_prefixed("reward", reward, reward_info),
                **_prefixed("gate", gate, gate_info), "source": [self.name] * n}
        return Scores(values, info)


def overlong_penalty(lengths: Tensor, *, max_length: int, cache_length: int) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning
    System at Scale", arXiv:2503.14476, eq. 13), with L_max = `max_length` and L_cache = `cache_length`:

        R_length(y) = 0                                  if |y| <= L_max - L_cache
                      ((L_max - L_cache) - |y|) / L_cache   if L_max - L_cache < |y| <= L_max
                      -1                                 if L_max < |y|

    lengths: `(B,)` completion lengths |y| in tokens (any numeric dtype). Returns float32 `(B,)` in [-1, 0].
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have shape (B,), got {tuple(lengths.shape)}")
    _check_lengths(max_length, cache_length)
    y = lengths.to(torch.float32)
    soft_start = float(max_length - cache_length)
    ramp = (soft_start - y) / float(cache_length)
    inside = torch.where(y <= soft_start, torch.zeros_like(y), ramp)
    return torch.where(y > max_length, torch.full_like(y, -1.0), inside)


def _check_lengths(max_length: int, cache_length: int) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    if isinstance(cache_length, bool) or not isinstance(cache_length, int) or not 0 < cache_length <= max_length:
        raise ValueError(f"cache_length must be an int in 1..max_length={max_length}, got {cache_length!r}")


class LengthPenalty:
    """DAPO's soft overlong penalty (eq. 13, see `overlong_penalty`) as a feedback, in [-1, 0] per completion.

    Meant to be added to a task reward: `WeightedSum({"task": (verifier, 1.0), "length": (LengthPenalty(...),
    1.0)})` (DAPO adds it to the +-1 correctness reward).

    Args:
        max_length: L_max, the longest completion (tokens) that gets any reward.
        cache_length: L_cache, the soft band before L_max in which the penalty grows linearly from 0 to -1.
        length_key: context list holding each completion's length in tokens (used without a tokenizer).
        tokenizer: counts tokens itself instead: a callable `text -> sequence of ids` or an object with
            `encode(text, add_special_tokens=False)` (a transformers tokenizer). Counting the tokens of
            decoded text can differ from the number sampled (re-tokenisation); pass the sampled lengths in
            `length_key` where the caller has them.

    info: `length` (the lengths used), `source` ("length_penalty").
    """

    name = "length_penalty"

    def __init__(self, max_length: int, cache_length: int, *, length_key: str = "completion_tokens",
                 tokenizer: Any = None):
        _check_lengths(max_length, cache_length)
        self.max_length, self.cache_length = max_length, cache_length
        self.length_key = length_key
        self.tokenizer = tokenizer

    def row_problems(self, row: dict[str, Any]) -> list[str]:
        """Nothing: lengths belong to completions (the tokenizer's count, or the online recipe's
        `completion_tokens`), not to prompt rows."""
        return []

    def __call__(self, prompts: list[str], completions: list[str], **context: list[Any]) -> Scores:
        n = check_batch(prompts, completions, source=self.name)
        if self.tokenizer is not None:
            lengths = [len(self._encode(text)) for text in completions]
        else:
            lengths = [_length(x, i, self.length_key) for i, x in
                       enumerate(context_list(context, self.length_key, n, source=self.name))]
        values = overlong_penalty(torch.tensor(lengths, dtype=torch.float64).reshape(n),
                                  max_length=self.max_length, cache_length=self.cache_length)
        return Scores(values, {"length": lengths, "source": [self.name] * n})

    def _encode(self, text: str) -> Sequence[int]:
        encode: Callable[..., Sequence[int]] | None = getattr(self.tokenizer, "encode", None)
        if encode is not None:
            return encode(text, add_special_tokens=False)
        return self.tokenizer(text)


def _length(x: Any, i: int, key: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        if isinstance(x, float) and x.is_integer() and x >= 0:
            return int(x)
        raise FeedbackError(f"length_penalty: context '{key}' item {i} must be a token count (int >= 0), got {x!r}")
    return x
