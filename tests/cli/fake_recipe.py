"""A stand-in recipe for the CLI tests: one field of every supported config type, and a ``run`` that
writes the resolved config to ``output_dir``. Imported as the top-level module ``fake_recipe``
(``PYTHONPATH=tests/cli``, registered through ``RLXF_EXTRA_RECIPES=fake=fake_recipe:PRESET``), so the
tests exercise the CLI without the real recipes and without torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlxf.config import config_to_yaml, option


@dataclass
class Config:
    """Fake recipe config."""

    lr: float = option(1e-6, "Peak learning rate.")
    steps: int = option(10, "Number of optimizer steps.")
    use_kl: bool = option(True, "Add a KL penalty to the reference model.")
    run_name: str = option("fake", "Name of the run directory.")
    time_budget_s: float | None = option(None, "Stop after this many seconds (null: no limit).")
    objective: Literal["grpo", "rloo"] = option("grpo", "Policy loss.")
    feedback: str = option("arithmetic", "Feedback source.", choices=["arithmetic", "numeric"])
    group_sizes: list[int] = option([4, 8], "Samples per prompt, one entry per stage.")
    tags: list[str] = option([], "Free-form labels stored with the run.")
    loss: dict[str, Any] = option({}, "Loss hyperparameters, loss.<name>=value (e.g. loss.beta=0.1).")
    output_dir: str = option("runs/fake", "Where the resolved config is written.")
    fail: Literal["none", "missing_file", "interrupt", "data"] = option(
        "none", "Make run() raise an error of this kind (to test the CLI's error handling)."
    )


def run(config: Config) -> dict:
    """Write ``config.yaml`` into ``config.output_dir`` and return a small result dict."""
    if config.fail == "missing_file":
        open(Path(config.output_dir) / "no-such-file.jsonl")  # noqa: SIM115 - raises FileNotFoundError
    if config.fail == "interrupt":
        raise KeyboardInterrupt
    if config.fail == "data":
        try:
            from rlxf.data import DataError
        except ImportError as e:  # rlxf.data not written yet: the test skips on this marker
            print(json.dumps({"skip": f"rlxf.data unavailable: {e}"}))
            return {"skipped": True}
        raise DataError("prompts.jsonl:3: missing field 'prompt'")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config_to_yaml(config, recipe="fake"), encoding="utf-8")
    result = {"output_dir": str(out), "steps": config.steps}
    print(json.dumps(result))  # recipes print their own summary; the CLI does not echo the returned dict
    return result
