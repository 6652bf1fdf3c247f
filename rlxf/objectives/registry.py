"""Objective names -> loss functions, for configs and the CLI only (code calls the functions directly).

Each loss is registered with a `kind`, the shape of data it consumes, so that a recipe can refuse a loss it
cannot feed with a clear message:

- ``policy_gradient``: per-token `(B, T)` log-probs, advantages and a mask (online RL; reduced with
  `rlxf.ops.aggregate`, mode `fn.default_aggregation`);
- ``preference``: paired sequence-level log-probs `policy_chosen_logps`, ... `(B,)`; returns a per-pair loss `(B,)`;
- ``unpaired``: one completion per row with a desirable/undesirable label (KTO-style); per-row loss `(B,)`;
- ``reward_model``: rewards of chosen/rejected `(B,)` (or quantiles), for reward-model training;
- ``supervised``: per-token `(B, T)` log-probs of demonstrations and a mask (SFT); per-token loss `(B, T)`;
- ``online_preference``: pairs as for ``preference`` plus tensors only an online loop has (log-probs of fresh
  samples from the policy or the reference, or under the previous iterate pi_t); per-pair loss `(B,)`;
- ``self_play``: one sampled completion per row, sequence log-probs `(B,)` and its estimated win rate against
  an opponent policy (SPPO, Nash-MD); per-row loss `(B,)`.
"""

from __future__ import annotations

from collections.abc import Callable

from rlxf.ops import AGGREGATION_MODES

__all__ = ["OBJECTIVES", "OBJECTIVE_KINDS", "register", "get_objective", "list_objectives"]

OBJECTIVE_KINDS = ("policy_gradient", "preference", "unpaired", "reward_model", "supervised", "online_preference",
                   "self_play")
# The command that trains a loss of each kind, unless the loss names its own (``register(recipe=...)``).
DEFAULT_RECIPES = {"policy_gradient": "grpo", "preference": "dpo", "unpaired": "kto", "reward_model": "reward-model",
                   "supervised": "sft", "online_preference": "online-dpo", "self_play": "sppo"}

OBJECTIVES: dict[str, Callable] = {}


def register(
    name: str, *, kind: str = "policy_gradient", default_aggregation: str | None = "token_mean",
    recipe: str | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator adding a loss under `name`. It sets `fn.kind` (one of `OBJECTIVE_KINDS`), `fn.recipe` (the
    `rlxf train <recipe>` that trains it: `recipe`, else the kind's default in `DEFAULT_RECIPES`) and, for
    ``policy_gradient`` losses, `fn.default_aggregation`: the `ops.aggregate` mode that matches the paper's
    normalisation (a recipe uses it unless its config says otherwise). Sequence-level kinds reduce by a
    plain mean over rows and carry ``default_aggregation = None``."""
    if kind not in OBJECTIVE_KINDS:
        raise ValueError(f"unknown objective kind {kind!r}; expected one of {OBJECTIVE_KINDS}")
    if kind != "policy_gradient":
        default_aggregation = None
    elif default_aggregation not in AGGREGATION_MODES:
        raise ValueError(f"unknown aggregation mode {default_aggregation!r}; expected {AGGREGATION_MODES}")

    def decorator(fn: Callable) -> Callable:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is already registered (by {OBJECTIVES[name].__qualname__})")
        fn.kind = kind
        fn.recipe = recipe or DEFAULT_RECIPES[kind]
        fn.default_aggregation = default_aggregation
        fn.registered_name = name
        OBJECTIVES[name] = fn
        return fn

    return decorator


def get_objective(name: str, *, kind: str | None = None) -> Callable:
    """The loss registered as `name`; KeyError naming the registered objectives (of `kind`, if given)
    otherwise, or when the loss is of another kind."""
    fn = OBJECTIVES.get(name)
    if fn is None or (kind is not None and fn.kind != kind):
        what = f"{kind} objective" if kind else "objective"
        raise KeyError(f"unknown {what} {name!r}; registered: {', '.join(list_objectives(kind=kind))}")
    return fn


def list_objectives(*, kind: str | None = None) -> list[str]:
    """Registered objective names (of `kind`, if given), sorted."""
    return sorted(name for name, fn in OBJECTIVES.items() if kind is None or fn.kind == kind)
