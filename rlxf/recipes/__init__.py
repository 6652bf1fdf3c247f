"""Training loops, one per loop shape, each configured by one typed dataclass.

``RECIPES`` maps the names used on the command line (``rlxf train <name>``) to the module that holds the
loop and the preset that specialises it. Modules are imported lazily by the CLI so that ``rlxf list`` and
``import rlxf`` stay light.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecipeEntry:
    """Where a recipe lives: ``module`` defines ``Config`` and ``run(config) -> dict``."""

    module: str
    preset: str | None
    summary: str


RECIPES: dict[str, RecipeEntry] = {
    "grpo": RecipeEntry(
        "rlxf.recipes.online_rl",
        "grpo.yaml",
        "Online RL with group z-score advantages (GRPO); default: SmolLM2 on 'What is a+b?' with a verifier.",
    ),
    "rloo": RecipeEntry(
        "rlxf.recipes.online_rl",
        "rloo.yaml",
        "Online RL with leave-one-out baselines (RLOO) on the same job as grpo.",
    ),
    "dpo": RecipeEntry(
        "rlxf.recipes.preference",
        "dpo.yaml",
        "Offline preference optimisation (DPO; objective=ipo/simpo/kto/...): SmolLM2 + LoRA on 512 HH pairs.",
    ),
    "reward-model": RecipeEntry(
        "rlxf.recipes.reward_model",
        "reward_model.yaml",
        "Reward model (Bradley-Terry/soft/quantile, ensembles): frozen MiniLM features + heads on HH harmless.",
    ),
}
