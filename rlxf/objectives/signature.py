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


def objective_of_kind(name: str, kind: str) -> Callable:
    """The registered loss ``name`` for a recipe that trains losses of ``kind``; a one-line ConfigError for an
    unknown name (listing the registered ones) or a loss of another kind (naming the command that trains it)."""
    try:
        fn = get_objective(name)
    except KeyError as err:
        raise ConfigError(err.args[0]) from None
    if fn.kind != kind:
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
    return resolved


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
