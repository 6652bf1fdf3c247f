"""Training-health alarms for the online loops: the failures RLHF papers warn about, named while the run goes.

A :class:`HealthMonitor` reads the step records a loop logs (``metrics.jsonl`` rows) and says which alarms are on
after each one. Every alarm compares a moving average over the last ``window`` steps with the average of the run's
first ``window`` steps (its baseline) or with a fixed threshold; nothing fires before ``window`` steps exist.

* ``overoptimization``: the proxy (the training reward, ``reward_mean``) is rising while the held-out metric
  (``heldout_key``, e.g. held-out accuracy or a gold reward) falls: at an evaluation, the held-out value is more
  than ``heldout_drop`` below the best so far, and the reward's moving average is above what it was at that best
  evaluation (Gao et al. 2023's over-optimisation, seen from inside a run).
* ``length_explosion``: the mean completion length (``completion_len``) is more than ``length_factor`` times its
  baseline, or more than ``truncated_frac`` of the completions hit the token limit.
* ``entropy_collapse``: the policy's mean token entropy (``entropy``) is below ``entropy_factor`` times its baseline.
* ``zero_std_groups``: more than ``zero_std_frac`` of the groups have equal rewards (``frac_zero_std_groups``) and
  so no group-relative gradient.

An alarm whose metric a loop does not log never fires, and a threshold set to None turns one alarm off. The state is
a function of the records alone, so a resumed run rebuilds it from its (truncated) ``metrics.jsonl`` with
:meth:`HealthMonitor.replay` and raises the same alarms as an uninterrupted one.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["ALARMS", "HealthMonitor", "HealthThresholds"]

ALARMS = ("overoptimization", "length_explosion", "entropy_collapse", "zero_std_groups")


@dataclass(frozen=True)
class HealthThresholds:
    """When each alarm fires (see the module docstring); None turns that test off."""

    window: int = 10
    heldout_key: str = "heldout_accuracy"
    heldout_drop: float | None = 0.05
    length_factor: float | None = 2.0
    truncated_frac: float | None = 0.5
    entropy_factor: float | None = 0.2
    zero_std_frac: float | None = 0.8

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any]) -> HealthThresholds:
        """The defaults with ``overrides`` (e.g. a config's ``alarms`` dict); an unknown key or a bad value raises
        ValueError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown alarm setting(s) {unknown}; known: {sorted(known)}")
        out = cls(**overrides)
        if not isinstance(out.window, int) or out.window < 1:
            raise ValueError(f"alarm window must be an integer >= 1, got {out.window!r}")
        for f in fields(cls):
            value = getattr(out, f.name)
            if f.name not in ("window", "heldout_key") and value is not None \
                    and not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"alarm setting {f.name} must be a number >= 0 or null, got {value!r}")
        return out


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


class _Series:
    """A metric's first ``window`` values (the baseline) and its last ``window`` (the moving average)."""

    def __init__(self, window: int):
        self.window = window
        self.first: list[float] = []
        self.recent: deque[float] = deque(maxlen=window)

    def add(self, value: Any) -> None:
        if isinstance(value, int | float) and math.isfinite(value):
            if len(self.first) < self.window:
                self.first.append(float(value))
            self.recent.append(float(value))

    @property
    def ready(self) -> bool:
        return len(self.first) == self.window

    @property
    def baseline(self) -> float:
        return _mean(self.first)

    @property
    def average(self) -> float:
        return _mean(self.recent)


class HealthMonitor:
    """``update(record)`` after each step -> the alarms on now (a tuple of names from ``ALARMS``)."""

    def __init__(self, thresholds: HealthThresholds | None = None):
        self.thresholds = thresholds or HealthThresholds()
        w = self.thresholds.window
        self.series = {key: _Series(w) for key in ("reward_mean", "completion_len", "truncated_frac", "entropy",
                                                   "frac_zero_std_groups")}
        self.best_heldout: tuple[float, float] | None = None  # (held-out value, reward average then)
        self.overoptimized = False
        self.counts = dict.fromkeys(ALARMS, 0)  # steps each alarm was on

    def replay(self, records: list[dict[str, Any]]) -> HealthMonitor:
        """Feed a run's earlier records (a resumed run's metrics.jsonl) in order; returns self."""
        for record in records:
            self.update(record)
        return self

    def update(self, record: dict[str, Any]) -> tuple[str, ...]:
        t = self.thresholds
        for key, series in self.series.items():
            series.add(record.get(key))
        on = []
        if self._overoptimization(record.get(t.heldout_key)):
            on.append("overoptimization")
        length, truncated = self.series["completion_len"], self.series["truncated_frac"]
        if (t.length_factor is not None and length.ready and length.average > t.length_factor * length.baseline) or \
                (t.truncated_frac is not None and truncated.ready and truncated.average > t.truncated_frac):
            on.append("length_explosion")
        entropy = self.series["entropy"]
        if t.entropy_factor is not None and entropy.ready and entropy.average < t.entropy_factor * entropy.baseline:
            on.append("entropy_collapse")
        zero = self.series["frac_zero_std_groups"]
        if t.zero_std_frac is not None and zero.ready and zero.average > t.zero_std_frac:
            on.append("zero_std_groups")
        for name in on:
            self.counts[name] += 1
        return tuple(on)

    def _overoptimization(self, heldout: Any) -> bool:
        """On from an evaluation that shows the drop until one that does not (evaluations are sparse)."""
        t, reward = self.thresholds, self.series["reward_mean"]
        if t.heldout_drop is None or not (isinstance(heldout, int | float) and math.isfinite(heldout)):
            return self.overoptimized
        heldout = float(heldout)
        if self.best_heldout is None or heldout >= self.best_heldout[0]:
            self.best_heldout = (heldout, reward.average)
            self.overoptimized = False
        else:
            best, reward_at_best = self.best_heldout
            if not math.isfinite(reward_at_best):  # the best came before `window` rewards existed
                reward_at_best = reward.baseline
            self.overoptimized = reward.ready and heldout < best - t.heldout_drop and reward.average > reward_at_best
        return self.overoptimized
