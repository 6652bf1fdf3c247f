"""How a recipe calls a loss: with exactly the tensors and hyperparameters its signature declares.

A loss declares its inputs in its signature (DESIGN.md, "Contracts"): tensor inputs (annotated ``Tensor``,
``Tensor | None`` or ``torch.Generator``), positional or keyword-only, and keyword-only hyperparameters (plain
values: ``float``, ``int``, ``str``, ``bool``, ``Literal[...]``, optionally ``| None``). Recipes read the
signature to know what to compute, check a user's ``loss.<name>=value`` settings against it, and call the loss
through :func:`call_loss`, which refuses a missing or unknown tensor instead of dropping it.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlxf.config import ConfigError, coerce_value
from rlxf.objectives.registry import get_objective
from rlxf.types import LossOutput

__all__ = ["LossSignature", "call_loss", "loss_signature", "objective_of_kind", "resolve_hyperparameters"]

_INPUT_TYPES = (Tensor, torch.Generator)


@dataclass(frozen=True)
class LossSignature:
    """The inputs a loss declares. ``hyperparameters`` maps each name to ``(type hint, default)``."""

    name: str
    tensors: tuple[str, ...]
    required: frozenset[str]
    hyperparameters: dict[str, tuple[Any, Any]]


def _is_input(hint: Any) -> bool:
    """Whether a parameter's type hint makes it a tensor input rather than a hyperparameter."""
    if hint in _INPUT_TYPES:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_input(arg) for arg in typing.get_args(hint))
    return False


@functools.cache
def loss_signature(fn: Callable) -> LossSignature:
    """The tensor inputs and hyperparameters of loss ``fn`` (a registered loss or any function written to the
    same contract). Raises TypeError for a parameter without a type hint, which could be either."""
    name = getattr(fn, "registered_name", getattr(fn, "__name__", repr(fn)))
    hints = typing.get_type_hints(inspect.unwrap(fn))
    tensors, required, hyper = [], set(), {}
    for pname, p in inspect.signature(fn).parameters.items():
        if pname not in hints:
            raise TypeError(f"loss {name!r}: parameter {pname!r} has no type hint (tensor input or hyperparameter?)")
        if _is_input(hints[pname]):
            tensors.append(pname)
            if p.default is inspect.Parameter.empty:
                required.add(pname)
        elif p.kind == inspect.Parameter.KEYWORD_ONLY:
            hyper[pname] = (hints[pname], p.default)
        else:
            raise TypeError(f"loss {name!r}: hyperparameter {pname!r} must be keyword-only")
    return LossSignature(name, tuple(tensors), frozenset(required), hyper)


def objective_of_kind(name: str, kind: str | tuple[str, ...]) -> Callable:
    """The registered loss ``name`` for a recipe that trains losses of ``kind`` (or of any of several kinds); a
    one-line ConfigError for an unknown name (listing the registered ones) or a loss of another kind (naming the
    command that trains it)."""
    try:
        fn = get_objective(name)
    except KeyError as err:
        raise ConfigError(err.args[0]) from None
    if fn.kind not in ((kind,) if isinstance(kind, str) else kind):
        raise ConfigError(f"objective {name!r} is a {fn.kind} loss; train it with `rlxf train {fn.recipe}` "
                          f"(see `rlxf list`)")
    return fn


def resolve_hyperparameters(fn: Callable, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyperparameter of ``fn``: the values in ``given`` (the user's ``loss.<name>=value``; each checked
    and converted against its type hint) and the loss's own default for the rest. A name the loss does not take
    is a one-line ConfigError listing what it takes."""
    sig = loss_signature(fn)
    for key, value in given.items():
        if key not in sig.hyperparameters:
            takes = ", ".join(sig.hyperparameters) or "none"
            close = difflib.get_close_matches(key, list(sig.hyperparameters), n=1)
            hint = f"; did you mean 'loss.{close[0]}'?" if close else ""
            raise ConfigError(f"objective {sig.name!r} takes no hyperparameter {key!r} (it takes: {takes}); "
                              f"remove loss.{key}={value} (if a preset sets it, loss={{...}} replaces the whole "
                              f"group){hint}")
    resolved = {}
    for key, (hint, default) in sig.hyperparameters.items():
        if key not in given:
            if default is inspect.Parameter.empty:
                raise ConfigError(f"objective {sig.name!r} needs loss.{key}=...")
            resolved[key] = default
        else:
            resolved[key] = coerce_value(given[key], hint, f"for 'loss.{key}' of objective {sig.name!r}")
        problem = _hyperparameter_problem(fn, key, resolved[key])
        if problem:
            raise ConfigError(f"bad value for 'loss.{key}' of objective {sig.name!r}: {problem}, "
                              f"got {resolved[key]!r}")
    return resolved


# Domains of hyperparameters that mean the same thing in every loss that takes them: (low, low inclusive).
# `beta` scales a preference loss's implicit reward (0 would make every loss constant) but weighs the online
# losses' KL term, where 0 means "no KL".
_LOWER_BOUNDS: dict[str, tuple[float, bool]] = {
    "clip_eps": (0.0, False), "clip_eps_high": (0.0, False), "dual_clip": (1.0, False), "tau": (0.0, False),
    "epsilon": (0.0, True), "desirable_weight": (0.0, True), "undesirable_weight": (0.0, True), "k": (1.0, True),
    "bc_weight": (0.0, True), "gamma": (0.0, True), "lambda_": (0.0, True), "lam": (0.0, True),
    "tis_cap": (0.0, False), "eta": (0.0, False), "weight_cap": (0.0, False),
}


def _hyperparameter_problem(fn: Callable, key: str, value: Any) -> str | None:
    """Why ``value`` cannot be ``fn``'s hyperparameter ``key`` (non-finite, or outside its domain), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return "must be a finite number"
    if key == "beta":
        online = getattr(fn, "kind", None) == "policy_gradient"
        return None if (value >= 0 if online else value > 0) else f"must be {'>=' if online else '>'} 0"
    if key == "alpha" and getattr(fn, "kind", None) == "online_preference" and not value >= 0:
        return "must be >= 0 (the weight of the loss's exploration or value term)"
    if key == "epsilon" and not value < 0.5:
        return "must be < 0.5 (the probability that a pair's label is flipped)"
    low = _LOWER_BOUNDS.get(key)
    if low is not None and not (value >= low[0] if low[1] else value > low[0]):
        return f"must be {'>=' if low[1] else '>'} {low[0]:g}"
    return None


def call_loss(fn: Callable, tensors: Mapping[str, Tensor | None], hyperparameters: Mapping[str, Any]) -> LossOutput:
    """``fn(**tensors, **hyperparameters)`` after checking that ``tensors`` names only inputs ``fn`` declares and
    every input it requires (an optional input may be left out). A mismatch is a TypeError naming the loss."""
    sig = loss_signature(fn)
    unknown = [k for k in tensors if k not in sig.tensors]
    missing = sorted(sig.required - set(tensors))
    if unknown or missing:
        raise TypeError(f"loss {sig.name!r} takes tensors {', '.join(sig.tensors)}; "
                        + (f"unknown: {', '.join(unknown)}" if unknown else "")
                        + ("; " if unknown and missing else "") + (f"missing: {', '.join(missing)}" if missing else ""))
    return fn(**tensors, **hyperparameters)
