"""Online RL for language models: prompts -> group sampling -> feedback -> advantages -> loss -> step.

One loop serves GRPO, RLOO, Dr.GRPO-style and plain REINFORCE/PPO-clip runs: the objective, the advantage
estimator and the aggregation are named in the config and looked up in their registries; nothing here
re-implements their maths. The default (``rlxf train grpo``) is the main job: SmolLM2-135M-Instruct learns
"What is a+b?" from a verifier on two CPU cores within a 20-minute training budget.

Per step::

    rows = next P prompts (in order; a JSONL prompt set is reshuffled each epoch with a seeded order)
    rollout = generator.generate(prompt_ids, n=G)           # token ids + sampler log-probs
    rewards = feedback(prompts, completions, **context)     # Scores, non-finite values recorded, not trained on
    A = advantage(rewards, G)                               # e.g. group z-score
    loss = aggregate(objective(policy_logps, old_logps, A, mask, ...), mask, mode)   # fused, chunked log-probs
    clip grad norm, skip the step if anything is non-finite, optimizer step

Exact shortcuts (each keeps the gradient identical to the plain computation):

* groups whose advantages are all zero contribute exactly zero gradient when the loss has no KL term, so
  they are left out of the training forward (``skip_zero_advantage``) while the loss keeps the full batch's
  denominator;
* each prompt is run once per group and its KV cache shared by the G completions
  (``rlxf.models.forward.completion_logprobs``);
* with one update per batch (``ppo_epochs=1``) the old policy is the current one, so ``old_logps`` is the
  detached current log-prob and no extra forward is needed.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rlxf.config import config_to_yaml, option
from rlxf.recipes.run_dir import (
    RunDir,
    mark_nonfinite_stop,
    open_run_dir,
    progress_bar,
    resolve_device,
    resolve_resume,
    run_recording_status,
)


@dataclass
class Config:
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
    advantage: str = option("group_zscore", "Advantage estimator: group_zscore, group_center, leave_one_out.")
    aggregation: str | None = option(
        None, "ops.aggregate mode; default: the objective's own (token_mean for grpo, seq_mean_token_sum rloo)."
    )
    clip_eps: float | None = option(0.2, "PPO ratio clip epsilon (null: no clipping, for losses that allow it).")
    clip_eps_high: float | None = option(None, "Upper clip epsilon (DAPO clip-higher); null = clip_eps.")
    beta: float = option(0.0, "KL(pi || ref) coefficient (k3 estimator). 0 = no reference in the loss.")
    ppo_epochs: int = option(1, "Optimizer updates per sampled batch (1 = on-policy).")
    skip_zero_advantage: bool = option(
        True, "Leave groups with all-zero advantages out of the training forward (exact when beta=0)."
    )
    # sampling
    prompts_per_step: int = option(8, "Distinct prompts per optimizer step.")
    samples_per_prompt: int = option(4, "Completions sampled per prompt (the group size G).")
    max_new_tokens: int = option(32, "Longest completion during training.")
    temperature: float = option(1.0, "Sampling temperature during training.")
    # optimisation
    lr: float = option(1e-5, "Learning rate (AdamW; constant after warmup).")
    warmup_steps: int = option(0, "Linear warmup steps.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Gradient norm clip.")
    micro_batch_groups: int = option(0, "Prompt groups per forward/backward (0 = all at once).")
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto", "Training forward/backward: bf16 autocast or fp32; auto = bf16 where it is faster (CUDA, AMX CPUs)."
    )
    generation_precision: Literal["auto", "bf16", "fp32"] = option("fp32", "Sampling forward precision.")
    weight_layout: Literal["auto", "kn", "default"] = option(
        "auto", "CPU linear-weight storage; kn (transposed) speeds up small-batch decoding. auto = kn on CPU."
    )
    # budget and bookkeeping
    max_steps: int = option(1000, "Stop after this many optimizer steps.")
    time_budget_s: float = option(
        1200.0, "Stop at the first step end after this much training time (evaluation excluded). 0 = none."
    )
    eval_every: int = option(10, "Held-out greedy evaluation every N steps (0 = only before and after).")
    eval_max_new_tokens: int = option(48, "Longest reply in held-out evaluation.")
    eval_batch_size: int = option(100, "Prompts per evaluation batch.")
    ref_kl_every: int = option(10, "With beta=0, measure KL to the reference every N steps (0 = never).")
    save_every: int = option(50, "Checkpoint every N steps (0 = only at the end).")
    max_nonfinite_steps: int = option(3, "Stop (with a checkpoint) after this many non-finite steps in a row.")
    seed: int = option(42, "Seed for sampling and initialisation.")
    threads: int = option(0, "torch CPU threads (0 = torch default).")
    device: str = option("auto", "'auto' (cuda if available), 'cpu' or 'cuda[:i]'.")
    output_dir: str = option("runs", "Parent directory of run directories.")
    run_name: str | None = option(None, "Run directory name (default: <objective>-<timestamp>).")
    resume: str | None = option(None, "Run directory to resume from its latest checkpoint.")
    progress: bool = option(True, "Show a progress bar.")


# ----------------------------------------------------------------------------------------------- set-up


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _load_rows(config: Config) -> tuple[list[dict], list[dict]]:
    """Training and held-out rows, validated before anything is created on disk."""
    from rlxf.data import DataError, arithmetic_rows, load_prompts

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


def _step_rows(rows: list[dict], step: int, per_step: int, seed: int) -> list[dict]:
    """Rows for ``step`` (0-based): in order, epoch after epoch, each later epoch in a seeded order.

    A pure function of ``step``, so a resumed run draws exactly the rows an uninterrupted one would.
    """
    out = []
    for i in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(i, len(rows))
        order = list(range(len(rows)))
        if epoch > 0:
            random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(rows[order[pos]])
    return out


def _group_advantages(estimator, rewards: torch.Tensor, finite: torch.Tensor, n: int) -> torch.Tensor:
    """Advantages per group of ``n``, where a non-finite reward (recorded by the feedback, filled with 0)
    must not be trained on: such rows get 0 and their group's estimator runs over its finite rewards only."""
    advantages = estimator(rewards, n)
    if bool(finite.all()):
        return advantages
    for g in torch.nonzero(~finite.view(-1, n).all(dim=1)).flatten().tolist():
        rows = slice(g * n, (g + 1) * n)
        ok = finite[rows]
        group = torch.zeros(n, dtype=advantages.dtype)
        if int(ok.sum()) >= 2:
            group[ok] = estimator(rewards[rows][ok], int(ok.sum()))
        advantages[rows] = group
    return advantages


def _loss_kwargs(fn, config: Config) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    wanted = {"clip_eps": config.clip_eps, "clip_eps_high": config.clip_eps_high, "beta": config.beta}
    kwargs = {k: v for k, v in wanted.items() if k in params}
    if "clip_eps" in kwargs and kwargs["clip_eps"] is None and params["clip_eps"].default is not None:
        kwargs.pop("clip_eps")  # a loss that always clips keeps its own default
    if config.beta > 0 and "beta" not in params:
        raise ValueError(f"objective {config.objective!r} has no KL term; use beta=0 or objective=grpo")
    return kwargs


# ----------------------------------------------------------------------------------------------- the loop


class _Trainer:
    """State of one run; ``run()`` below is the loop, read top to bottom."""

    def __init__(self, config: Config):
        from rlxf.feedback import make_feedback_from_spec
        from rlxf.models import load_policy
        from rlxf.objectives import get_objective
        from rlxf.ops import ADVANTAGE_ESTIMATORS
        from rlxf.rollout import TransformersGenerator

        self.config = config
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.objective = get_objective(config.objective)
        if getattr(self.objective, "kind", "policy_gradient") != "policy_gradient":
            raise ValueError(
                f"objective {config.objective!r} is a {self.objective.kind} loss; the online RL recipe takes "
                f"policy-gradient losses (see `rlxf list`); offline preference losses run with `rlxf train dpo`"
            )
        self.loss_kwargs = _loss_kwargs(self.objective, config)
        self.aggregation = config.aggregation or self.objective.default_aggregation
        if config.advantage not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"unknown advantage {config.advantage!r}; one of {sorted(ADVANTAGE_ESTIMATORS)}")
        self.advantage = ADVANTAGE_ESTIMATORS[config.advantage]
        self.feedback = make_feedback_from_spec(config.feedback)
        self.train_rows, self.eval_rows = _load_rows(config)

        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.model, self.tokenizer = load_policy(config.model, device=self.device, seed=config.seed)
        self.model.train()
        from rlxf.models.layout import bf16_is_faster, use_kn_layout

        if config.weight_layout == "kn" or (config.weight_layout == "auto" and self.device.type == "cpu"):
            use_kn_layout(self.model)  # before the optimizer is built: parameters are replaced
        fast_bf16 = bf16_is_faster(self.device) if "auto" in (config.precision, config.generation_precision) else False
        self.precision = config.precision if config.precision != "auto" else ("bf16" if fast_bf16 else "fp32")
        generation_precision = (config.generation_precision if config.generation_precision != "auto"
                                else ("bf16" if fast_bf16 else "fp32"))
        if hasattr(self.model.config, "use_cache"):
            self.model.config.use_cache = False
        self.reference = None
        if config.beta > 0 or config.ref_kl_every > 0:
            self.reference, _ = load_policy(config.model, device=self.device, seed=config.seed)
            self.reference.eval().requires_grad_(False)
        self.eos_ids = {self.tokenizer.eos_token_id}
        self.pad_id = self.tokenizer.pad_token_id
        self.generator = TransformersGenerator(
            self.model, eos_token_ids=self.eos_ids, pad_token_id=self.pad_id,
            autocast_dtype=torch.bfloat16 if generation_precision == "bf16" else None,
        )
        self.sampling_rng = torch.Generator(device=self.device).manual_seed(config.seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay,
            fused=True,  # one kernel over all parameters: 4x faster than foreach on CPU here
        )
        warmup = config.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
        )
        self.params = params
        self.step = 0
        self.train_clock = 0.0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.evals: list[dict[str, Any]] = []
        from rlxf.eval.accuracy import encode_prompts

        self.eval_prompt_ids = encode_prompts(self.tokenizer, self.eval_rows) if self.eval_rows else []

    # -- one step ---------------------------------------------------------------------------------------

    def sample(self, rows: list[dict]):
        from rlxf.eval.accuracy import encode_prompts

        c = self.config
        prompt_ids = encode_prompts(self.tokenizer, rows)
        rollout = self.generator.generate(
            prompt_ids, n=c.samples_per_prompt, max_new_tokens=c.max_new_tokens, temperature=c.temperature,
            rng=self.sampling_rng,
        )
        return prompt_ids, rollout

    def score(self, rows: list[dict], rollout):
        from rlxf.eval.accuracy import context_of
        from rlxf.feedback import validate_scores

        texts = [self.tokenizer.decode(t, skip_special_tokens=True) for t in rollout.completion_token_lists()]
        prompts = [r.get("prompt", "") for r in rows for _ in range(rollout.n)]
        # Token counts of the sampled completions, for length-aware feedback (e.g. length_penalty).
        context = {**context_of(rows, rollout.n), "completion_tokens": rollout.lengths.tolist()}
        scores = self.feedback(prompts, texts, **context)
        return validate_scores(scores, len(texts), on_nonfinite="record"), texts

    def _policy_logps(self, model, prompt_ids, completion_ids, n, *, with_entropy=False):
        from rlxf.models.forward import completion_logprobs

        with _autocast(self.device, self.precision):
            return completion_logprobs(
                model, prompt_ids, completion_ids, n=n, pad_token_id=self.pad_id,
                temperature=self.config.temperature, with_entropy=with_entropy,
            )

    def train_on(self, prompt_ids, rollout, advantages: torch.Tensor) -> dict[str, float]:
        """Forward/backward over the groups that carry gradient, then one (guarded) optimizer step."""
        from rlxf.ops import aggregate, aggregate_denominator, kl_k3, masked_mean

        c, n = self.config, rollout.n
        mask_all = rollout.completion_mask.to(self.device)
        denominator = aggregate_denominator(mask_all, self.aggregation)
        group_adv = advantages.view(-1, n)
        active = [g for g in range(len(prompt_ids))
                  if not (c.skip_zero_advantage and c.beta == 0 and bool((group_adv[g] == 0).all()))]
        per = c.micro_batch_groups or max(1, len(active))
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}

        def record(name, value, weight):
            sums[name] = sums.get(name, 0.0) + float(value) * weight
            weights[name] = weights.get(name, 0.0) + weight

        total_loss = 0.0
        for start in range(0, len(active), per):
            groups = active[start:start + per]
            rows = torch.tensor([g * n + j for g in groups for j in range(n)])
            completion = rollout.completion_ids[rows].to(self.device)
            mask = mask_all[rows.to(self.device)]
            adv = advantages[rows].to(self.device)
            group_prompts = [prompt_ids[g] for g in groups]
            logps, entropy = self._policy_logps(self.model, group_prompts, completion, n, with_entropy=True)
            ref_logps = None
            if c.beta > 0:
                with torch.no_grad():
                    ref_logps, _ = self._policy_logps(self.reference, group_prompts, completion, n)
            tensors = {"policy_logps": logps, "old_logps": logps.detach(), "ref_logps": ref_logps,
                       "advantages": adv, "mask": mask}
            accepted = inspect.signature(self.objective).parameters
            out = self.objective(**{k: v for k, v in tensors.items() if k in accepted and v is not None},
                                 **self.loss_kwargs)
            loss = aggregate(out.loss, mask, self.aggregation, denominator=denominator)
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)  # earlier micro-batches' gradients must not leak
                return {"nonfinite": 1.0, "loss": float("nan")}
            loss.backward()
            total_loss += float(loss.detach())
            tokens = float(mask.sum())
            record("entropy", masked_mean(entropy, mask), tokens)
            record("sampler_logp_diff", masked_mean(
                (logps.detach() - rollout.sampler_logps[rows].to(self.device)).abs(), mask), tokens)
            for name, value in out.metrics.items():
                record(name, value, tokens)
            if ref_logps is not None:
                record("kl", masked_mean(kl_k3(logps.detach(), ref_logps), mask), tokens)
        metrics = {k: sums[k] / weights[k] for k in sums if weights[k] > 0}
        metrics["loss"] = total_loss
        metrics["trained_groups"] = float(len(active))
        if not active:
            self.optimizer.zero_grad(set_to_none=True)
            return metrics
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)
        metrics["grad_norm"] = float(grad_norm)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            metrics["nonfinite"] = 1.0
            return metrics
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return metrics

    @torch.no_grad()
    def reference_kl(self, prompt_ids, rollout) -> float:
        from rlxf.ops import kl_k3, masked_mean

        completion = rollout.completion_ids.to(self.device)
        mask = rollout.completion_mask.to(self.device)
        logps, _ = self._policy_logps(self.model, prompt_ids, completion, rollout.n)
        ref, _ = self._policy_logps(self.reference, prompt_ids, completion, rollout.n)
        return float(masked_mean(kl_k3(logps, ref), mask))

    def evaluate(self) -> dict[str, Any] | None:
        from rlxf.eval.accuracy import evaluate_accuracy

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

    def save(self, run: RunDir) -> Path:
        from rlxf.recipes.checkpoint import save_checkpoint

        return save_checkpoint(
            run.checkpoints / f"step-{self.step:06d}", model=self.model, tokenizer=self.tokenizer,
            optimizer=self.optimizer, scheduler=self.scheduler, sampling_rng=self.sampling_rng,
            trainer_state=self.trainer_state(),
        )

    def restore(self, checkpoint: Path) -> None:
        from rlxf.recipes.checkpoint import load_checkpoint

        state = load_checkpoint(checkpoint, model=self.model, optimizer=self.optimizer,
                                scheduler=self.scheduler, sampling_rng=self.sampling_rng)
        self.step = state["step"]
        self.train_clock = state["train_clock"]
        self.nonfinite_total = state["nonfinite_total"]
        self.nonfinite_in_row = state["nonfinite_in_row"]
        self.evals = state["evals"]


def _fmt_eval(e: dict[str, Any]) -> str:
    lo, hi = e["ci95"]
    return f"{100 * e['accuracy']:.1f}% ({e['correct']}/{e['n']}) [95% CI {100 * lo:.1f}-{100 * hi:.1f}]"


def run(config: Config) -> dict[str, Any]:
    """Train; returns a summary dict (also written to ``<run>/summary.json``)."""
    config = resolve_resume(config, extendable=("max_steps", "time_budget_s", "progress"))
    trainer = _Trainer(config)  # validates data, loads the model: nothing on disk yet
    c = trainer.config
    name = f"{c.objective}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = open_run_dir(trainer, config_to_yaml(c, recipe="online_rl"), default_name=name)
    print(f"run directory: {run_dir.path}")

    return run_recording_status(run_dir, lambda: _loop(trainer, run_dir), step=lambda: trainer.step)


def _loop(trainer: _Trainer, run_dir: RunDir) -> dict[str, Any]:
    from rlxf.eval.plots import plot_run

    c = trainer.config
    if not trainer.evals and trainer.eval_rows:
        before = trainer.evaluate()
        print(f"held-out accuracy before training: {_fmt_eval(trainer.evals[-1])}  ({before['seconds']:.1f} s)")
    stop_reason = "max_steps"
    step_seconds: list[float] = []
    budget = c.time_budget_s if c.time_budget_s > 0 else None
    with progress_bar(c.progress) as bar:
        task = bar.add_task(c.objective, total=budget or c.max_steps, info="") if bar else None
        while trainer.step < c.max_steps:
            if budget is not None and trainer.train_clock >= budget:
                stop_reason = "time_budget"
                break
            t0 = time.perf_counter()
            rows = _step_rows(trainer.train_rows, trainer.step, c.prompts_per_step, c.seed)
            prompt_ids, rollout = trainer.sample(rows)
            t1 = time.perf_counter()
            scores, _texts = trainer.score(rows, rollout)
            t2 = time.perf_counter()
            rewards = scores.values.float()
            finite = ~torch.tensor(scores.info.get("nonfinite") or [False] * len(rewards), dtype=torch.bool)
            advantages = _group_advantages(trainer.advantage, rewards, finite, rollout.n)
            metrics = trainer.train_on(prompt_ids, rollout, advantages)
            t3 = time.perf_counter()
            trainer.step += 1
            nonfinite = metrics.pop("nonfinite", 0.0) > 0
            trainer.nonfinite_in_row = trainer.nonfinite_in_row + 1 if nonfinite else 0
            trainer.nonfinite_total += int(nonfinite)
            groups = rewards.view(-1, rollout.n)
            record = {
                "step": trainer.step,
                "reward_mean": float(rewards[finite].mean()) if finite.any() else math.nan,
                "reward_std": float(rewards[finite].std(unbiased=False)) if finite.any() else math.nan,
                "accuracy": float(np.mean(scores.info["correct"])) if "correct" in scores.info
                else float((rewards >= 0.5).float().mean()),
                "frac_zero_std_groups": float((groups.std(dim=1, unbiased=False) == 0).float().mean()),
                "completion_len": float(rollout.lengths.float().mean()),
                "truncated_frac": float((~rollout.finished).float().mean()),
                "feedback_nonfinite": int(sum(scores.info.get("nonfinite", []) or [0])),
                # Contained feedback (sandboxed code, user reward functions) records these per item.
                "feedback_timeouts": sum(bool(t) for t in scores.info.get("timeout", [])),
                "feedback_errors": sum(e is not None and e is not False for e in scores.info.get("error", [])),
                "skipped_nonfinite": int(nonfinite),
                "lr": trainer.scheduler.get_last_lr()[0],
                **metrics,
                "seconds_generation": t1 - t0,
                "seconds_feedback": t2 - t1,
                "seconds_training": t3 - t2,
            }
            if trainer.reference is not None and c.beta == 0 and c.ref_kl_every and trainer.step % c.ref_kl_every == 0:
                record["kl"] = trainer.reference_kl(prompt_ids, rollout)
            stopping = trainer.nonfinite_in_row >= c.max_nonfinite_steps
            if (c.save_every and trainer.step % c.save_every == 0) or stopping:
                trainer.save(run_dir)
            step_time = time.perf_counter() - t0
            trainer.train_clock += step_time
            step_seconds.append(step_time)
            record["seconds_step"] = step_time
            record["train_seconds"] = trainer.train_clock
            if c.eval_every and trainer.step % c.eval_every == 0 and trainer.eval_rows:
                trainer.evaluate()
                record["heldout_accuracy"] = trainer.evals[-1]["accuracy"]
            run_dir.log(record)
            if bar:
                done = trainer.train_clock if budget else trainer.step
                acc = f" held-out {100 * trainer.evals[-1]['accuracy']:.1f}%" if trainer.evals else ""
                bar.update(task, completed=min(done, budget or c.max_steps),
                           info=f"step {trainer.step} reward {record['reward_mean']:.3f}{acc}")
            if stopping:
                stop_reason = "nonfinite"
                break
    if stop_reason == "nonfinite":
        mark_nonfinite_stop(run_dir, step=trainer.step, max_nonfinite_steps=c.max_nonfinite_steps, command="grpo")
        return {"status": "stopped", "step": trainer.step}

    trainer.save(run_dir)
    from rlxf.models import save_policy

    save_policy(trainer.model, trainer.tokenizer, run_dir.final)
    if trainer.eval_rows and (not trainer.evals or trainer.evals[-1]["step"] != trainer.step):
        trainer.evaluate()
    plot_run(run_dir.read_metrics(), trainer.evals, run_dir.plots)
    summary = _summary(trainer, stop_reason, step_seconds)
    run_dir.set_status("complete", step=trainer.step, reason=stop_reason)
    _print_summary(summary, run_dir)
    return summary


def _summary(trainer: _Trainer, stop_reason: str, step_seconds: list[float]) -> dict[str, Any]:
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


def _print_summary(s: dict[str, Any], run_dir: RunDir) -> None:
    print(f"trained {s['steps']} steps in {s['train_seconds']:.0f} s (median {s['median_step_seconds']:.2f} s/step; "
          f"stopped by {s['stop_reason']})")
    if s["accuracy_before"]:
        print(f"held-out accuracy before: {_fmt_eval(s['accuracy_before'])}")
        print(f"held-out accuracy after:  {_fmt_eval(s['accuracy_after'])}")
        f50 = s["first_above_50"]
        print("first above 50%: " + (f"step {f50['step']} at {f50['train_seconds']:.0f} s of training" if f50
                                       else "never"))
    print(f"wrote {run_dir.path}/: config.yaml metrics.jsonl plots/ checkpoints/ final/ summary.json")
