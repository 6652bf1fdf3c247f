"""The supervised fine-tuning recipe (rlxf.recipes.sft, `rlxf train sft`) end to end on the tiny model.

Toy task: each prompt names a digit in one of eight templates ("Say 7", "7!", ...) and the demonstration replies
with its English word ("seven"). A (template, digit) pair is held out when digit % 4 == template % 4, so every
held-out prompt combines a template and a digit that were both trained on, never together. A randomly
initialised tiny llama predicts about 2% of the held-out reply tokens (teacher-forced argmax); after 150 steps it
must predict more than 90% of them (seeds 0, 1, 2 reach 95-100% by step 100).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TEMPLATES, write_jsonl
from safetensors.torch import load_file

from rlxf.cli import main
from rlxf.config import ConfigError
from rlxf.data import DataError, batch_for_step
from rlxf.models.packed import supports_packed_forward
from rlxf.recipes import sft
from rlxf.recipes.sft import Config, Trainer, run
from rlxf.runs import resume_config

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TIMING = ("seconds_step", "train_seconds", "tokens_per_s")


@pytest.fixture(scope="module")
def words(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("words")
    train, held_out = [], []
    for t, template in enumerate(TEMPLATES):
        for d in range(10):
            row = {"prompt": template.format(d=d), "completion": WORDS[d]}
            (held_out if d % 4 == t % 4 else train).append(row)
    assert (len(train), len(held_out)) == (60, 20)
    # one conversation with two assistant turns, so the multi-turn path trains too
    train.append({"messages": [{"role": "user", "content": "Say 3"}, {"role": "assistant", "content": "three"},
                               {"role": "user", "content": "Say 8"}, {"role": "assistant", "content": "eight"}]})
    return write_jsonl(tmp / "train.jsonl", train), write_jsonl(tmp / "eval.jsonl", held_out)


def config(words, tmp_path: Path, name: str = "run", **kw) -> Config:
    train, held_out = words
    base = dict(model="tiny", data=str(train), eval_data=str(held_out), batch_size=16, lr=3e-3, max_steps=10,
                eval_every=0, save_every=0, precision="fp32", output_dir=str(tmp_path / "runs"), run_name=name,
                progress=False, threads=1, plots=False, seed=0)
    return Config(**{**base, **kw})


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ learning


def test_tiny_model_learns_the_digit_words(words, tmp_path):
    summary = run(config(words, tmp_path, max_steps=150, eval_every=50, plots=True))
    before, after = summary["heldout_before"], summary["heldout_after"]
    assert before["sequences"] == after["sequences"] == 20
    assert before["accuracy"] < 0.1, summary["evals"]
    assert after["accuracy"] > 0.9, summary["evals"]
    assert after["nll"] < before["nll"] / 4
    assert summary["status"] == "complete" and summary["stop_reason"] == "max_steps" and summary["steps"] == 150
    assert [e["step"] for e in summary["evals"]] == [0, 50, 100, 150]

    run_dir = tmp_path / "runs" / "run"
    metrics = _metrics(run_dir)
    assert [m["step"] for m in metrics] == list(range(1, 151))
    for m in metrics:
        assert {"loss", "nll", "token_accuracy", "trained_tokens", "tokens", "tokens_per_s", "grad_norm", "lr",
                "padding_frac"} <= m.keys()
        assert m["padding_frac"] == 0.0 and m["tokens"] > m["trained_tokens"] > 0  # packed; prompts not trained
    assert metrics[-1]["token_accuracy"] > 0.9 > metrics[0]["token_accuracy"]
    assert [m["step"] for m in metrics if "heldout_token_accuracy" in m] == [50, 100, 150]
    assert {p.name for p in (run_dir / "plots").iterdir()} == {"loss.png", "accuracy.png"}
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    assert json.loads((run_dir / "summary.json").read_text())["heldout_after"]["accuracy"] == after["accuracy"]

    # final/ is a plain transformers model with the trained weights
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    checkpoint = load_file(str(run_dir / "checkpoints" / "step-000150" / "model" / "model.safetensors"))
    state = model.state_dict()
    for key, value in checkpoint.items():
        assert torch.equal(state[key], value), key


# ------------------------------------------------------------------------------------------ exactness


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _perturbed(words, tmp_path, **kw) -> Trainer:
    trainer = Trainer(config(words, tmp_path, **kw))
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    return trainer


def test_packed_batches_equal_padded_batches(words, tmp_path):
    """The packed micro-batch (one row, a segment per sequence) gives the padded loss, token accuracy and gradient:
    no sequence sees another's tokens and padding changes nothing."""
    results = {}
    for packed in (True, False):
        trainer = _perturbed(words, tmp_path, packed_forward=packed)
        assert supports_packed_forward(trainer.model)
        batch = batch_for_step(trainer.batches, 0, trainer.config.seed)
        metrics = trainer.accumulate(batch)
        results[packed] = metrics, _grads(trainer.model)
    (packed, packed_grads), (padded, padded_grads) = results[True], results[False]
    assert packed["padding_frac"] == 0.0 < padded["padding_frac"]
    assert packed["tokens"] == padded["tokens"] and packed["trained_tokens"] == padded["trained_tokens"]
    assert packed["loss"] == pytest.approx(padded["loss"], rel=1e-5)
    assert packed["token_accuracy"] == padded["token_accuracy"]
    assert packed_grads.keys() == padded_grads.keys() and packed_grads
    for name, g in packed_grads.items():
        torch.testing.assert_close(g, padded_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_checkpointing_changes_nothing(words, tmp_path):
    results = []
    for checkpointing in (False, True):
        trainer = _perturbed(words, tmp_path, gradient_checkpointing=checkpointing)
        results.append((trainer.accumulate(batch_for_step(trainer.batches, 0, 0)), _grads(trainer.model)))
    (plain, plain_grads), (ckpt, ckpt_grads) = results
    assert ckpt["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    for name, g in ckpt_grads.items():
        torch.testing.assert_close(g, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_micro_batches_accumulate_exactly_to_the_big_batch(words, tmp_path):
    trainer = _perturbed(words, tmp_path)
    batch = batch_for_step(trainer.batches, 0, trainer.config.seed)
    results = []
    for micro in (0, 5, 1):
        trainer.config.micro_batch_size = micro
        trainer.optimizer.zero_grad(set_to_none=True)
        results.append((trainer.accumulate(batch), _grads(trainer.model)))
    (big, big_grads), *rest = results
    for metrics, grads in rest:
        for key in ("loss", "nll", "token_accuracy"):
            assert metrics[key] == pytest.approx(big[key], rel=1e-5), key
        for name, g in grads.items():
            torch.testing.assert_close(g, big_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_resumed_run_equals_the_uninterrupted_one(words, tmp_path):
    whole = run(config(words, tmp_path, "whole", max_steps=6, save_every=3, eval_every=2, keep_checkpoints=0))
    run(config(words, tmp_path, "split", max_steps=3, save_every=3, eval_every=2))
    split_dir = tmp_path / "runs" / "split"
    resumed = run(resume_config(Config, split_dir, max_steps=6))
    assert resumed["steps"] == whole["steps"] == 6

    def strip(records):
        return [{k: v for k, v in r.items() if k not in TIMING} for r in records]

    assert strip(_metrics(split_dir)) == strip(_metrics(tmp_path / "runs" / "whole"))
    assert strip(resumed["evals"]) == strip(whole["evals"])
    a, b = (load_file(str(tmp_path / "runs" / n / "final" / "model.safetensors")) for n in ("whole", "split"))
    assert a.keys() == b.keys() and "model.embed_tokens.weight" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------ options


def test_lora_trains_only_the_adapters_and_final_is_merged(words, tmp_path):
    summary = run(config(words, tmp_path, max_steps=8, lora_r=4, lora_alpha=8, lr=1e-2))
    run_dir = tmp_path / "runs" / "run"
    metrics = _metrics(run_dir)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert metrics[0]["padding_frac"] > 0  # a peft model runs the padded path
    assert summary["heldout_after"]["nll"] < summary["heldout_before"]["nll"]
    assert (run_dir / "final" / "adapter" / "adapter_config.json").exists()
    saved = load_file(str(run_dir / "checkpoints" / "step-000008" / "model" / "model.safetensors"))
    assert saved and all("lora_" in k for k in saved)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert not any("lora" in k for k in model.state_dict())


def test_non_finite_steps_are_skipped_and_stop_the_run(words, tmp_path, monkeypatch):
    real = sft.labelled_token_logps

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        return out._replace(logps=out.logps * float("nan"))

    monkeypatch.setattr(sft, "labelled_token_logps", poisoned)
    summary = run(config(words, tmp_path, max_steps=10, max_nonfinite_steps=2))
    assert summary == {"status": "stopped", "step": 2, "nonfinite_steps": 2}
    run_dir = tmp_path / "runs" / "run"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "stopped"
    assert [m["skipped_nonfinite"] for m in _metrics(run_dir)] == [1, 1]
    assert (run_dir / "checkpoints" / "step-000002" / "trainer_state.json").exists()


def test_time_budget_stops_the_run(words, tmp_path):
    summary = run(config(words, tmp_path, max_steps=50, time_budget_s=1e-6))
    assert summary["steps"] == 1 and summary["stop_reason"] == "time_budget"


def test_bad_rows_are_reported_before_a_run_directory_exists(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "a"},
                                          {"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError) as err:
        run(config((bad, bad), tmp_path))
    assert [p.split(": ")[0] for p in err.value.problems] == [f"{bad}:2", f"{bad}:3"]
    assert not (tmp_path / "runs").exists()


def test_a_loss_of_another_kind_is_refused(words, tmp_path):
    with pytest.raises(ConfigError, match="train it with `rlxf train dpo`"):
        Trainer(config(words, tmp_path, objective="dpo"))
    with pytest.raises(ConfigError, match="takes no hyperparameter 'beta'"):
        Trainer(config(words, tmp_path, loss={"beta": 0.1}))


# ------------------------------------------------------------------------------------------ command line


def test_cli_parses_the_sft_preset_and_overrides(capsys):
    assert main(["train", "sft", "--dry-run", "model=tiny", "lr=1e-3", "lora_r=8", "max_tokens=128"]) == 0
    text = capsys.readouterr().out
    assert "recipe: sft" in text and "lr: 0.001" in text and "lora_r: 8" in text and "max_tokens: 128" in text
    assert "data: gsm8k_train_512" in text and "eval_size: 32" in text  # from rlxf/presets/sft.yaml
    assert main(["train", "sft", "--help"]) == 0
    assert "max_tokens" in capsys.readouterr().out
    assert main(["train", "sft", "max_token=3"]) == 2
    assert "max_token" in capsys.readouterr().err


def test_cli_trains_the_tiny_model(words, tmp_path):
    train, held_out = words
    code = main(["train", "sft", "model=tiny", f"data={train}", f"eval_data={held_out}", "max_steps=2",
                 "batch_size=4", "precision=fp32", f"output_dir={tmp_path}", "run_name=cli", "progress=false",
                 "plots=false"])
    assert code == 0
    run_dir = tmp_path / "cli"
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    assert len(_metrics(run_dir)) == 2 and (run_dir / "final" / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------ slow: SmolLM2


@pytest.mark.slow
def test_smollm2_on_the_vendored_gsm8k_demonstrations(tmp_path):
    """The default model and data (full fine-tuning, as the preset): a few steps lower the held-out NLL."""
    summary = run(Config(data="gsm8k_train_512", eval_size=8, batch_size=4, max_tokens=256, max_steps=6, lr=2e-5,
                         eval_every=0, save_every=0, output_dir=str(tmp_path), run_name="smol", progress=False,
                         plots=True))
    before, after = summary["heldout_before"], summary["heldout_after"]
    assert after["nll"] < before["nll"], summary["evals"]
    metrics = _metrics(tmp_path / "smol")
    assert metrics[-1]["loss"] < metrics[0]["loss"] and metrics[0]["padding_frac"] == 0.0  # packed
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "smol" / "final") is not None
