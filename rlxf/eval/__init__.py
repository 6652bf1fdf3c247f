"""Evaluation: what the papers measure. ``EVALS`` maps ``rlxf eval <name>`` to its module."""
from __future__ import annotations

from rlxf.recipes import RecipeEntry

EVALS: dict[str, RecipeEntry] = {
    "arithmetic": RecipeEntry(
        "rlxf.eval.accuracy",
        None,
        "Greedy (and pass@k) accuracy of a policy on held-out 'What is a+b?' problems with a 95% interval.",
    ),
}
