"""Evaluation: what the papers measure. ``EVALS`` maps ``rlxf eval <name>`` to the module of its command."""
from __future__ import annotations

from rlxf.config import Entry

EVALS: dict[str, Entry] = {
    "arithmetic": Entry(
        "rlxf.eval.accuracy",
        None,
        "Greedy (and pass@k) accuracy of a policy on held-out 'What is a+b?' problems with a 95% interval.",
    ),
    "reward-model": Entry(
        "rlxf.eval.reward_model",
        None,
        "Accuracy, calibration and length bias of a reward model / judge / DPO policy on HH held-out and LLMBar.",
    ),
    "preference": Entry(
        # The command reads offline runs, so it lives with the offline recipes; the metrics are this package's.
        "rlxf.recipes.preference_eval",
        None,
        "Held-out preference accuracy, margin, ranking accuracy and log-probs of a `rlxf train dpo` run (run=DIR).",
    ),
    "overoptimization": Entry(
        # It trains proxies and runs RL through the recipes, so it lives with them; the curves' maths, fits and
        # plot are this package's (rlxf.eval.overoptimization).
        "rlxf.recipes.overoptimization",
        None,
        "Reward over-optimisation (Gao et al. 2023; Coste et al. 2024): gold vs proxy reward of best-of-n and RL "
        "against sqrt(KL), single and ensemble proxies, with the fitted scaling forms.",
    ),
}
