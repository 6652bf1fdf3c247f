"""Losses: pure functions of log-probs, advantages and masks returning `LossOutput(loss, metrics)`.

Imports only `rlxf.ops` and torch. `OBJECTIVES` / `get_objective(name)` map config names to the functions.
"""

from rlxf.objectives.base import LossOutput
from rlxf.objectives.cpl import cpl_loss
from rlxf.objectives.cringe import cringe_pairwise_loss
from rlxf.objectives.general_preference import inpo_loss, nash_md_loss, sppo_loss
from rlxf.objectives.group_robust import group_mean_losses, group_robust_dpo_loss, update_group_weights
from rlxf.objectives.kto import kto_loss
from rlxf.objectives.online_preference import hypo_loss, vpo_loss, xpo_loss
from rlxf.objectives.pairwise_pg import copg_loss, p3o_loss, rebel_loss
from rlxf.objectives.policy_gradient import grpo_loss, ppo_clip_loss, reinforce_loss, rloo_loss
from rlxf.objectives.preference import (
    FDPO_DIVERGENCES,
    cdpo_loss,
    discopop_loss,
    dpo_loss,
    fdpo_alpha_loss,
    fdpo_forward_kl_loss,
    fdpo_js_loss,
    fdpo_loss,
    fdpo_reverse_kl_loss,
    hdpo_loss,
    hinge_loss,
    ipo_loss,
    mmpo_loss,
    orpo_loss,
    robust_dpo_loss,
    rpo_loss,
    simpo_loss,
)
from rlxf.objectives.registry import OBJECTIVES, get_objective, list_objectives, register
from rlxf.objectives.reward_model import (
    bradley_terry_loss,
    pinball_loss,
    quantile_bt_loss,
    reward_centering_penalty,
    soft_bt_loss,
)
from rlxf.objectives.sequence_ratio import cispo_loss, gspo_loss
from rlxf.objectives.supervised import sft_loss
from rlxf.objectives.value import clipped_value_loss

__all__ = [
    "bradley_terry_loss", "cdpo_loss", "cpl_loss", "cringe_pairwise_loss", "discopop_loss", "dpo_loss",
    "fdpo_alpha_loss", "FDPO_DIVERGENCES", "fdpo_forward_kl_loss", "fdpo_js_loss", "fdpo_loss",
    "fdpo_reverse_kl_loss", "get_objective", "group_mean_losses", "group_robust_dpo_loss", "grpo_loss", "hdpo_loss",
    "hinge_loss", "inpo_loss", "ipo_loss", "kto_loss", "list_objectives", "LossOutput", "mmpo_loss", "nash_md_loss",
    "OBJECTIVES", "orpo_loss", "pinball_loss", "ppo_clip_loss", "quantile_bt_loss", "register", "reinforce_loss",
    "reward_centering_penalty", "rloo_loss", "robust_dpo_loss", "rpo_loss", "sft_loss", "simpo_loss", "soft_bt_loss",
    "sppo_loss", "update_group_weights",
    "hypo_loss", "vpo_loss", "xpo_loss", "cispo_loss", "clipped_value_loss", "copg_loss", "gspo_loss", "p3o_loss",
    "rebel_loss",
]
