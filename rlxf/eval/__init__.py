"""Evaluation: what the papers measure. ``EVALS`` maps ``rlxf eval <name>`` to its module."""
from __future__ import annotations

from rlxf.recipes import RecipeEntry

EVALS: dict[str, RecipeEntry] = {
    "arithmetic": RecipeEntry(
        "rlxf.eval.accuracy",
        None,
        "Greedy (and pass@k) accuracy of a policy on held-out 'What is a+b?' problems with a 95% interval.",
    ),
    "reward-model": RecipeEntry(
        "rlxf.eval.reward_model",
        None,
        "Accuracy, calibration and length bias of a reward model / judge / DPO policy on HH held-out and LLMBar.",
    ),
    "preference": RecipeEntry(
        "rlxf.eval.preference",
        None,
        "Held-out preference accuracy, margin, ranking accuracy and log-probs of a `rlxf train dpo` run (run=DIR).",
    ),
}
