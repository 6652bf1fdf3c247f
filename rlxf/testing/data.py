"""Readers of the labelled datasets in ``shared/data`` that several tests and measurements share."""

from __future__ import annotations

import json
from pathlib import Path

GSM8K_SOLUTION_KEYS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def gsm8k_labelled_solutions(path: Path) -> tuple[list[dict], list[str], list[str], list[bool]]:
    """OpenAI's labelled GPT-3 GSM8K samples (``example_model_solutions.jsonl``), flattened to one item per
    (problem, model): the rows, and per item the gold (the ground truth's final "A: n"), the model's reply and
    its ``is_correct`` label, items ordered problem by problem, ``GSM8K_SOLUTION_KEYS`` within a problem."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    golds, replies, labels = [], [], []
    for row in rows:
        gold = row["ground_truth"].rsplit("A:", 1)[1].strip()
        for key in GSM8K_SOLUTION_KEYS:
            golds.append(gold)
            replies.append(row[key]["solution"])
            labels.append(row[key]["is_correct"])
    return rows, golds, replies, labels
