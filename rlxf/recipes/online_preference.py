"""Online and iterative preference learning: sample from the current policy, compare, learn from fresh pairs.

One loop serves online DPO / OAIF (any registered pair loss on fresh pairs), iterative DPO (the reference is the
previous iterate pi_t, refreshed every ``round_steps``), DNO (large-margin pairs against pi_t), XPO, VPO and HyPO
(pair losses that also read fresh samples), INPO (pairs against pi_t and pi_ref), and the self-play losses SPPO
and Nash-MD (every sample with its estimated win rate). The loss is looked up by name and receives exactly the
tensors its signature declares, each computed by one entry of `rlxf.recipes.preference_batch.PROVIDERS`; no loss
has a branch here.

Per step, as stages::

    rows = next P prompts (in order; a JSONL prompt set is reshuffled each epoch with a seeded order)
    rollout = sample(rows)                        # K completions per prompt from pi_theta, token ids in and out
    comparisons = compare_groups(rows, rollout)   # (P, K, K) preferences: pairwise source (batched, cached) or
                                                  # Bradley-Terry of a pointwise one; each sample's score
    pair losses:      pairs = selector(comparisons)             # best_vs_worst, random_pair, large_margin, ...
                      loss = objective(policy/ref/prev log-probs of chosen and rejected, fresh samples' ...)
    self-play losses: loss = objective(log-probs of every sample, its win rate P(y > pi_t | x))
    mean over pairs (or samples); clip grad norm; skip the update if anything is non-finite; optimizer step
    every round_steps steps: pi_t <- pi_theta      # the "previous iterate" of iterative DPO, DNO, INPO, SPPO

The reference is the initial policy (``reference=initial``) or pi_t (``reference=previous``). Log-probs in the
losses are at temperature 1 (the policy's own probabilities); sampling uses ``temperature``. Groups whose feedback
was not finite give no pairs (never trained on); a step with no valid pair makes no update.
"""
from __future__ import annotations

import copy
import math
import random
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from rlxf import runs
from rlxf.config import ConfigError, option
from rlxf.data import encode_prompts, rows_for_step
from rlxf.eval.accuracy import evaluate_accuracy, format_accuracy
from rlxf.eval.plots import plot_run
from rlxf.feedback import FeedbackError, make_feedback_from_spec
from rlxf.models import load_policy, save_policy
from rlxf.models.layout import use_kn_layout
from rlxf.models.lora import add_lora, save_policy_or_merged
from rlxf.models.precision import resolve_precision
from rlxf.objectives.signature import call_loss, loss_signature, objective_of_kind, resolve_hyperparameters
from rlxf.ops import PAIR_SELECTORS
from rlxf.recipes import meta_rewarding
from rlxf.recipes.comparisons import (
    Comparisons,
    compare_groups,
    compare_to_opponent,
    is_pairwise,
    select_pairs,
)
from rlxf.recipes.preference_batch import PROVIDERS, Batch, Gathered
from rlxf.recipes.prompt_rows import check_prompt_lengths, load_rows
from rlxf.recipes.stages import sample
from rlxf.rollout import GeometricMixtureGenerator, make_generator

PAIR_KINDS = ("preference", "online_preference")
KINDS = (*PAIR_KINDS, "self_play")


@dataclass
class Config(runs.HealthOptions, runs.ResumableRunOptions, runs.OptimizerOptions):
    """Online preference learning (``rlxf train online-dpo``, ``iterative-dpo``, ``dno``, ``xpo``, ``sppo``, ...)."""

    # what to train
    model: str = option("smollm2", "Policy: 'smollm2' (embedded default), 'tiny' (test model) or a directory.")
    prompts: str = option(
        "arithmetic",
        "'arithmetic' ('What is a+b?', a,b in 0..99, drawn with train_seed) or a JSONL file of prompt rows.")
    eval_prompts: str | None = option(
        None, "JSONL file of held-out rows; default for prompts=arithmetic: eval_size problems from eval_seed.")
    feedback: str = option(
        "arithmetic", "Who compares the samples: a pairwise source (pairwise_judge, ...) asked about each pair, or a "
                      "pointwise one (verifier, reward_model:PATH, gold_reward) read as Bradley-Terry P(a > b) = "
                      "sigmoid(r_a - r_b); same spec syntax as `rlxf train grpo` (`rlxf list`).")
    train_seed: int = option(1, "Seed of the arithmetic training pool.")
    eval_seed: int = option(12345, "Seed of the arithmetic held-out set.")
    eval_size: int = option(200, "Held-out problems for accuracy (arithmetic).", ge=0)
    # the algorithm
    objective: str = option(
        "dpo", "Loss by name: a pair loss (dpo, ipo, hinge, ... xpo, vpo, hypo, inpo) or a self-play loss (sppo, "
               "nash_md); see `rlxf list`.")
    loss: dict[str, Any] = option(
        {}, "Loss hyperparameters, loss.<name>=value (e.g. loss.beta=0.1), checked against the objective's function; "
            "unset ones take the function's defaults (config.yaml records all).")
    pairs: str = option("best_vs_worst", "How pair losses pick pairs among a prompt's samples: best_vs_worst, "
                                         "random_pair, all_pairs, large_margin (see rlxf.ops.PAIR_SELECTORS).")
    pair_margin: float = option(
        0.0, "large_margin only: keep pairs whose scores (win rates, or rewards) differ by more than this.", ge=0)
    length_tier: float = option(
        0.1, "length_controlled only (Meta-Rewarding's length control): chosen = the shortest reply scoring within "
             "length_tier x (best - worst) of the best, rejected = the longest within it of the worst.", ge=0, lt=0.5)
    reference: Literal["initial", "previous"] = option(
        "initial", "The loss's reference: the initial policy, or the previous iterate pi_t (refreshed every "
                   "round_steps; needs round_steps > 0).")
    round_steps: int = option(
        0, "Refresh pi_t (the previous iterate) to the current policy every N steps; 0 = pi_t stays the initial "
           "policy.", ge=0)
    sample_every: Literal["step", "round"] = option(
        "step", "When samples are drawn and compared: every step from the current policy (online DPO, OAIF), or once "
                "per round, all round_steps steps' worth from pi_t at the round's start (iterative DPO, SPPO, DNO, "
                "INPO as in their papers; needs round_steps > 0).")
    opponent: Literal["group", "mixture"] = option(
        "group", "Self-play losses: whom each sample's win rate is against: the other samples of its prompt (SPPO's "
                 "estimate of P(y > pi_t | x)), or one sample per prompt from the geometric mixture "
                 "pi^(1-mixture_coef) * pi_ref^mixture_coef, drawn token by token (Nash-MD).")
    mixture_coef: float = option(0.5, "opponent=mixture: the reference's weight in the geometric mixture.", ge=0, le=1)
    meta_rewarding: bool = option(
        False, "Meta-Rewarding (Wu et al. 2024): with feedback=self_judge:samples=N (N >= 2), the policy also "
               "compares its own judgements of each prompt's most disputed reply and trains on those judge-preference "
               "pairs with the same pair loss, alongside the replies' pairs.")
    max_judgement_tokens: int = option(
        0, "meta_rewarding only: judgements longer than this many tokens are never paired (0 = no cap).", ge=0)
    meta_rounds: int = option(
        0, "meta_rewarding only: train judge pairs in the first N rounds of round_steps steps only (the paper trains "
           "the judge in 2 of its 4 iterations); 0 = in every step.", ge=0)
    # sampling
    prompts_per_step: int = option(8, "Distinct prompts per optimizer step.", ge=1)
    samples_per_prompt: int = option(4, "Completions sampled per prompt (K >= 2: pairs are made among them).", ge=2)
    max_new_tokens: int = option(32, "Longest completion during training.", ge=1)
    max_prompt_tokens: int = option(
        1024, "Longest prompt (chat template included) in tokens; a longer row is refused at load with its file:line.",
        ge=1)
    temperature: float = option(1.0, "Sampling temperature.", gt=0)
    generator: Literal["auto", "fast", "transformers"] = option(
        "auto", "Sampling engine: fast (rlxf's llama sampler), transformers (any model), auto = fast where it can.")
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto",
        "Training forward/backward: bf16 autocast or fp32; auto = bf16 where a matmul probe measures it faster.")
    weight_layout: Literal["auto", "kn", "default"] = option(
        "auto", "CPU linear-weight storage; kn (transposed) speeds up small-batch decoding. auto = kn on CPU.")
    # LoRA
    lora_r: int = option(0, "LoRA rank (0 = full fine-tuning).", ge=0)
    lora_alpha: float = option(16.0, "LoRA alpha (scaling alpha / r).", gt=0)
    lora_dropout: float = option(0.0, "LoRA dropout.", ge=0, lt=1)
    lora_targets: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "Modules that get LoRA adapters.")
    # budget and evaluation
    max_steps: int = option(1000, "Stop after this many optimizer steps.", ge=1)
    time_budget_s: float = option(
        1200.0, "Stop at the first step end after this much training time (evaluation and checkpoints excluded). "
                "0 = none.", ge=0)
    eval_every: int = option(10, "Held-out greedy evaluation every N steps (0 = only before and after; only with a "
                                 "pointwise feedback, which grades the replies).", ge=0)
    eval_max_new_tokens: int = option(48, "Longest reply in held-out evaluation.", ge=1)
    eval_batch_size: int = option(100, "Prompts per evaluation batch.", ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pairs not in PAIR_SELECTORS:
            raise ConfigError(f"bad value for 'pairs': unknown selector {self.pairs!r} (one of "
                              f"{', '.join(sorted(PAIR_SELECTORS))})")
        if self.sample_every == "round" and self.round_steps == 0:
            raise ConfigError("sample_every=round needs round_steps > 0 (how many steps' samples a round draws)")
        if self.sample_every == "round" and self.opponent == "mixture":
            raise ConfigError("opponent=mixture samples the opponent from the current policy every step; use "
                              "sample_every=step")
        if self.meta_rounds and self.round_steps == 0:
            raise ConfigError("meta_rounds counts rounds of round_steps steps: set round_steps > 0")
        if self.reference == "previous" and self.round_steps == 0:
            raise ConfigError("reference=previous needs round_steps > 0 (how often pi_t becomes the current policy); "
                              "with round_steps=0 pi_t would stay the initial policy: use reference=initial")


# ------------------------------------------------------------------------------------------------- the trainer


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).eval().requires_grad_(False)


class Trainer:
    """State of one run: the policy, pi_t and the reference, the generator, the feedback and the data."""

    def __init__(self, config: Config):
        c = config
        self.device = runs.resolve_device(c.device)
        runs.set_threads(c.threads)
        self.objective = objective_of_kind(c.objective, KINDS)
        hyperparameters = resolve_hyperparameters(self.objective, c.loss)
        self.declared = loss_signature(self.objective).tensors
        try:
            self.feedback = make_feedback_from_spec(c.feedback)
        except FeedbackError as exc:
            raise ConfigError(f"bad value for 'feedback': {exc}") from None
        self.train_rows, self.eval_rows = load_rows(c, self.feedback)
        if is_pairwise(self.feedback):
            self.eval_rows = []  # a pairwise source grades no single reply: held-out accuracy needs a pointwise one

        random.seed(c.seed)
        np.random.seed(c.seed)
        torch.manual_seed(c.seed)
        model, self.tokenizer = load_policy(c.model, device=self.device, seed=c.seed)
        check_prompt_lengths(c, self.tokenizer, getattr(model.config, "max_position_embeddings", None))
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
        if c.lora_r:
            model = add_lora(model, r=c.lora_r, alpha=c.lora_alpha, dropout=c.lora_dropout, targets=c.lora_targets)
        elif c.weight_layout == "kn" or (c.weight_layout == "auto" and self.device.type == "cpu"):
            use_kn_layout(model)
        model.train()
        self.model = model
        self.pad_id = self.tokenizer.pad_token_id
        self.precision = resolve_precision(c.precision, self.device)
        wants = {name.split("_", 1)[0] for name in self.declared}
        if c.opponent == "mixture":
            if self.objective.kind != "self_play":
                raise ConfigError(f"opponent=mixture is for self-play losses (sppo, nash_md); {c.objective!r} is a "
                                  f"{self.objective.kind} loss trained on pairs")
            wants.add("ref")
        self.previous = _frozen_copy(model) if "prev" in wants or c.reference == "previous" or \
            c.sample_every == "round" else None
        self.reference = self.previous if c.reference == "previous" else (
            _frozen_copy(model) if "ref" in wants else None)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = runs.build_optimizer(self.params, c)
        self.config = replace(c, loss=hyperparameters)
        self.hyperparameters = hyperparameters
        self.special = {"eos_token_ids": {self.tokenizer.eos_token_id}, "pad_token_id": self.pad_id}
        kind = "transformers" if c.lora_r else c.generator
        self.generator = make_generator(model, kind=kind, **self.special)
        self._reference_generator = None
        # sample_every=round draws from pi_t; the round's draws and the state of the random stream they started from
        self.previous_generator = make_generator(self.previous, kind=kind, **self.special) \
            if c.sample_every == "round" else None
        self.round: list[Gathered] = []
        self.round_rng_state: list[int] | None = None
        self.opponent_generator = GeometricMixtureGenerator(
            model, self.reference, mixture_coef=c.mixture_coef, **self.special) if c.opponent == "mixture" else None
        self.sampling_rng = torch.Generator(device=self.device).manual_seed(c.seed)
        if callable(getattr(self.feedback, "bind_policy", None)):  # self_judge: the policy judges its own samples
            # In round mode the judge is pi_t (Self-Rewarding's M_t), also in a run resumed inside a round.
            self.feedback.bind_policy(self.previous if c.sample_every == "round" else model, self.tokenizer,
                                      rng=self.sampling_rng)
        self.meta_judge = self._meta_judge() if c.meta_rewarding else None
        self.step = 0
        self.train_clock = 0.0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.evals: list[dict[str, Any]] = []
        self.eval_prompt_ids = encode_prompts(self.tokenizer, self.eval_rows) if self.eval_rows else []

    @property
    def kind(self) -> str:
        return self.objective.kind

    def models(self, which: str) -> torch.nn.Module:
        return {"policy": self.model, "ref": self.reference, "prev": self.previous}[which]

    def reference_generator(self):
        """A sampler on the reference (XPO's and VPO's samples from pi_ref), built on first use."""
        if self._reference_generator is None:
            kind = "transformers" if self.config.lora_r else self.config.generator
            self._reference_generator = make_generator(self.reference, kind=kind, **self.special)
        return self._reference_generator

    def refresh_previous(self) -> None:
        """pi_t <- pi_theta (the start of a new round)."""
        if self.previous is None:
            return
        with torch.no_grad():
            self.previous.load_state_dict(self.model.state_dict())
        if self._reference_generator is not None and self.reference is self.previous:
            self._reference_generator.load_weights(self.previous.state_dict(), self.step)

    def select(self, comparisons: Comparisons, rollout) -> list[tuple[int, int, int]]:
        """``(group, chosen, rejected)`` sample indices of the step's pairs, from the configured selector."""
        c = self.config
        return select_pairs(c.pairs, comparisons, margin=c.pair_margin, rng=self.sampling_rng,
                            lengths=rollout.lengths.view(-1, rollout.n).float(), length_tier=c.length_tier)

    def _meta_judge(self):
        """Meta-Rewarding's meta-judge: the same self-judge's LM comparing two of its own judgements."""
        c = self.config
        if getattr(self.feedback, "samples", 0) < 2:
            raise ConfigError("meta_rewarding=true needs the policy to write its judgements: "
                              "feedback=self_judge:samples=N with N >= 2")
        if not set(self.declared) <= {f"{w}_{s}_logps" for w in ("policy", "ref", "prev")
                                      for s in ("chosen", "rejected")}:
            raise ConfigError(f"meta_rewarding=true trains judgements with the pair loss; {c.objective!r} also "
                              f"reads fresh samples, which judgements do not have: use dpo, ipo, hinge, ...")
        return meta_rewarding.make_meta_judge(self.feedback.lm)

    def against_opponent(self, rows, rollout, texts, comparisons: Comparisons) -> Comparisons:
        """The samples' win rates against one completion per prompt from the mixture policy (Nash-MD's y')."""
        c = self.config
        opponent = self.opponent_generator.generate(rollout.prompt_ids, n=1, max_new_tokens=c.max_new_tokens,
                                                    temperature=c.temperature, rng=self.sampling_rng)
        opponent_texts = [self.tokenizer.decode(t, skip_special_tokens=True)
                          for t in opponent.completion_token_lists()]
        win_rates, valid = compare_to_opponent(rows, texts, opponent_texts, rollout.n, feedback=self.feedback)
        return replace(comparisons, win_rates=win_rates, valid=comparisons.valid & valid)

    def gather(self, rows: list[dict], generator, rng: torch.Generator) -> Gathered:
        """Sample ``rows`` with ``generator`` and compare the samples."""
        c, seconds = self.config, {}
        if callable(getattr(self.feedback, "use_rng", None)):  # a self-judge's sampled judgements use the same stream
            self.feedback.use_rng(rng)
        t0 = time.perf_counter()
        rollout = sample(rows, generator=generator, tokenizer=self.tokenizer, n=c.samples_per_prompt,
                         max_new_tokens=c.max_new_tokens, temperature=c.temperature, rng=rng)
        texts = [self.tokenizer.decode(t, skip_special_tokens=True) for t in rollout.completion_token_lists()]
        seconds["sample"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        comparisons = compare_groups(rows, texts, rollout.n, feedback=self.feedback)
        if self.opponent_generator is not None:
            comparisons = self.against_opponent(rows, rollout, texts, comparisons)
        seconds["compare"] = time.perf_counter() - t0
        if self.meta_judge is None or (c.meta_rounds and self.step // c.round_steps >= c.meta_rounds):
            return Gathered(rows, rollout, comparisons, seconds)
        t0 = time.perf_counter()
        with self.feedback.judging():
            judge_pairs, judge_metrics = meta_rewarding.judge_preference_pairs(
                rows, texts, rollout.n, comparisons.info, meta_judge=self.meta_judge,
                max_judgement_tokens=c.max_judgement_tokens or None)
        seconds["meta_judge"] = time.perf_counter() - t0
        return Gathered(rows, rollout, comparisons, seconds, judge_pairs, judge_metrics)

    def round_data(self) -> Gathered:
        """This step's share of its round's samples, all drawn from pi_t at the round's start. A run resumed
        mid-round draws the round again from pi_t (saved with the checkpoint) with the random stream's state at the
        round's start, so it trains on the very samples the uninterrupted run did."""
        c = self.config
        start = self.step - self.step % c.round_steps
        if not self.round:
            rng = self.sampling_rng
            if self.step == start:
                self.round_rng_state = self.sampling_rng.get_state().tolist()
            else:  # resumed inside a round: replay its draws on a private stream
                rng = torch.Generator(device=self.device)
                rng.set_state(torch.tensor(self.round_rng_state, dtype=torch.uint8))
            self.round = [self.gather(rows_for_step(self.train_rows, s, c.prompts_per_step, c.seed),
                                      self.previous_generator, rng) for s in range(start, start + c.round_steps)]
            self.round[self.step - start].seconds["sample_round"] = sum(g.seconds["sample"] for g in self.round)
        gathered = self.round[self.step - start]
        if self.step - start == c.round_steps - 1:
            self.round = []
        return gathered

    def train_step(self, rows: list[dict]) -> dict[str, float]:
        """sample -> compare -> pairs -> loss -> optimizer step (see the module docstring); the step's metrics."""
        gathered = self.round_data() if self.config.sample_every == "round" else \
            self.gather(rows, self.generator, self.sampling_rng)
        rows, rollout, comparisons, seconds, judge_pairs, judge_metrics = gathered
        seconds = dict(seconds)
        t0 = time.perf_counter()
        pairs = self.select(comparisons, rollout) if self.kind in PAIR_KINDS else []
        batch = Batch(self, rows, rollout, comparisons, pairs, judge_pairs)
        trained = len(pairs) + len(judge_pairs or ()) if self.kind in PAIR_KINDS else \
            len(batch.trained_groups()) * rollout.n
        metrics = {**_comparison_metrics(comparisons, pairs, rollout), **judge_metrics}
        metrics["trained_rows"] = float(trained)
        if trained:
            metrics.update(self._update(batch))
        self.optimizer.zero_grad(set_to_none=True)
        self.generator.load_weights(self.model.state_dict(), self.step + 1)
        seconds["train"] = time.perf_counter() - t0
        return {**metrics, **{f"seconds_{k}": v for k, v in seconds.items()}}

    def _update(self, batch: Batch) -> dict[str, float]:
        tensors = {name: PROVIDERS[name](batch) for name in self.declared}
        out = call_loss(self.objective, tensors, self.hyperparameters)
        loss = out.loss.mean()
        metrics = {name: float(value) for name, value in out.metrics.items()}
        if not torch.isfinite(loss):
            return {**metrics, "loss": float(loss), "nonfinite": 1.0}
        loss.backward()
        grad_norm = runs.guarded_step(self.optimizer, self.scheduler, self.params, self.config.max_grad_norm)
        metrics.update(loss=float(loss.detach()), grad_norm=grad_norm)
        return metrics if math.isfinite(grad_norm) else {**metrics, "nonfinite": 1.0}

    def evaluate(self) -> None:
        if not self.eval_rows:
            return
        c = self.config
        report = evaluate_accuracy(self.model, self.tokenizer, self.eval_rows, self.feedback,
                                   batch_size=c.eval_batch_size, max_new_tokens=c.eval_max_new_tokens,
                                   prompt_ids=self.eval_prompt_ids, generator=self.generator)
        self.model.train()
        self.evals.append({"step": self.step, "train_seconds": self.train_clock,
                           **{k: report[k] for k in ("n", "correct", "accuracy", "ci95", "mean_completion_tokens",
                                                     "seconds")}})

    # -- persistence ------------------------------------------------------------------------------------

    def trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "train_clock": self.train_clock, "nonfinite_total": self.nonfinite_total,
                "nonfinite_in_row": self.nonfinite_in_row, "evals": self.evals,
                "round_rng_state": self.round_rng_state}

    def save(self, run: runs.RunDir) -> Path:
        path = runs.save_checkpoint(
            run.checkpoints / f"step-{self.step:06d}", model=self.model, tokenizer=self.tokenizer,
            optimizer=self.optimizer, scheduler=self.scheduler, sampling_rng=self.sampling_rng,
            trainer_state=self.trainer_state(),
            # pi_t is written inside the atomic checkpoint; without rounds it is the initial policy, rebuilt on load
            extras=self._save_previous if self.previous is not None and self.config.round_steps else None)
        return path

    def _save_previous(self, directory: Path) -> None:
        save_model(self.previous, str(directory / "previous.safetensors"))  # handles the tied embedding

    def restore(self, checkpoint: Path) -> None:
        state = runs.load_checkpoint(checkpoint, model=self.model, optimizer=self.optimizer,
                                     scheduler=self.scheduler, sampling_rng=self.sampling_rng)
        self.step, self.train_clock, self.evals = state["step"], state["train_clock"], state["evals"]
        self.nonfinite_total, self.nonfinite_in_row = state["nonfinite_total"], state["nonfinite_in_row"]
        self.round_rng_state = state["round_rng_state"]
        if self.previous is not None and self.config.round_steps:
            load_model(self.previous, str(checkpoint / "previous.safetensors"))
        self.generator.load_weights(self.model.state_dict(), self.step)


def _comparison_metrics(comparisons: Comparisons, pairs: list[tuple[int, int, int]], rollout) -> dict[str, float]:
    valid = comparisons.valid
    metrics = {"comparisons": float(comparisons.calls), "comparisons_cached": float(comparisons.cached),
               "feedback_invalid_groups": float((~valid).sum()), "pairs": float(len(pairs)),
               "completion_len": float(rollout.lengths.float().mean()),
               "truncated_frac": float((~rollout.finished).float().mean())}
    if comparisons.rewards is not None and bool(valid.any()):
        metrics["reward_mean"] = float(comparisons.rewards[valid].mean())
    if pairs:
        scores = comparisons.scores
        metrics["chosen_score"] = float(torch.stack([scores[g, i] for g, i, _ in pairs]).mean())
        metrics["rejected_score"] = float(torch.stack([scores[g, j] for g, _, j in pairs]).mean())
        metrics["chosen_win_rate"] = float(torch.stack([comparisons.prefs[g, i, j] for g, i, j in pairs]).mean())
    return metrics


# ---------------------------------------------------------------------------------------------------- the loop


def run(config: Config) -> dict[str, Any]:
    """Train; returns a summary dict (also written to ``<run>/summary.json``)."""
    trainer, run_dir = runs.start_run(config, Trainer, recipe="online_preference")
    print(f"precision: training {trainer.precision}; feedback: "
          f"{'pairwise' if is_pairwise(trainer.feedback) else 'pointwise, read as Bradley-Terry'}")
    return runs.run_recording_status(run_dir, lambda: _loop(trainer, run_dir), step=lambda: trainer.step)


def _loop(trainer: Trainer, run_dir: runs.RunDir) -> dict[str, Any]:
    c = trainer.config
    if not trainer.evals and trainer.eval_rows:
        trainer.evaluate()
        print(f"held-out accuracy before training: {format_accuracy(trainer.evals[-1])}")
    with runs.StepLoop(trainer, max_steps=c.max_steps, time_budget_s=c.time_budget_s,
                       max_nonfinite_steps=c.max_nonfinite_steps, progress=c.progress, label=c.objective,
                       run_dir=run_dir, health=c.health_monitor()) as loop:
        while loop.running():
            t0 = time.perf_counter()
            rows = rows_for_step(trainer.train_rows, trainer.step, c.prompts_per_step, c.seed)
            metrics = trainer.train_step(rows)
            nonfinite = loop.count_step(metrics)
            if c.round_steps and trainer.step % c.round_steps == 0:
                trainer.refresh_previous()
            step_time = time.perf_counter() - t0
            loop.add_time(step_time)
            record = {"step": trainer.step, "lr": trainer.scheduler.get_last_lr()[0], **metrics,
                      "skipped_nonfinite": int(nonfinite), "seconds_step": step_time,
                      "train_seconds": trainer.train_clock}
            if c.eval_every and trainer.step % c.eval_every == 0 and trainer.eval_rows:
                trainer.evaluate()
                record["heldout_accuracy"] = trainer.evals[-1]["accuracy"]
            loop.finish_step(record, save_every=c.save_every, keep_checkpoints=c.keep_checkpoints,
                             text=f"pairs {record['pairs']:.0f}" + (f" reward {record['reward_mean']:.3f}"
                                                                    if "reward_mean" in record else ""))
            if loop.stopping:
                break
    if loop.stopping:
        reason = runs.nonfinite_reason(c.max_nonfinite_steps) if loop.stop_reason == "nonfinite" else loop.stop_reason
        runs.mark_stopped(run_dir, step=trainer.step, reason=reason, command=c.objective)
        return _summary(trainer, "stopped", reason, loop.step_seconds, loop.health.counts)
    runs.save_run_checkpoint(trainer, run_dir, keep=c.keep_checkpoints)
    if c.lora_r:
        save_policy_or_merged(trainer.model, trainer.tokenizer, run_dir.final)
    else:
        save_policy(trainer.model, trainer.tokenizer, run_dir.final)
    if trainer.eval_rows and (not trainer.evals or trainer.evals[-1]["step"] != trainer.step):
        trainer.evaluate()
    if c.plots:
        plot_run(run_dir.read_metrics(), trainer.evals, run_dir.plots)
    summary = _summary(trainer, "complete", loop.stop_reason, loop.step_seconds, loop.health.counts)
    run_dir.set_status("complete", step=trainer.step, reason=loop.stop_reason)
    print(f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s "
          f"(median {summary['median_step_seconds']:.2f} s/step; stopped by {summary['stop_reason']})")
    if trainer.evals:
        print(f"held-out accuracy before: {format_accuracy(trainer.evals[0])}")
        print(f"held-out accuracy after:  {format_accuracy(trainer.evals[-1])}")
    print(f"wrote {run_dir.path}/: config.yaml metrics.jsonl plots/ checkpoints/ final/ summary.json")
    return summary


def _summary(trainer: Trainer, status: str, stop_reason: str, step_seconds: list[float],
             alarm_steps: dict[str, int]) -> dict[str, Any]:
    evals = trainer.evals
    return {"status": status, "stop_reason": stop_reason, "steps": trainer.step, "train_seconds": trainer.train_clock,
            "median_step_seconds": statistics.median(step_seconds) if step_seconds else math.nan,
            "nonfinite_steps": trainer.nonfinite_total, "precision": trainer.precision,
            "accuracy_before": evals[0] if evals else None, "accuracy_after": evals[-1] if evals else None,
            "alarm_steps": alarm_steps, "evals": evals}
