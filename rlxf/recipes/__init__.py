"""Training loops, one per loop shape, each configured by one typed dataclass.

``RECIPES`` maps the names used on the command line (``rlxf train <name>``) to the module that holds the
loop and the preset that specialises it. Modules are imported by the CLI only when named, so that ``rlxf list``
and ``import rlxf`` stay light.
"""
from __future__ import annotations

from rlxf.config import Entry

RECIPES: dict[str, Entry] = {
    "grpo": Entry(
        "rlxf.recipes.online_rl",
        "grpo.yaml",
        "Online RL, GRPO's clipped objective with group z-score advantages and token_mean aggregation (DAPO's, "
        "TRL's default); default: SmolLM2 on 'What is a+b?' with a verifier.",
    ),
    "rloo": Entry(
        "rlxf.recipes.online_rl",
        "rloo.yaml",
        "Online RL with leave-one-out baselines (RLOO) on the same job as grpo.",
    ),
    "dpo": Entry(
        "rlxf.recipes.preference",
        "dpo.yaml",
        "Offline preference optimisation from pairs (DPO; objective=ipo/simpo/orpo/...): SmolLM2 + LoRA on 512 HH "
        "pairs.",
    ),
    "kto": Entry(
        "rlxf.recipes.kto",
        None,
        "Offline unpaired preference optimisation (KTO) from desirable/undesirable completions (or pairs, split).",
    ),
    "group-robust-dpo": Entry(
        "rlxf.recipes.group_robust_dpo",
        None,
        "Group-robust DPO: pairs with a 'group' field, an adversary reweighting the worst groups.",
    ),
    "reward-model": Entry(
        "rlxf.recipes.reward_model",
        "reward_model.yaml",
        "Reward model (Bradley-Terry/soft/quantile, ensembles): frozen MiniLM features + heads on HH harmless.",
    ),
}
