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

import difflib
import functools
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rlxf import runs
from rlxf.config import ConfigError, option
from rlxf.data import encode_prompts, rows_for_step
from rlxf.distributed import LocalExecutor, OnlineStages, StepResult
from rlxf.eval.accuracy import evaluate_accuracy, format_accuracy
from rlxf.eval.plots import plot_run
from rlxf.feedback import FeedbackError, FeedbackSourceFailed, finite_mask, make_feedback_from_spec
from rlxf.models import load_policy
from rlxf.models.layout import use_kn_layout
from rlxf.models.lora import LoraWeights, add_lora, save_policy_or_merged
from rlxf.models.precision import resolve_precision
from rlxf.objectives.signature import loss_signature
from rlxf.ops import ADVANTAGE_ESTIMATORS, policy_filtration, reinforce_pp, remax
from rlxf.recipes.constraints import ConstrainedScore, parse_constraints
from rlxf.recipes.critic import Critic
from rlxf.recipes.learner import Learner, kl_reward_inputs, train_on
from rlxf.recipes.prompt_rows import check_prompt_lengths, load_rows
from rlxf.recipes.stages import group_advantages, sample, score
from rlxf.rollout import make_generator
from rlxf.types import Scores


@dataclass
class Config(runs.HealthOptions, runs.ResumableRunOptions, runs.OptimizerOptions):
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
    eval_size: int = option(200, "Held-out problems for accuracy (arithmetic).", ge=0)
    # the algorithm
    objective: str = option("grpo", "Loss by name: grpo, rloo, ppo_clip, reinforce (see `rlxf list`).")
    loss: dict[str, Any] = option(
        {}, "Loss hyperparameters, loss.<name>=value (e.g. loss.beta=0.04 loss.clip_eps=0.2): keyword arguments of "
            "the objective's function, checked against it; unset ones take the function's defaults (config.yaml "
            "records all). A `beta` > 0 is a KL(pi || ref) term and loads the reference.")
    advantage: str = option(
        "group_zscore", "Advantage estimator: group_zscore, group_center, leave_one_out (each group's rewards); remax "
                        "(minus the reward of each prompt's greedy reply, sampled too); reinforce_pp, "
                        "reinforce_pp_baseline (REINFORCE++: KL-shaped token returns normalised over the batch); gae "
                        "(a learned critic: actor-critic PPO, `rlxf train ppo`).")
    filtration: Literal["none", "best", "best_random", "best_worst"] = option(
        "none", "PF-PPO policy filtration: train only on each group's best reply (best), best and one other at random "
                "(best_random) or best and worst (best_worst); the others leave the loss and its denominator.")
    aggregation: str | None = option(
        None, "ops.aggregate mode of the loss; null = the objective's own default_aggregation (`rlxf list` shows "
              "it; the grpo preset sets token_mean, the token-level normalisation of DAPO and of TRL's default).")
    ppo_epochs: int = option(
        1, "Passes over each sampled batch, each in shuffled mini-batches of mini_batch_groups groups with one "
           "optimizer update per mini-batch; old log-probs are the policy's before the first update. 1 = on-policy.",
        ge=1)
    mini_batch_groups: int = option(0, "Prompt groups per optimizer update (0 = all: one update per pass).", ge=0)
    skip_zero_advantage: bool = option(
        True, "Leave groups with all-zero advantages out of the training forward (exact when the loss has no KL)."
    )
    # sampling
    prompts_per_step: int = option(8, "Distinct prompts per optimizer step.", ge=1)
    samples_per_prompt: int = option(
        4, "Completions sampled per prompt (the group size G; the group baselines need G >= 2).", ge=1)
    max_new_tokens: int = option(32, "Longest completion during training.", ge=1)
    max_prompt_tokens: int = option(
        1024, "Longest prompt (chat template included) in tokens; a longer row is refused at load with its "
              "file:line (as is one that leaves no room for max_new_tokens in the model's context).", ge=1)
    temperature: float = option(1.0, "Sampling temperature during training.", gt=0)
    # optimisation
    micro_batch_groups: int = option(
        0, "Prompt groups per forward/backward (0 = all at once); exact accumulation.", ge=0)
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto", "Training forward/backward: bf16 autocast or fp32; auto = bf16 where a short matmul probe measures it "
                "1.3x faster than fp32 on this machine (CUDA always; the choice is printed and kept in summary.json).")
    generation_precision: Literal["auto", "bf16", "fp32"] = option(
        "fp32", "Sampling forward precision; auto = bf16 where the probe measures it faster for one decode step's "
                "rows (prompts_per_step x samples_per_prompt).")
    generator: Literal["auto", "fast", "transformers"] = option(
        "auto", "Sampling and held-out decoding engine: fast (rlxf's llama sampler: packed weights, static KV cache, "
                "finished rows dropped), transformers (any model), auto = fast where the model is a plain llama and "
                "sampling runs in fp32, else transformers. Both draw the same tokens from the same seed.")
    weight_layout: Literal["auto", "kn", "default"] = option(
        "auto", "CPU linear-weight storage; kn (transposed) speeds up small-batch decoding. auto = kn on CPU."
    )
    # LoRA (peft) on the policy
    lora_r: int = option(0, "LoRA rank of the policy (0 = full fine-tuning). The reference is then the model with its "
                            "adapters off (no second copy); sampling runs on the transformers generator.", ge=0)
    lora_alpha: float = option(16.0, "LoRA alpha (scaling alpha / r).", gt=0)
    lora_dropout: float = option(0.0, "LoRA dropout.", ge=0, lt=1)
    lora_targets: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "Modules that get LoRA adapters.")
    # budget and evaluation
    max_steps: int = option(1000, "Stop after this many optimizer steps.", ge=1)
    time_budget_s: float = option(
        1200.0, "Stop at the first step end after this much training time (evaluation and checkpoints excluded). "
                "0 = none.", ge=0)
    eval_every: int = option(10, "Held-out greedy evaluation every N steps (0 = only before and after).", ge=0)
    eval_max_new_tokens: int = option(48, "Longest reply in held-out evaluation.", ge=1)
    eval_batch_size: int = option(100, "Prompts per evaluation batch.", ge=1)
    ref_kl_every: int = option(10, "Without a KL term in the loss, measure KL to the reference every N steps "
                                   "(0 = never).", ge=0)
    # the critic: read only with advantage=gae (actor-critic PPO)
    critic: str = option(
        "policy_copy", "advantage=gae: the value model: policy_copy (the initial policy's decoder with a new scalar "
                       "head) or another model with the policy's tokenizer ('tiny', a directory), with its own AdamW.")
    critic_lr: float = option(
        1e-5, "advantage=gae: the critic's learning rate (same warmup and clipping as the policy).", gt=0)
    value_clip: float | None = option(
        0.2, "advantage=gae: clip V within this of its value at sampling in the value loss (null = unclipped).", gt=0)
    critic_lora_r: int = option(
        0, "advantage=gae: LoRA rank of the critic's decoder (0 = train it whole); lora_alpha, lora_dropout and "
           "lora_targets as for the policy; the value head always trains whole.", ge=0)
    gamma: float = option(1.0, "advantage=gae: discount per token.", ge=0, le=1)
    lam: float = option(0.95, "advantage=gae: GAE lambda (1 = Monte-Carlo returns, 0 = one-step TD).", ge=0, le=1)
    reward_kl_coef: float = option(
        0.05, "advantage=gae or reinforce_pp(_baseline): beta of the KL-shaped reward, -beta (log pi_old - log pi_ref) "
              "at every token plus the feedback's reward at the last (loads the reference).", ge=0)
    whiten_advantages: bool = option(True, "advantage=gae: whiten the advantages over the batch's tokens.")
    # constrained RLHF (Moskovitz et al. 2024): `feedback` is the task reward r_0
    constraints: dict[str, str] = option(
        {}, "Constrained RLHF: constraints.<name>='SPEC <= THRESHOLD' (or >=): a component feedback held to a bound by "
            "its own Lagrange multiplier; the reward trained on is feedback - sum_i lambda_i (r_i - theta_i) (sign "
            "flipped for >=), and each multiplier steps by multiplier_lr times its batch-mean violation, projected "
            "to >= 0. Logged: constraint_<name> (batch mean), multiplier_<name>, task_reward_mean.")
    multiplier_lr: float = option(0.1, "With constraints: the multipliers' step size.", ge=0)
    max_feedback_failures: int = option(
        20, "Stop (status stopped, resumable) after this many steps in a row with nothing to learn from: no finite "
            "reward, or every group's rewards equal (0 = never). The first error of each kind is printed and kept "
            "in summary.json.", ge=0)

    def __post_init__(self) -> None:
        if self.samples_per_prompt == 1 and self.advantage in ADVANTAGE_ESTIMATORS:  # cannot learn: say why
            raise ConfigError(f"samples_per_prompt=1 cannot learn: the advantage ({self.advantage}) compares each "
                              f"completion with the others sampled for its prompt, so a group of one has advantage 0 "
                              f"everywhere; use samples_per_prompt >= 2")
        super().__post_init__()
        if self.generator == "fast" and self.generation_precision == "bf16":
            raise ConfigError("generator=fast samples in the model's own dtype (fp32); use generator=transformers "
                              "for generation_precision=bf16")
        estimators = [*ADVANTAGE_ESTIMATORS, *ESTIMATOR_FIELDS]
        if self.advantage not in estimators:
            close = difflib.get_close_matches(self.advantage, estimators, n=1)
            raise ConfigError(f"bad value for 'advantage': unknown estimator {self.advantage!r}"
                              + (f"; did you mean {close[0]!r}?" if close else "")
                              + f" (one of {', '.join(sorted(estimators))})")
        defaults = {f.name: f.default for f in fields(self)}
        parse_constraints(self.constraints)
        if not self.constraints and self.multiplier_lr != defaults["multiplier_lr"]:
            raise ConfigError("multiplier_lr is read only with constraints (constraints.<name>='SPEC <= THRESHOLD')")
        specific = dict.fromkeys(name for names in ESTIMATOR_FIELDS.values() for name in names)  # ordered, unique
        unread = [name for name in specific if name not in ESTIMATOR_FIELDS.get(self.advantage, ())
                  and getattr(self, name) != defaults[name]]
        if unread:
            readers = sorted(a for a, names in ESTIMATOR_FIELDS.items() if unread[0] in names)
            raise ConfigError(f"{', '.join(unread)} {'is' if len(unread) == 1 else 'are'} read only with advantage="
                              f"{' or '.join(readers)}; this run has advantage={self.advantage}")


# The estimators that need more than each group's rewards (ops.ESTIMATOR_SUMMARIES names them all), and the fields
# each reads (gae's: the critic's).
ESTIMATOR_FIELDS = {
    "gae": ("critic", "critic_lr", "critic_lora_r", "value_clip", "gamma", "lam", "reward_kl_coef",
            "whiten_advantages"),
    "reinforce_pp": ("reward_kl_coef",),
    "reinforce_pp_baseline": ("reward_kl_coef",),
    "remax": (),
}


class Trainer:
    """State of one run: the learner, the generator, the feedback and the data; ``run()`` below is the loop."""

    def __init__(self, config: Config):
        c = config
        self.device = runs.resolve_device(c.device)
        runs.set_threads(c.threads)
        try:
            self.feedback = make_feedback_from_spec(c.feedback)
        except FeedbackError as exc:  # a misspelt name, a bad argument, a reward function that does not load
            raise ConfigError(f"bad value for 'feedback': {exc}") from None
        self.train_rows, self.eval_rows = load_rows(c, self.feedback)

        random.seed(c.seed)
        np.random.seed(c.seed)
        torch.manual_seed(c.seed)
        model, self.tokenizer = load_policy(c.model, device=self.device, seed=c.seed)
        check_prompt_lengths(c, self.tokenizer, getattr(model.config, "max_position_embeddings", None))
        model.train()
        if c.lora_r:
            model = add_lora(model, r=c.lora_r, alpha=c.lora_alpha, dropout=c.lora_dropout, targets=c.lora_targets)
        elif c.weight_layout == "kn" or (c.weight_layout == "auto" and self.device.type == "cpu"):
            use_kn_layout(model)  # before the optimizer is built: parameters are replaced
        # auto: measured on this machine, for the training batch's matrix shapes and for one decode step's
        precision = resolve_precision(c.precision, self.device)
        generation_precision = resolve_precision(c.generation_precision, self.device,
                                                 rows=c.prompts_per_step * c.samples_per_prompt)
        self.precisions = {"training": precision, "sampling": generation_precision}
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
        self.learner = Learner.create(c, model, precision=precision, pad_token_id=self.tokenizer.pad_token_id,
                                      needs_reference=c.advantage in ("gae", "reinforce_pp", "reinforce_pp_baseline"))
        if "rewards" in loss_signature(self.learner.objective).tensors and c.samples_per_prompt % 2:
            raise ConfigError(f"objective={c.objective} learns from pairs of replies to one prompt (rows 2k, 2k+1), so "
                              f"samples_per_prompt must be even, not {c.samples_per_prompt}")
        self.critic = Critic.create(c, policy_tokenizer=self.tokenizer, device=self.device, precision=precision) \
            if c.advantage == "gae" else None
        self.config = replace(c, loss=self.learner.hyperparameters)  # config.yaml records every value used
        autocast = torch.bfloat16 if generation_precision == "bf16" else None
        special = {"eos_token_ids": {self.tokenizer.eos_token_id}, "pad_token_id": self.tokenizer.pad_token_id}
        try:
            self.generator = make_generator(model, kind=c.generator, autocast_dtype=autocast, **special)
        except ValueError as exc:  # e.g. generator=fast where generation_precision=auto chose bf16 on this machine
            raise ConfigError(f"bad value for 'generator': {exc} (sampling precision: {generation_precision})") \
                from None
        # Held-out evaluation decodes greedily in fp32 whatever the sampling precision, so its figures compare.
        self.eval_generator = self.generator if autocast is None else make_generator(model, kind=c.generator,
                                                                                     **special)
        self.sampling_rng = torch.Generator(device=self.device).manual_seed(c.seed)
        self.prepared: dict[str, Any] = {}  # what a step's advantage stage computed for its update
        plain_score = functools.partial(score, tokenizer=self.tokenizer)
        self.constrained = ConstrainedScore(parse_constraints(c.constraints), task=self.feedback,
                                            lr=c.multiplier_lr, score=plain_score) if c.constraints else None
        self.stages = OnlineStages(
            sample=self._sample,
            score=self.constrained or functools.partial(plain_score, feedback=self.feedback),
            advantages={"gae": self._critic_advantages, "remax": self._remax_advantages,
                        "reinforce_pp": self._reinforce_pp_advantages,
                        "reinforce_pp_baseline": self._reinforce_pp_advantages}.get(c.advantage) or functools.partial(
                group_advantages, estimator=ADVANTAGE_ESTIMATORS.get(c.advantage)),
            train_on=self._train_on,
            publish=lambda version: self.generator.load_weights(self.learner.model.state_dict(), version),
        )
        self.step = 0
        self.train_clock = 0.0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.evals: list[dict[str, Any]] = []
        self.feedback_failures_in_row = 0
        self.feedback_errors: dict[str, dict[str, Any]] = {}  # kind -> first message, step, count
        self.eval_prompt_ids = encode_prompts(self.tokenizer, self.eval_rows) if self.eval_rows else []

    @property
    def model(self):
        return self.learner.model

    # -- the stages beyond the plain group estimators ------------------------------------------------------

    def _sample(self, rows: list[dict[str, Any]]):
        """G samples per prompt; with advantage=remax also each prompt's greedy reply (scored for its baseline)."""
        c = self.config
        rollout = sample(rows, generator=self.generator, tokenizer=self.tokenizer, n=c.samples_per_prompt,
                         max_new_tokens=c.max_new_tokens, temperature=c.temperature, rng=self.sampling_rng)
        if c.advantage == "remax":
            greedy = self.generator.generate(rollout.prompt_ids, n=1, max_new_tokens=c.max_new_tokens, greedy=True)
            self.prepared["greedy"] = (rows, greedy)
        return rollout

    def _remax_advantages(self, scores: Scores, rollout) -> torch.Tensor:
        """ReMax: each reward minus its prompt's greedy reward (a prompt whose greedy reply has no finite reward, and
        a reply without one, get 0)."""
        rows, greedy = self.prepared.pop("greedy")
        baseline = score(rows, greedy, feedback=self.feedback, tokenizer=self.tokenizer)
        usable = finite_mask(scores) & finite_mask(baseline).repeat_interleave(rollout.n)
        advantages = remax(scores.values.float(), baseline.values.float(), rollout.n)
        self.prepared["metrics"] = {"greedy_reward_mean": float(baseline.values[finite_mask(baseline)].mean())
                                    if bool(finite_mask(baseline).any()) else math.nan}
        return torch.where(usable, advantages, 0.0)

    def _reinforce_pp_advantages(self, scores: Scores, rollout) -> torch.Tensor:
        """REINFORCE++ (and its baseline variant): KL-shaped returns-to-go, normalised over the batch's tokens; rows
        without a finite reward leave the statistics and get 0."""
        step = kl_reward_inputs(self.learner, scores, rollout)
        group = rollout.n if self.config.advantage == "reinforce_pp_baseline" else None
        self.prepared.update(old_logps=step.old_logps, metrics={"kl": step.kl})
        return reinforce_pp(step.rewards, step.old_logps, step.ref_logps, step.mask, beta=self.config.reward_kl_coef,
                            group_size=group)

    def _critic_advantages(self, scores: Scores, rollout) -> torch.Tensor:
        """advantage=gae: the critic's estimate, kept for this step's update (``_train_on``)."""
        targets = self.critic.estimate(self.learner, scores, rollout)
        self.prepared.update(critic=targets, old_logps=targets.old_logps, metrics=targets.metrics)
        return targets.advantages

    def _train_on(self, rollout, scores: Scores, advantages: torch.Tensor) -> dict[str, float]:
        """The policy's update (and the critic's, with advantage=gae), on the replies policy filtration keeps; the
        rewards go to losses that declare them."""
        prepared, self.prepared = self.prepared, {}
        finite = finite_mask(scores)
        metrics = dict(prepared.get("metrics", {}))
        if self.constrained is not None:
            metrics.update(self.constrained.metrics)
        if self.config.filtration != "none":
            rng = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)  # resumable
            keep = policy_filtration(torch.where(finite, scores.values.float(), math.nan), rollout.n,
                                     strategy=self.config.filtration, rng=rng)
            rollout = replace(rollout, completion_mask=rollout.completion_mask & keep[:, None])
            metrics["filtered_frac"] = float((~keep).float().mean())
        rewards = torch.where(finite, scores.values.float(), 0.0)
        metrics.update(train_on(self.learner, rollout, advantages, step=self.step, rewards=rewards,
                                old_logps=prepared.get("old_logps")))
        if self.critic is not None:
            metrics.update(self.critic.update(rollout, prepared["critic"], step=self.step))
        return metrics

    def evaluate(self) -> dict[str, Any] | None:
        if not self.eval_rows:
            return None
        report = evaluate_accuracy(
            self.model, self.tokenizer, self.eval_rows, self.feedback, batch_size=self.config.eval_batch_size,
            max_new_tokens=self.config.eval_max_new_tokens, prompt_ids=self.eval_prompt_ids,
            generator=self.eval_generator,
        )
        self.model.train()
        record = {"step": self.step, "train_seconds": self.train_clock, **{k: report[k] for k in (
            "n", "correct", "accuracy", "ci95", "mean_completion_tokens", "seconds")}}
        self.evals.append(record)
        return report

    def note_feedback(self, scores: Scores, advantages: torch.Tensor) -> bool:
        """Record the step's feedback failures (first message of each kind); whether the step had nothing to learn
        from (no finite reward, or all advantages zero), counted in ``feedback_failures_in_row``."""
        for kind, message in feedback_problems(scores):
            seen = self.feedback_errors.setdefault(kind, {"first": message, "step": self.step, "count": 0})
            seen["count"] += 1
        nothing = not bool(finite_mask(scores).any()) or not bool(advantages.ne(0).any())
        self.feedback_failures_in_row = self.feedback_failures_in_row + 1 if nothing else 0
        return nothing

    def note_feedback_failure(self, exc: Exception) -> None:
        """Record a feedback source that gave up (:class:`~rlxf.feedback.FeedbackSourceFailed`)."""
        self.feedback_errors.setdefault("failed", {"first": str(exc), "step": self.step, "count": 1})

    # -- persistence ------------------------------------------------------------------------------------

    def trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "data_position": self.step * self.config.prompts_per_step,
                "train_clock": self.train_clock, "nonfinite_total": self.nonfinite_total,
                "nonfinite_in_row": self.nonfinite_in_row, "evals": self.evals,
                "feedback_failures_in_row": self.feedback_failures_in_row, "feedback_errors": self.feedback_errors,
                **({"multipliers": self.constrained.state()} if self.constrained else {})}

    def save(self, run: runs.RunDir) -> Path:
        return runs.save_checkpoint(
            run.checkpoints / f"step-{self.step:06d}", model=self._checkpoint_model(), tokenizer=self.tokenizer,
            optimizer=self.learner.optimizer, scheduler=self.learner.scheduler, sampling_rng=self.sampling_rng,
            trainer_state=self.trainer_state(), extras=self._save_critic if self.critic else None,
        )

    def _checkpoint_model(self):
        """What a checkpoint holds of the policy: the adapters alone for a LoRA run, else the whole model."""
        return LoraWeights(self.model) if self.config.lora_r else self.model

    def _save_critic(self, directory: Path) -> None:
        runs.save_trained_module(directory, "critic", module=self.critic.model, optimizer=self.critic.optimizer,
                                 scheduler=self.critic.scheduler)

    def restore(self, checkpoint: Path) -> None:
        state = runs.load_checkpoint(checkpoint, model=self._checkpoint_model(), optimizer=self.learner.optimizer,
                                     scheduler=self.learner.scheduler, sampling_rng=self.sampling_rng)
        self.step = state["step"]
        self.train_clock = state["train_clock"]
        self.nonfinite_total = state["nonfinite_total"]
        self.nonfinite_in_row = state["nonfinite_in_row"]
        self.evals = state["evals"]
        self.feedback_failures_in_row = state.get("feedback_failures_in_row", 0)
        self.feedback_errors = state.get("feedback_errors", {})
        if self.constrained is not None:
            self.constrained.load_state(state["multipliers"])
        if self.critic is not None:
            runs.load_trained_module(checkpoint, "critic", module=self.critic.model, optimizer=self.critic.optimizer,
                                     scheduler=self.critic.scheduler)


def run(config: Config) -> dict[str, Any]:
    """Train; returns a summary dict (also written to ``<run>/summary.json``)."""
    trainer, run_dir = runs.start_run(config, Trainer, recipe="online_rl")
    print(f"precision: training {trainer.precisions['training']}, sampling {trainer.precisions['sampling']} "
          f"({type(trainer.generator).__name__})")
    return runs.run_recording_status(run_dir, lambda: _loop(trainer, run_dir), step=lambda: trainer.step)


def _loop(trainer: Trainer, run_dir: runs.RunDir) -> dict[str, Any]:
    c = trainer.config
    executor = LocalExecutor()
    if not trainer.evals and trainer.eval_rows:
        before = trainer.evaluate()
        print(f"held-out accuracy before training: {format_accuracy(trainer.evals[-1])}  ({before['seconds']:.1f} s)")
    with runs.StepLoop(trainer, max_steps=c.max_steps, time_budget_s=c.time_budget_s,
                       max_nonfinite_steps=c.max_nonfinite_steps, progress=c.progress, label=c.objective,
                       run_dir=run_dir, health=c.health_monitor()) as loop:
        while loop.running():
            t0 = time.perf_counter()
            rows = rows_for_step(trainer.train_rows, trainer.step, c.prompts_per_step, c.seed)
            try:
                result = executor.step(trainer.stages, rows, version=trainer.step + 1)
            except FeedbackSourceFailed as exc:  # the step is lost; the weights are those after the last one
                trainer.note_feedback_failure(exc)
                latest = runs.latest_checkpoint(run_dir.path)
                if latest is None or latest.name != f"step-{trainer.step:06d}":  # else that step is saved already
                    runs.save_run_checkpoint(trainer, run_dir, keep=c.keep_checkpoints)
                loop.stop(str(exc))
                break
            nonfinite = loop.count_step(result.metrics)
            record = _step_record(trainer, result, nonfinite)
            if trainer.note_feedback(result.scores, result.advantages) and c.max_feedback_failures \
                    and trainer.feedback_failures_in_row >= c.max_feedback_failures:
                loop.stop(f"{trainer.feedback_failures_in_row} steps in a row had nothing to learn from (no finite "
                          f"reward, or every group's rewards equal; last mean reward {record['reward_mean']:.3g})")
            if trainer.learner.reference is not None and trainer.learner.kl_coef == 0 and c.ref_kl_every \
                    and trainer.step % c.ref_kl_every == 0:
                record["kl"] = trainer.learner.reference_kl(result.rollout)
            step_time = time.perf_counter() - t0
            loop.add_time(step_time)
            record["seconds_step"] = step_time
            record["train_seconds"] = trainer.train_clock
            if c.eval_every and trainer.step % c.eval_every == 0 and trainer.eval_rows:
                trainer.evaluate()
                record["heldout_accuracy"] = trainer.evals[-1]["accuracy"]
            loop.finish_step(record, save_every=c.save_every, keep_checkpoints=c.keep_checkpoints,
                             text=f"reward {record['reward_mean']:.3f}")
            if loop.stopping:
                break
    if not loop.stopping and c.max_feedback_failures and 0 < trainer.step <= trainer.feedback_failures_in_row:
        # A run shorter than max_feedback_failures that never had anything to learn from is not complete either.
        runs.save_run_checkpoint(trainer, run_dir, keep=c.keep_checkpoints)
        loop.stop(f"none of its {trainer.step} steps had anything to learn from (no finite reward, or every "
                  f"group's rewards equal)")
    if loop.stopping:
        reason = runs.nonfinite_reason(c.max_nonfinite_steps) if loop.stop_reason == "nonfinite" else loop.stop_reason
        summary = _summary(trainer, "stopped", reason, loop.step_seconds, loop.health.counts)
        _print_feedback_errors(trainer)
        runs.mark_stopped(run_dir, step=trainer.step, reason=reason, command="grpo")
        return summary

    runs.save_run_checkpoint(trainer, run_dir, keep=c.keep_checkpoints)
    save_policy_or_merged(trainer.model, trainer.tokenizer, run_dir.final)  # LoRA: merged, adapters in final/adapter
    if trainer.eval_rows and (not trainer.evals or trainer.evals[-1]["step"] != trainer.step):
        trainer.evaluate()
    if c.plots:
        plot_run(run_dir.read_metrics(), trainer.evals, run_dir.plots)
    summary = _summary(trainer, "complete", loop.stop_reason, loop.step_seconds, loop.health.counts)
    run_dir.set_status("complete", step=trainer.step, reason=loop.stop_reason)
    _print_summary(summary, run_dir)
    _print_feedback_errors(trainer)
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


def _summary(trainer: Trainer, status: str, stop_reason: str, step_seconds: list[float],
             alarm_steps: dict[str, int]) -> dict[str, Any]:
    evals = trainer.evals
    first_50 = next((e for e in evals if e["accuracy"] > 0.5), None)
    return {
        "status": status,
        "stop_reason": stop_reason,
        "steps": trainer.step,
        "train_seconds": trainer.train_clock,
        "median_step_seconds": statistics.median(step_seconds) if step_seconds else math.nan,
        "nonfinite_steps": trainer.nonfinite_total,
        "precision": trainer.precisions,
        "generator": type(trainer.generator).__name__,
        "feedback_errors": trainer.feedback_errors,
        "alarm_steps": alarm_steps,
        "accuracy_before": evals[0] if evals else None,
        "accuracy_after": evals[-1] if evals else None,
        "first_above_50": {"step": first_50["step"], "train_seconds": first_50["train_seconds"]}
        if first_50 else None,
        "evals": evals,
    }


def _print_feedback_errors(trainer: Trainer) -> None:
    """One line per kind of feedback failure seen in the run: how often, and the first message."""
    for kind, seen in trainer.feedback_errors.items():
        print(f"warning: feedback {kind} on {seen['count']} completions (first at step {seen['step']}): "
              f"{seen['first']}", file=sys.stderr)


def feedback_problems(scores: Scores) -> list[tuple[str, str]]:
    """``(kind, message)`` for each completion the feedback failed on: ``timeout``, the exception's name
    (``ValueError: ...``), ``error`` for other messages, ``nonfinite`` for a NaN/inf score without a message."""
    errors = scores.info.get("error") or [None] * len(scores)
    timeouts = scores.info.get("timeout") or [False] * len(scores)
    finite = finite_mask(scores).tolist()
    problems = []
    for error, timeout, ok in zip(errors, timeouts, finite, strict=True):
        if timeout:
            problems.append(("timeout", str(error) if error else "timed out"))
        elif error is not None and error is not False:
            head = str(error).partition(":")[0]
            problems.append((head if head.isidentifier() else "error", str(error)))
        elif not ok:
            problems.append(("nonfinite", "the score was NaN or infinite"))
    return problems


def _print_summary(s: dict[str, Any], run_dir: runs.RunDir) -> None:
    print(f"trained {s['steps']} steps in {s['train_seconds']:.0f} s (median {s['median_step_seconds']:.2f} s/step; "
          f"stopped by {s['stop_reason']})")
    if any(s["alarm_steps"].values()):
        print("training-health alarms (steps on): " + ", ".join(f"{k} {v}" for k, v in s["alarm_steps"].items() if v))
    if s["accuracy_before"]:
        print(f"held-out accuracy before: {format_accuracy(s['accuracy_before'])}")
        print(f"held-out accuracy after:  {format_accuracy(s['accuracy_after'])}")
        f50 = s["first_above_50"]
        print("first above 50%: " + (f"step {f50['step']} at {f50['train_seconds']:.0f} s of training" if f50
                                       else "never"))
    print(f"wrote {run_dir.path}/: config.yaml metrics.jsonl plots/ checkpoints/ final/ summary.json")
