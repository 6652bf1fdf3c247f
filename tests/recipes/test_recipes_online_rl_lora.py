"""LoRA (peft) on the policy of the online RL recipe (`lora_r=` in `rlxf train grpo` / `ppo`).

The tiny model starts from random weights whose logits span a narrow range; adapters on its projections cannot
widen it (its final norm and tied embedding stay frozen), so the learning test starts where a LoRA user starts:
from a model already trained a little (50 full fine-tuning steps of the copy task, about 10% held-out).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlxf.recipes.online_rl import Config, run
from rlxf.runs import latest_checkpoint, resume_config

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _config(copy_task, out: Path, name: str, **overrides) -> Config:
    train, held_out = copy_task
    base = dict(model="tiny", prompts=str(train), eval_prompts=str(held_out), feedback="arithmetic", max_new_tokens=2,
                eval_max_new_tokens=2, temperature=1.0, precision="fp32", prompts_per_step=8, samples_per_prompt=32,
                lr=1e-3, eval_every=0, save_every=0, ref_kl_every=10, time_budget_s=0.0, output_dir=str(out),
                run_name=name, progress=False, seed=1, loss={"beta": 0.0}, threads=1, plots=False)
    return Config(**{**base, **overrides})


@pytest.fixture(scope="module")
def started(copy_task, tmp_path_factory) -> Path:
    """The tiny model after 50 full fine-tuning steps of the copy task (its final/ directory)."""
    out = tmp_path_factory.mktemp("started")
    run(_config(copy_task, out, "pre", max_steps=50))
    return out / "pre" / "final"


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lora_learns_and_writes_a_merged_model_and_adapter_checkpoints(copy_task, started, tmp_path):
    summary = run(_config(copy_task, tmp_path, "lora", model=str(started), lora_r=8, lora_alpha=16,
                          lora_targets=TARGETS, lr=1e-2, max_steps=100, eval_every=50, save_every=50))
    before, after = summary["accuracy_before"]["accuracy"], summary["accuracy_after"]["accuracy"]
    assert before <= 0.3 and after >= 0.8, summary["evals"]
    assert summary["generator"] == "TransformersGenerator"
    # the reference is the base with adapters off: KL to it is measured and grows from 0
    kls = [r["kl"] for r in _metrics(tmp_path / "lora") if "kl" in r]
    assert len(kls) == 10 and kls[-1] > kls[0] >= 0
    # checkpoints hold the adapters only; final/ is a plain model with them merged, and final/adapter has them
    checkpoint = latest_checkpoint(tmp_path / "lora")
    saved = load_file(str(checkpoint / "model" / "model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    final = tmp_path / "lora" / "final"
    assert (final / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(final))
    assert not any("lora" in k for k in merged.state_dict())
    start = AutoModelForCausalLM.from_pretrained(str(started))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[name], start.state_dict()[name])  # the adapters were merged in
    name = "model.embed_tokens.weight"
    assert torch.equal(merged.state_dict()[name], start.state_dict()[name])  # what LoRA does not touch stays


def test_a_resumed_lora_run_equals_the_uninterrupted_one(copy_task, started, tmp_path):
    common = dict(model=str(started), lora_r=4, lora_alpha=8, lora_targets=TARGETS, lr=1e-2, save_every=3,
                  max_steps=6, ref_kl_every=2)
    run(_config(copy_task, tmp_path, "straight", **common))
    run(_config(copy_task, tmp_path, "split", **{**common, "max_steps": 3}))
    run(resume_config(Config, tmp_path / "split", max_steps=6))
    a, b = _metrics(tmp_path / "straight"), _metrics(tmp_path / "split")
    keys = ("reward_mean", "loss", "grad_norm", "kl", "entropy")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [[r.get(k) for k in keys] for r in a] == [[r.get(k) for k in keys] for r in b]
    wa = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
