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
    "ppo": Entry(
        "rlxf.recipes.online_rl",
        "ppo.yaml",
        "Actor-critic PPO (InstructGPT-style): a learned critic, GAE on the KL-shaped token reward, whitened "
        "advantages, clipped surrogate and clipped value loss over several passes; same job as grpo.",
    ),
    "dpo": Entry(
        "rlxf.recipes.preference",
        "dpo.yaml",
        "Offline preference optimisation from pairs (DPO; objective=ipo/simpo/orpo/...): SmolLM2 + LoRA on 512 HH "
        "pairs.",
    ),
    "online-dpo": Entry(
        "rlxf.recipes.online_preference",
        "online_dpo.yaml",
        "Online DPO / OAIF (Guo et al. 2024): sample K per prompt, compare (judge, reward model, verifier), DPO on "
        "the best-vs-worst pair of fresh samples; objective=ipo/hinge/... for any pair loss.",
    ),
    "iterative-dpo": Entry(
        "rlxf.recipes.online_preference",
        "iterative_dpo.yaml",
        "Iterative DPO (Xiong et al. 2024; Dong et al. 2024): DPO on best-vs-worst pairs against the previous "
        "iterate pi_t, refreshed every round_steps.",
    ),
    "dno": Entry(
        "rlxf.recipes.online_preference",
        "dno.yaml",
        "Direct Nash Optimization (Rosset et al. 2024): large-margin pairs by estimated win rate, contrastive loss "
        "against pi_t, per round.",
    ),
    "xpo": Entry("rlxf.recipes.online_preference", "xpo.yaml",
                 "Exploratory Preference Optimization (Xie et al. 2024): online DPO plus an exploration term on "
                 "samples from the reference."),
    "vpo": Entry("rlxf.recipes.online_preference", "vpo.yaml",
                 "Value-Incentivized Preference Optimization (Cen et al. 2024): online DPO with an optimistic value "
                 "term."),
    "hypo": Entry("rlxf.recipes.online_preference", "hypo.yaml",
                  "HyPO (Song et al. 2024): DPO plus a reverse-KL penalty estimated on the policy's own samples."),
    "inpo": Entry("rlxf.recipes.online_preference", "inpo.yaml",
                  "Iterative Nash Policy Optimization (Zhang et al. 2024): the no-regret squared loss against pi_t "
                  "and pi_ref, per round."),
    "sppo": Entry("rlxf.recipes.online_preference", "sppo.yaml",
                  "Self-Play Preference Optimization (Wu et al. 2024): regress log pi/pi_t on each sample's estimated "
                  "win rate against pi_t, per round."),
    "nash-md": Entry("rlxf.recipes.online_preference", "nash_md.yaml",
                     "Nash-MD-PG (Munos et al. 2023): policy gradient on P(y beats y') against the opponent, with a "
                     "KL to the reference."),
    "self-rewarding": Entry(
        "rlxf.recipes.online_preference",
        "self_rewarding.yaml",
        "Self-Rewarding (Yuan et al. 2024): the policy judges its own samples (feedback=self_judge), DPO on "
        "length-controlled pairs against pi_t, per round.",
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
    "sft": Entry(
        "rlxf.recipes.sft",
        "sft.yaml",
        "Supervised fine-tuning: masked NLL on the assistant tokens of demonstrations (prompt/completion or chat "
        "messages); default: SmolLM2 on 512 GSM8K worked solutions.",
    ),
    "reward-model": Entry(
        "rlxf.recipes.reward_model",
        "reward_model.yaml",
        "Reward model (Bradley-Terry/soft/quantile, ensembles): frozen MiniLM features + heads on HH harmless.",
    ),
}
