"""Online RL for language models: prompts -> group sampling -> feedback -> advantages -> loss -> step.

One loop serves GRPO, RLOO, Dr.GRPO-style and plain REINFORCE/PPO-clip runs: the objective, the advantage
estimator and the aggregation are named in the config and looked up in their registries; nothing here
re-implements their maths. The default (``rlxf train grpo``) is the main job: SmolLM2-135M-Instruct learns
"What is a+b?" from a verifier on two CPU cores within a 20-minute training budget.

Per step, as stages an executor drives (`rlxf.distributed.local` in this process)::

    rows = next P prompts (in order; a JSONL prompt set is reshuffled each epoch with a seeded order)
    rollout = sample(rows)                           # generator: token ids + sampler log-probs, G per prompt
    scores = score(rows, rollout)                    # feedback; non-finite values recorded, not trained on
    A = advantages(scores, rollout)                  # e.g. group z-score
    train_on(rollout, A):                            # ppo_epochs passes, each over mini-batches of groups:
        loss = aggregate(objective(policy_logps, old_logps, A, mask, ...), mask, mode)   # fused, chunked
        clip grad norm, skip the update if anything is non-finite, optimizer step
    publish(step)                                    # the new weights to the generator

Exact shortcuts (each keeps the gradient identical to the plain computation):

* groups whose advantages are all zero contribute exactly zero gradient when the loss has no KL term, so
  they are left out of the training forward (``skip_zero_advantage``) while the loss keeps its mini-batch's
  whole denominator;
* each prompt is run once per group and its KV cache shared by the G completions
  (``rlxf.models.forward.completion_logprobs``);
* with one update per batch (``ppo_epochs=1`` and one mini-batch) the old policy is the current one, so
  ``old_logps`` is the detached current log-prob and no extra forward is needed. With more updates the old
  log-probs are computed once, without gradient, before the first update;
* the generator samples with the training module itself, so publishing the weights copies nothing.
"""
from __future__ import annotations

import functools
import math
import random
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rlxf import runs
from rlxf.config import ConfigError, config_to_yaml, option
from rlxf.data import DataError, arithmetic_rows, encode_prompts, load_prompts, rows_for_step
from rlxf.distributed import LocalExecutor, OnlineStages, StepResult
from rlxf.eval.accuracy import evaluate_accuracy, format_accuracy
from rlxf.eval.plots import plot_run
from rlxf.feedback import finite_mask, make_feedback_from_spec
from rlxf.models import load_policy, save_policy
from rlxf.models.layout import use_kn_layout
from rlxf.models.precision import bf16_is_faster
from rlxf.ops import ADVANTAGE_ESTIMATORS
from rlxf.recipes.learner import Learner, train_on
from rlxf.recipes.stages import group_advantages, sample, score
from rlxf.rollout import TransformersGenerator


@dataclass
class Config(runs.ResumableRunOptions, runs.OptimizerOptions):
    """Online RL with a verifier, reward model or judge (``rlxf train grpo`` / ``rlxf train rloo``)."""

    # what to train
    model: str = option("smollm2", "Policy: 'smollm2' (embedded default), 'tiny' (test model) or a directory.")
    prompts: str = option(
        "arithmetic",
        "'arithmetic' ('What is a+b?', a,b in 0..99, drawn with train_seed) or a JSONL file of prompt rows.",
    )
    eval_prompts: str | None = option(
        None, "JSONL file of held-out rows; default for prompts=arithmetic: eval_size problems from eval_seed."
    )
    feedback: str = option(
        "arithmetic", "Feedback: name, name:arg or name:key=value,... (e.g. math:answer_key=ground_truth; `rlxf list`)."
    )
    train_seed: int = option(1, "Seed of the arithmetic training pool (the anchor uses 1).")
    eval_seed: int = option(12345, "Seed of the arithmetic held-out set (the anchor uses 12345).")
    eval_size: int = option(200, "Held-out problems for accuracy (arithmetic).")
    # the algorithm
    objective: str = option("grpo", "Loss by name: grpo, rloo, ppo_clip, reinforce (see `rlxf list`).")
    loss: dict[str, Any] = option(
        {}, "Loss hyperparameters, loss.<name>=value (e.g. loss.beta=0.04 loss.clip_eps=0.2): keyword arguments of "
            "the objective's function, checked against it; unset ones take the function's defaults (config.yaml "
            "records all). A `beta` > 0 is a KL(pi || ref) term and loads the reference.")
    advantage: str = option("group_zscore", "Advantage estimator: group_zscore, group_center, leave_one_out.")
    aggregation: str | None = option(
        None, "ops.aggregate mode of the loss; null = the objective's own default_aggregation (`rlxf list` shows "
              "it; the grpo preset sets token_mean, the token-level normalisation of DAPO and of TRL's default).")
    ppo_epochs: int = option(
        1, "Passes over each sampled batch, each in shuffled mini-batches of mini_batch_groups groups with one "
           "optimizer update per mini-batch; old log-probs are the policy's before the first update. 1 = on-policy.")
    mini_batch_groups: int = option(0, "Prompt groups per optimizer update (0 = all: one update per pass).")
    skip_zero_advantage: bool = option(
        True, "Leave groups with all-zero advantages out of the training forward (exact when the loss has no KL)."
    )
    # sampling
    prompts_per_step: int = option(8, "Distinct prompts per optimizer step.")
    samples_per_prompt: int = option(4, "Completions sampled per prompt (the group size G).")
    max_new_tokens: int = option(32, "Longest completion during training.")
    temperature: float = option(1.0, "Sampling temperature during training.")
    # optimisation
    micro_batch_groups: int = option(0, "Prompt groups per forward/backward (0 = all at once); exact accumulation.")
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto", "Training forward/backward: bf16 autocast or fp32; auto = bf16 where it is faster (CUDA, AMX CPUs)."
    )
    generation_precision: Literal["auto", "bf16", "fp32"] = option("fp32", "Sampling forward precision.")
    weight_layout: Literal["auto", "kn", "default"] = option(
        "auto", "CPU linear-weight storage; kn (transposed) speeds up small-batch decoding. auto = kn on CPU."
    )
    # budget and evaluation
    max_steps: int = option(1000, "Stop after this many optimizer steps.")
    time_budget_s: float = option(
        1200.0, "Stop at the first step end after this much training time (evaluation excluded). 0 = none."
    )
    eval_every: int = option(10, "Held-out greedy evaluation every N steps (0 = only before and after).")
    eval_max_new_tokens: int = option(48, "Longest reply in held-out evaluation.")
    eval_batch_size: int = option(100, "Prompts per evaluation batch.")
    ref_kl_every: int = option(10, "Without a KL term in the loss, measure KL to the reference every N steps "
                                   "(0 = never).")


def _load_rows(config: Config) -> tuple[list[dict], list[dict]]:
    """Training and held-out rows, validated before anything is created on disk."""
    if config.prompts == "arithmetic":
        train = arithmetic_rows(config.prompts_per_step * config.max_steps, seed=config.train_seed)
    else:
        train = load_prompts(config.prompts)
    if config.eval_prompts:
        held_out = load_prompts(config.eval_prompts)
    elif config.prompts == "arithmetic":
        held_out = arithmetic_rows(config.eval_size, seed=config.eval_seed)
    else:
        held_out = []
    if len(train) < config.prompts_per_step:
        raise DataError(
            f"{config.prompts}: {len(train)} prompts, fewer than prompts_per_step={config.prompts_per_step}"
        )
    return train, held_out


class Trainer:
    """State of one run: the learner, the generator, the feedback and the data; ``run()`` below is the loop."""

    def __init__(self, config: Config):
        c = config
        self.device = runs.resolve_device(c.device)
        runs.set_threads(c.threads)
        if c.advantage not in ADVANTAGE_ESTIMATORS:
            raise ConfigError(f"unknown advantage {c.advantage!r}; one of {sorted(ADVANTAGE_ESTIMATORS)}")
        if c.ppo_epochs < 1 or c.mini_batch_groups < 0 or c.micro_batch_groups < 0:
            raise ConfigError("ppo_epochs must be >= 1, mini_batch_groups and micro_batch_groups >= 0")
        self.feedback = make_feedback_from_spec(c.feedback)
        self.train_rows, self.eval_rows = _load_rows(c)

        random.seed(c.seed)
        np.random.seed(c.seed)
        torch.manual_seed(c.seed)
        model, self.tokenizer = load_policy(c.model, device=self.device, seed=c.seed)
        model.train()
        if c.weight_layout == "kn" or (c.weight_layout == "auto" and self.device.type == "cpu"):
            use_kn_layout(model)  # before the optimizer is built: parameters are replaced
        fast_bf16 = bf16_is_faster(self.device) if "auto" in (c.precision, c.generation_precision) else False
        precision = c.precision if c.precision != "auto" else ("bf16" if fast_bf16 else "fp32")
        generation_precision = (c.generation_precision if c.generation_precision != "auto"
                                else ("bf16" if fast_bf16 else "fp32"))
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
        self.learner = Learner.create(c, model, precision=precision, pad_token_id=self.tokenizer.pad_token_id)
        self.config = replace(c, loss=self.learner.hyperparameters)  # config.yaml records every value used
        self.generator = TransformersGenerator(
            model, eos_token_ids={self.tokenizer.eos_token_id}, pad_token_id=self.tokenizer.pad_token_id,
            autocast_dtype=torch.bfloat16 if generation_precision == "bf16" else None,
        )
        self.sampling_rng = torch.Generator(device=self.device).manual_seed(c.seed)
        self.stages = OnlineStages(
            sample=functools.partial(sample, generator=self.generator, tokenizer=self.tokenizer,
                                     n=c.samples_per_prompt, max_new_tokens=c.max_new_tokens,
                                     temperature=c.temperature, rng=self.sampling_rng),
            score=functools.partial(score, feedback=self.feedback, tokenizer=self.tokenizer),
            advantages=functools.partial(group_advantages, estimator=ADVANTAGE_ESTIMATORS[c.advantage]),
            train_on=lambda rollout, advantages: train_on(self.learner, rollout, advantages, step=self.step),
            publish=lambda version: self.generator.load_weights(self.learner.model.state_dict(), version),
        )
        self.step = 0
        self.train_clock = 0.0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.evals: list[dict[str, Any]] = []
        self.eval_prompt_ids = encode_prompts(self.tokenizer, self.eval_rows) if self.eval_rows else []

    @property
    def model(self):
        return self.learner.model

    def evaluate(self) -> dict[str, Any] | None:
        if not self.eval_rows:
            return None
        report = evaluate_accuracy(
            self.model, self.tokenizer, self.eval_rows, self.feedback, batch_size=self.config.eval_batch_size,
            max_new_tokens=self.config.eval_max_new_tokens, prompt_ids=self.eval_prompt_ids,
        )
        self.model.train()
        record = {"step": self.step, "train_seconds": self.train_clock, **{k: report[k] for k in (
            "n", "correct", "accuracy", "ci95", "mean_completion_tokens", "seconds")}}
        self.evals.append(record)
        return report

    # -- persistence ------------------------------------------------------------------------------------

    def trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "data_position": self.step * self.config.prompts_per_step,
                "train_clock": self.train_clock, "nonfinite_total": self.nonfinite_total,
                "nonfinite_in_row": self.nonfinite_in_row, "evals": self.evals}

    def save(self, run: runs.RunDir) -> Path:
        return runs.save_checkpoint(
            run.checkpoints / f"step-{self.step:06d}", model=self.model, tokenizer=self.tokenizer,
            optimizer=self.learner.optimizer, scheduler=self.learner.scheduler, sampling_rng=self.sampling_rng,
            trainer_state=self.trainer_state(),
        )

    def restore(self, checkpoint: Path) -> None:
        state = runs.load_checkpoint(checkpoint, model=self.model, optimizer=self.learner.optimizer,
                                     scheduler=self.learner.scheduler, sampling_rng=self.sampling_rng)
        self.step = state["step"]
        self.train_clock = state["train_clock"]
        self.nonfinite_total = state["nonfinite_total"]
        self.nonfinite_in_row = state["nonfinite_in_row"]
        self.evals = state["evals"]


def run(config: Config) -> dict[str, Any]:
    """Train; returns a summary dict (also written to ``<run>/summary.json``)."""
    config = runs.resolve_resume(config, extendable=("max_steps", "time_budget_s", "progress", "plots"))
    trainer = Trainer(config)  # validates data, loads the model: nothing on disk yet
    c = trainer.config
    name = f"{c.objective}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = runs.open_run_dir(trainer, config_to_yaml(c, recipe="online_rl"), default_name=name)
    print(f"run directory: {run_dir.path}")
    return runs.run_recording_status(run_dir, lambda: _loop(trainer, run_dir), step=lambda: trainer.step)


def _loop(trainer: Trainer, run_dir: runs.RunDir) -> dict[str, Any]:
    c = trainer.config
    executor = LocalExecutor()
    if not trainer.evals and trainer.eval_rows:
        before = trainer.evaluate()
        print(f"held-out accuracy before training: {format_accuracy(trainer.evals[-1])}  ({before['seconds']:.1f} s)")
    with runs.StepLoop(trainer, max_steps=c.max_steps, time_budget_s=c.time_budget_s,
                       max_nonfinite_steps=c.max_nonfinite_steps, progress=c.progress, label=c.objective) as loop:
        while loop.running():
            t0 = time.perf_counter()
            rows = rows_for_step(trainer.train_rows, trainer.step, c.prompts_per_step, c.seed)
            result = executor.step(trainer.stages, rows, version=trainer.step + 1)
            nonfinite = loop.count_step(result.metrics)
            record = _step_record(trainer, result, nonfinite)
            if trainer.learner.reference is not None and trainer.learner.kl_coef == 0 and c.ref_kl_every \
                    and trainer.step % c.ref_kl_every == 0:
                record["kl"] = trainer.learner.reference_kl(result.rollout)
            if (c.save_every and trainer.step % c.save_every == 0) or loop.stopping:
                trainer.save(run_dir)
            step_time = time.perf_counter() - t0
            loop.add_time(step_time)
            record["seconds_step"] = step_time
            record["train_seconds"] = trainer.train_clock
            if c.eval_every and trainer.step % c.eval_every == 0 and trainer.eval_rows:
                trainer.evaluate()
                record["heldout_accuracy"] = trainer.evals[-1]["accuracy"]
            run_dir.log(record)
            loop.show(f"reward {record['reward_mean']:.3f}")
            if loop.stopping:
                break
    if loop.stop_reason == "nonfinite":
        runs.mark_nonfinite_stop(run_dir, step=trainer.step, max_nonfinite_steps=c.max_nonfinite_steps, command="grpo")
        return {"status": "stopped", "step": trainer.step}

    trainer.save(run_dir)
    save_policy(trainer.model, trainer.tokenizer, run_dir.final)
    if trainer.eval_rows and (not trainer.evals or trainer.evals[-1]["step"] != trainer.step):
        trainer.evaluate()
    if c.plots:
        plot_run(run_dir.read_metrics(), trainer.evals, run_dir.plots)
    summary = _summary(trainer, loop.stop_reason, loop.step_seconds)
    run_dir.set_status("complete", step=trainer.step, reason=loop.stop_reason)
    _print_summary(summary, run_dir)
    return summary


def _step_record(trainer: Trainer, result: StepResult, nonfinite: bool) -> dict[str, Any]:
    """The metrics of one step: rewards and feedback health, completion shape, the update's own metrics, timing."""
    scores, rollout = result.scores, result.rollout
    rewards, finite = scores.values.float(), finite_mask(scores)
    groups = rewards.view(-1, rollout.n)
    return {
        "step": trainer.step,
        "reward_mean": float(rewards[finite].mean()) if finite.any() else math.nan,
        "reward_std": float(rewards[finite].std(unbiased=False)) if finite.any() else math.nan,
        "accuracy": float(np.mean(scores.info["correct"])) if "correct" in scores.info
        else float((rewards >= 0.5).float().mean()),
        "frac_zero_std_groups": float((groups.std(dim=1, unbiased=False) == 0).float().mean()),
        "completion_len": float(rollout.lengths.float().mean()),
        "truncated_frac": float((~rollout.finished).float().mean()),
        "feedback_nonfinite": int((~finite).sum()),
        # Contained feedback (sandboxed code, user reward functions) records these per item.
        "feedback_timeouts": sum(bool(t) for t in scores.info.get("timeout", [])),
        "feedback_errors": sum(e is not None and e is not False for e in scores.info.get("error", [])),
        "skipped_nonfinite": int(nonfinite),
        "lr": trainer.learner.scheduler.get_last_lr()[0],
        **result.metrics,
        **{f"seconds_{k}": v for k, v in result.seconds.items()},
    }


def _summary(trainer: Trainer, stop_reason: str, step_seconds: list[float]) -> dict[str, Any]:
    evals = trainer.evals
    first_50 = next((e for e in evals if e["accuracy"] > 0.5), None)
    return {
        "status": "complete",
        "stop_reason": stop_reason,
        "steps": trainer.step,
        "train_seconds": trainer.train_clock,
        "median_step_seconds": statistics.median(step_seconds) if step_seconds else math.nan,
        "nonfinite_steps": trainer.nonfinite_total,
        "accuracy_before": evals[0] if evals else None,
        "accuracy_after": evals[-1] if evals else None,
        "first_above_50": {"step": first_50["step"], "train_seconds": first_50["train_seconds"]}
        if first_50 else None,
        "evals": evals,
    }


def _print_summary(s: dict[str, Any], run_dir: runs.RunDir) -> None:
    print(f"trained {s['steps']} steps in {s['train_seconds']:.0f} s (median {s['median_step_seconds']:.2f} s/step; "
          f"stopped by {s['stop_reason']})")
    if s["accuracy_before"]:
        print(f"held-out accuracy before: {format_accuracy(s['accuracy_before'])}")
        print(f"held-out accuracy after:  {format_accuracy(s['accuracy_after'])}")
        f50 = s["first_above_50"]
        print("first above 50%: " + (f"step {f50['step']} at {f50['train_seconds']:.0f} s of training" if f50
                                       else "never"))
    print(f"wrote {run_dir.path}/: config.yaml metrics.jsonl plots/ checkpoints/ final/ summary.json")
