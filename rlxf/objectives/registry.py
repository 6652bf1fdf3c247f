"""Objective names -> loss functions, for configs and the CLI only (code calls the functions directly)."""

from __future__ import annotations

from collections.abc import Callable

from rlxf.ops import AGGREGATION_MODES

__all__ = ["OBJECTIVES", "register", "get_objective", "list_objectives"]

OBJECTIVES: dict[str, Callable] = {}


def register(name: str, *, default_aggregation: str = "token_mean") -> Callable[[Callable], Callable]:
    """Decorator adding a loss under `name`; it also sets `fn.default_aggregation`, the `ops.aggregate`
    mode that matches the paper's normalisation (a recipe uses it unless its config says otherwise)."""
    if default_aggregation not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {default_aggregation!r}; expected {AGGREGATION_MODES}")

    def decorator(fn: Callable) -> Callable:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered (by {OBJECTIVES[name].__qualname__})")
        fn.default_aggregation = default_aggregation
        OBJECTIVES[name] = fn
        return fn

    return decorator


def get_objective(name: str) -> Callable:
    """The loss registered as `name`; KeyError naming the registered objectives otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; registered: {', '.join(list_objectives())}") from None


def list_objectives() -> list[str]:
    """Registered objective names, sorted."""
    return sorted(OBJECTIVES)
