"""``rlxf eval preference``: held-out preference accuracy of a trained offline run, or of any policy against a
reference on a preference file. The metrics are `rlxf.eval.preference`'s; this command knows how the offline
recipes build a run (its split, its reference), which is why it lives with them."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from rlxf.config import config_from_yaml, option
from rlxf.eval.preference import evaluate_models, format_preference_eval
from rlxf.recipes import group_robust_dpo, kto, preference
from rlxf.recipes.offline import OfflineConfig, OfflineTrainer
from rlxf.runs import latest_checkpoint

# The offline recipes by the name their runs record in config.yaml (`recipe:`).
RUN_KINDS = {
    "dpo": (preference.Config, preference.PairedTrainer),
    "kto": (kto.Config, kto.UnpairedTrainer),
    "group-robust-dpo": (group_robust_dpo.Config, group_robust_dpo.GroupRobustTrainer),
}


def evaluate_run(run_dir: str | Path, config_cls: type[OfflineConfig], trainer_cls: type[OfflineTrainer], *,
                 batch_size: int | None = None) -> dict[str, Any]:
    """Held-out preference metrics of a run's latest checkpoint (the final weights of a finished run) on its
    own split, against its reference (from the cache, or recomputed from ``config.model``)."""
    config = config_from_yaml(config_cls, Path(run_dir) / "config.yaml")
    config = replace(config, progress=False, eval_batch_size=batch_size or config.eval_batch_size)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint")
    trainer = trainer_cls(config)
    if not trainer.data.eval:
        raise ValueError(f"{run_dir}: the run has no held-out pairs")
    trainer.restore(checkpoint)
    trainer.evals = []
    report = trainer.evaluate()
    return {**report, "run": str(run_dir), "checkpoint": str(checkpoint)}


@dataclass
class Config:
    """``rlxf eval preference``: held-out preference accuracy of a policy against its reference."""

    run: str | None = option(
        None, "A `rlxf train dpo|kto|group-robust-dpo` run directory: evaluates its latest checkpoint (the final "
        "weights of a finished run) on its own held-out split against its reference; the fields below are then "
        "read from the run's config.",
    )
    model: str | None = option(None, "Policy to evaluate (without run=): 'smollm2', 'tiny' or a directory.")
    reference: str = option("smollm2", "Reference policy (without run=).")
    data: str = option("hh_harmless_512", "Preference JSONL (without run=); every row is evaluated.")
    max_prompt_tokens: int = option(256, "Prompt truncation (from the left), without run=.", ge=1)
    max_completion_tokens: int = option(128, "Completion truncation (from the right), without run=.", ge=1)
    beta: float = option(0.1, "beta of the implicit reward (without run=; with run= the run's loss's beta).", gt=0)
    batch_size: int = option(16, "Pairs per forward.", ge=1)
    precision: str = option("fp32", "fp32 or bf16.", choices=("fp32", "bf16"))
    output: str | None = option(None, "Write the report as JSON here.")


def run(config: Config) -> dict[str, Any]:
    if config.run:
        recipe = (yaml.safe_load((Path(config.run) / "config.yaml").read_text()) or {}).get("recipe")
        if recipe not in RUN_KINDS:
            raise ValueError(f"{config.run}: not an offline preference run (its config.yaml says recipe: {recipe})")
        report = evaluate_run(config.run, *RUN_KINDS[recipe], batch_size=config.batch_size)
    elif config.model:
        report = evaluate_models(config.model, config.reference, config.data, beta=config.beta,
                                 max_prompt_tokens=config.max_prompt_tokens,
                                 max_completion_tokens=config.max_completion_tokens, batch_size=config.batch_size,
                                 precision=config.precision)
    else:
        raise ValueError("give run=<run directory> or model=<policy to evaluate>")
    print(format_preference_eval(report))
    if config.output:
        with open(config.output, "w") as f:
            json.dump(report, f, indent=1)
    return report
