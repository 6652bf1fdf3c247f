"""The loop every offline preference recipe shares: fixed data, a cached reference, held-out preference metrics.

``rlxf train dpo`` (paired losses, `rlxf.recipes.preference`), ``rlxf train kto`` (unpaired, `rlxf.recipes.kto`)
and ``rlxf train group-robust-dpo`` (`rlxf.recipes.group_robust_dpo`) differ only in what a batch feeds the loss;
that is their trainer's :meth:`OfflineTrainer.micro_batch_tensors` (and an optional :meth:`before_batch`). Everything
else is here.

Before training::

    rows = load + check + tokenise the data (every bad row reported as file:line)
    split off the held-out pairs (seeded, fixed: eval_rows.json in the run directory lists them)
    batches = fixed length-bucketed batches (sort by length within windows of bucket_window batches)
    add LoRA adapters (when lora_r > 0)
    ref = reference log-probs of every sequence, computed once with the initial weights (LoRA: adapters off)
          through the computation the held-out evaluation uses, and cached on disk, keyed by the weights, the
          token ids, the batch plan, the precision and the forward path

Per optimizer step (one batch of ``batch_size`` rows, in a seeded order of the fixed batches per epoch)::

    context = before_batch(batch)                         # e.g. KTO's batch KL, group-robust DPO's weights
    for each micro-batch:  tensors = the loss's declared inputs (one forward for chosen and rejected)
        loss = objective(**tensors, **loss hyperparameters).loss.sum() / batch_size ; backward
    clip grad norm; skip the step if anything is non-finite; optimizer step

Dividing each micro-batch's summed per-row loss by the whole batch's size makes gradient accumulation exactly
the big batch (test: values and gradients). The reference model is never in memory during training: its
log-probs come from the cache (or were computed by the policy itself before its first step).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rlxf import runs
from rlxf.config import ConfigError, option
from rlxf.data import DataError, make_batches, padding_slots
from rlxf.data.preferences import data_fingerprint, load_preference_split
from rlxf.eval.plots import plot_preference_run
from rlxf.eval.preference import evaluate_preferences, format_preference_eval
from rlxf.models import load_policy
from rlxf.models.logps import uses_packed_forward
from rlxf.models.lora import LoraWeights, add_lora, save_policy_or_merged
from rlxf.models.precision import resolve_precision
from rlxf.models.reference import cached_reference_logps, model_fingerprint
from rlxf.objectives.signature import call_loss, loss_signature, objective_of_kind, resolve_hyperparameters
from rlxf.recipes.batch_loop import train_fixed_batches

CACHE_VERSION = 3


@dataclass
class OfflineConfig(runs.ResumableRunOptions, runs.OptimizerOptions):
    """Offline preference optimisation on a fixed data set (the fields every offline recipe shares)."""

    # the batches are fixed, so more epochs on resume continue the same order
    RESUME_CHANGEABLE = (*runs.ResumableRunOptions.RESUME_CHANGEABLE, "epochs")

    # what to train
    model: str = option("smollm2", "Policy (and reference): 'smollm2', 'tiny' (test model) or a directory.")
    data: str = option(
        "hh_harmless_512",
        "Preference JSONL(.gz): prompt/chosen/rejected strings, conversational messages, raw HH transcripts or "
        "unpaired prompt/completion/label rows; 'hh_harmless_512' = 512 HH-RLHF harmless pairs shipped with rlxf.",
    )
    eval_data: str | None = option(None, "Held-out preference file; default: split eval_fraction off `data`.")
    eval_fraction: float = option(0.1, "Held-out share of `data` when eval_data is not given.", ge=0, lt=1)
    eval_size: int = option(0, "Held-out pairs (overrides eval_fraction when > 0).", ge=0)
    split_seed: int = option(0, "Seed of the held-out split (eval_rows.json in the run lists the rows).")
    strict: bool = option(True, "Stop on any bad data row (false: skip and count them).")
    max_prompt_tokens: int = option(256, "Prompts longer than this lose tokens from the left.", ge=1)
    max_completion_tokens: int = option(128, "Completions longer than this lose tokens from the right.", ge=1)
    # the algorithm
    objective: str = option("dpo", "Loss by name (see `rlxf list`).")
    loss: dict[str, Any] = option(
        {}, "Loss hyperparameters, loss.<name>=value (e.g. loss.beta=0.1): keyword arguments of the objective's "
            "function, checked against it; unset ones take the function's defaults (config.yaml records all).")
    # optimisation
    batch_size: int = option(8, "Rows (pairs, or KTO's completions) per optimizer step.", ge=1)
    micro_batch_size: int = option(0, "Rows per forward/backward (0 = the whole batch); exact accumulation.", ge=0)
    epochs: int = option(1, "Passes over the training rows (used when max_steps = 0).", ge=1)
    max_steps: int = option(0, "Stop after this many optimizer steps (0 = epochs x batches per epoch).", ge=0)
    lr: float = option(5e-6, "Learning rate (AdamW; constant after warmup).", gt=0)
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto", "Forward/backward (and reference) precision: bf16 autocast or fp32; auto = bf16 where faster."
    )
    bucket_window: int = option(32, "Sort by length within windows of this many batches (1 = no bucketing).", ge=1)
    gradient_checkpointing: bool = option(
        False, "Keep only each decoder layer's input and rerun the layer in backward: less memory, ~1/3 more "
               "compute (packed and transformers paths alike).")
    packed_forward: bool = option(
        True, "Run plain Llama models (SmolLM2) through rlxf.models.packed: no padding, leaner activations, same "
              "maths; false = the transformers modules (other architectures and LoRA always use them).")
    # LoRA
    lora_r: int = option(0, "LoRA rank (0 = full fine-tuning). The reference is then the model, adapters off.", ge=0)
    lora_alpha: float = option(16.0, "LoRA alpha (scaling alpha / r).", gt=0)
    lora_dropout: float = option(0.0, "LoRA dropout.", ge=0, lt=1)
    lora_targets: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "Modules that get LoRA adapters.")
    # reference cache, budget and evaluation
    ref_cache: bool = option(True, "Cache reference log-probs on disk under the rlxf cache ($RLXF_CACHE).")
    time_budget_s: float = option(0.0, "Stop at the first step end after this much training time. 0 = none.", ge=0)
    eval_every: int = option(25, "Held-out evaluation every N steps (0 = only before and after training).", ge=0)
    eval_batch_size: int = option(16, "Pairs per forward in evaluation and reference passes.", ge=1)


# ----------------------------------------------------------------------------------------------- the trainer


class OfflineTrainer(ABC):
    """State of one offline run; :func:`run` is the loop.

    Public for callers that drive their own loop (the benchmark, notebooks): ``Trainer(config)`` loads the model
    and data and computes (or loads) the reference log-probs, then each ``train_step(batch_for_step(...))`` is one
    optimizer step. It writes nothing to disk; :func:`run` adds the run directory, checkpoints and evaluation.
    Subclasses say which loss kind they train (``KIND``), what each row's completions are (:meth:`completions`),
    what the reference must score (:meth:`reference_jobs`) and what a micro-batch feeds the loss
    (:meth:`micro_batch_tensors`).
    """

    KIND = "preference"
    COMMAND = "dpo"
    PROVIDES: frozenset[str] = frozenset()  # the tensor inputs this trainer can hand a loss

    def __init__(self, config: OfflineConfig):
        self.config = c = config
        self.device = runs.resolve_device(c.device)
        runs.set_threads(c.threads)
        self.objective = objective_of_kind(c.objective, self.KIND)
        self.hyperparameters = resolve_hyperparameters(self.objective, c.loss)
        self.config = c = replace(c, loss=self.hyperparameters)  # config.yaml records every value used
        self.tensor_names = self._tensor_names()
        # beta of the implicit reward beta * log(pi/pi_ref) the evaluation reports: the loss's own, else 0.1
        self.beta = self.hyperparameters.get("beta", 0.1)

        random.seed(c.seed)
        np.random.seed(c.seed)
        torch.manual_seed(c.seed)
        self.model, self.tokenizer = load_policy(c.model, device=self.device, seed=c.seed)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            raise ValueError(f"the tokenizer of {c.model!r} has no pad token")
        self.data = load_preference_split(
            c.data, self.tokenizer, eval_data=c.eval_data, eval_fraction=c.eval_fraction, eval_size=c.eval_size,
            split_seed=c.split_seed, strict=c.strict, max_prompt_tokens=c.max_prompt_tokens,
            max_completion_tokens=c.max_completion_tokens, unpaired=self.KIND == "unpaired")
        if len(self.data.train) < c.batch_size:
            raise DataError(f"{c.data}: {len(self.data.train)} training rows, fewer than batch_size={c.batch_size}")
        self.check_data()
        self.precision = resolve_precision(c.precision, self.device)
        self.packed = None if c.packed_forward else False  # None: packed wherever the model supports it
        self.batches = make_batches(self.data.train, c.batch_size, c.bucket_window, c.seed,
                                    length=lambda item: len(item.prompt_ids) + max(map(len, self.completions(item))))
        self.max_steps = c.max_steps or c.epochs * len(self.batches)
        self._reference()
        if hasattr(self.model.config, "use_cache"):
            self.model.config.use_cache = False
        if c.gradient_checkpointing:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = runs.build_optimizer(self.params, c)
        self.rng = torch.Generator().manual_seed(c.seed)  # checkpointed; dropout draws from the global RNG
        self.step = 0
        self.train_clock = 0.0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.evals: list[dict[str, Any]] = []
        self.displacement_warned = False

    def _tensor_names(self) -> list[str]:
        """The loss's tensor inputs this trainer hands it; a required one it cannot provide is an error."""
        sig = loss_signature(self.objective)
        missing = sorted(sig.required - self.PROVIDES)
        if missing:
            raise ConfigError(f"objective {self.config.objective!r} needs {', '.join(missing)}, which "
                              f"`rlxf train {self.COMMAND}` does not provide; train it with "
                              f"`rlxf train {self.objective.recipe}`")
        return [name for name in sig.tensors if name in self.PROVIDES]

    def _reference(self) -> None:
        """The reference: the initial weights. Fingerprinted before any adapter exists; evaluated after LoRA is
        added (adapters off), through the very path and batches of the held-out evaluation, so that before the
        first step every held-out margin is exactly 0 by construction (adapters start at B = 0)."""
        c = self.config
        base_fingerprint = model_fingerprint(self.model)
        if c.lora_r > 0:
            self.model = add_lora(self.model, r=c.lora_r, alpha=c.lora_alpha, dropout=c.lora_dropout,
                                  targets=c.lora_targets)
        path = "packed" if uses_packed_forward(self.model, self.packed) else "padded"
        self.ref_key = hashlib.sha256(json.dumps([
            CACHE_VERSION, base_fingerprint, data_fingerprint(self.data.train), data_fingerprint(self.data.eval),
            self.reference_key_extra(), self.precision, self.device.type, path, c.eval_batch_size,
        ]).encode()).hexdigest()[:32]
        jobs = self.reference_jobs()
        if self.data.eval:
            jobs["eval"] = ([p.prompt_ids for p in self.data.eval], [(p.chosen_ids, p.rejected_ids)
                                                                     for p in self.data.eval])
        t0 = time.perf_counter()
        self.ref, self.ref_cache_status = cached_reference_logps(
            self.model, jobs, key=self.ref_key, use_cache=c.ref_cache, pad_token_id=self.pad_id,
            batch_size=c.eval_batch_size, precision=self.precision, packed=self.packed)
        self.ref_seconds = time.perf_counter() - t0

    # -- what subclasses say ----------------------------------------------------------------------------

    def completions(self, item) -> tuple:
        """The completions of one training row (a pair's chosen and rejected)."""
        return item.chosen_ids, item.rejected_ids

    def check_data(self) -> None:
        """Refuse data that lacks a field the loss needs (before anything is written); nothing to check here."""
        return None

    def reference_key_extra(self) -> Any:
        """Anything besides weights and token ids the reference log-probs depend on."""
        return None

    def reference_jobs(self) -> dict[str, tuple]:
        """What the reference scores for training: ``name -> (prompts, completions per prompt)``."""
        train = self.data.train
        return {"train": ([r.prompt_ids for r in train], [self.completions(r) for r in train])}

    def before_batch(self, batch: list[int]) -> dict[str, torch.Tensor]:
        """Work on the whole batch before its micro-batches (none by default); passed to each micro-batch."""
        return {}

    @abstractmethod
    def micro_batch_tensors(self, idx: list[int], context: dict) -> tuple[dict, dict[str, int], dict[str, float]]:
        """``(the loss's tensors, slots {total, padding}, sums of per-row values to log as batch means)``."""

    def after_step(self, metrics: dict[str, float]) -> None:
        """Bookkeeping after an applied optimizer step (metrics may be added); none here."""
        return None

    def extra_state(self) -> dict[str, Any]:
        """What a subclass checkpoints besides the common state."""
        return {}

    def restore_extra(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state` (nothing here)."""
        return None

    # -- one step ---------------------------------------------------------------------------------------

    def accumulate(self, batch: list[int]) -> dict[str, float]:
        """Forward/backward over micro-batches of ``batch``, each micro-batch's summed per-row loss divided by
        the whole batch's size, so the accumulated gradient is the big batch's. ``nonfinite`` in the result
        (and no gradient left behind) when a loss is not finite."""
        per, total = self.config.micro_batch_size or len(batch), len(batch)
        context = self.before_batch(batch)
        sums: dict[str, float] = {}
        logged: dict[str, float] = {}
        loss_total = 0.0
        slots = {"total": 0, "padding": 0}
        for start in range(0, total, per):
            idx = batch[start:start + per]
            tensors, s, values = self.micro_batch_tensors(idx, context)
            slots = {k: slots[k] + s[k] for k in slots}
            for name, value in values.items():
                logged[name] = logged.get(name, 0.0) + value
            out = call_loss(self.objective, tensors, self.hyperparameters)
            loss = out.loss.float().sum() / total
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)  # earlier micro-batches' gradients must not leak
                return {"nonfinite": 1.0, "loss": math.nan}
            loss.backward()
            loss_total += float(loss.detach())
            for name, value in out.metrics.items():
                sums[name] = sums.get(name, 0.0) + float(value) * len(idx) / total
        metrics = {"loss": loss_total, **sums, **{k: v / total for k, v in logged.items()}}
        metrics["tokens"] = slots["total"] - slots["padding"]
        metrics["padding_frac"] = slots["padding"] / max(slots["total"], 1)
        return metrics

    def train_step(self, batch: list[int]) -> dict[str, float]:
        """:meth:`accumulate`, then one guarded optimizer step (skipped when anything is non-finite)."""
        metrics = self.accumulate(batch)
        if metrics.get("nonfinite"):
            return metrics
        metrics["grad_norm"] = runs.guarded_step(self.optimizer, self.scheduler, self.params,
                                                 self.config.max_grad_norm)
        if not math.isfinite(metrics["grad_norm"]):
            metrics["nonfinite"] = 1.0
            return metrics
        self.after_step(metrics)
        return metrics

    # -- evaluation ---------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any] | None:
        if not self.data.eval:
            return None
        report = evaluate_preferences(
            self.model, self.data.eval, self.ref["eval.0"], self.ref["eval.1"], beta=self.beta,
            pad_token_id=self.pad_id, batch_size=self.config.eval_batch_size, precision=self.precision,
            packed=self.packed)
        record = {"step": self.step, "train_seconds": self.train_clock, **report}
        first = self.evals[0] if self.evals else None
        if first is not None:
            record["chosen_logps_change"] = record["chosen_logps"] - first["chosen_logps"]
            record["rejected_logps_change"] = record["rejected_logps"] - first["rejected_logps"]
            record["likelihood_displacement"] = bool(
                record["chosen_logps_change"] < 0 and record["rejected_logps_change"] < 0)
            if record["likelihood_displacement"] and not self.displacement_warned:
                self.displacement_warned = True
                print(f"warning: likelihood displacement at step {self.step}: held-out log-probs of both chosen "
                      f"({record['chosen_logps_change']:+.2f}) and rejected ({record['rejected_logps_change']:+.2f}) "
                      f"responses fell since training began; the margin grows by pushing both down",
                      file=sys.stderr)
        self.evals.append(record)
        return record

    # -- persistence --------------------------------------------------------------------------------------

    def _checkpoint_model(self):
        return LoraWeights(self.model) if self.config.lora_r > 0 else self.model

    def trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "data_position": self.step * self.config.batch_size,
                "train_clock": self.train_clock, "nonfinite_total": self.nonfinite_total,
                "nonfinite_in_row": self.nonfinite_in_row, "evals": self.evals, "ref_key": self.ref_key,
                "displacement_warned": self.displacement_warned, **self.extra_state()}

    def save(self, run: runs.RunDir) -> Path:
        return runs.save_checkpoint(
            run.checkpoints / f"step-{self.step:06d}", model=self._checkpoint_model(), tokenizer=self.tokenizer,
            optimizer=self.optimizer, scheduler=self.scheduler, sampling_rng=self.rng,
            trainer_state=self.trainer_state())

    def restore(self, checkpoint: Path) -> None:
        state = runs.load_checkpoint(checkpoint, model=self._checkpoint_model(), optimizer=self.optimizer,
                                     scheduler=self.scheduler, sampling_rng=self.rng)
        self.step = state["step"]
        self.train_clock = state["train_clock"]
        self.nonfinite_total = state["nonfinite_total"]
        self.nonfinite_in_row = state["nonfinite_in_row"]
        self.evals = state["evals"]
        self.displacement_warned = state.get("displacement_warned", False)
        self.restore_extra(state)


# ----------------------------------------------------------------------------------------------- the loop


def run(config: OfflineConfig, trainer_cls: type[OfflineTrainer]) -> dict[str, Any]:
    """Train with ``trainer_cls``; returns a summary dict (also written to ``<run>/summary.json``)."""
    # the trainer validates the data, loads the model and computes the reference log-probs: nothing on disk yet
    trainer, run_dir = runs.start_run(config, trainer_cls, recipe=trainer_cls.COMMAND)
    c = trainer.config
    if not c.resume:
        (run_dir.path / "eval_rows.json").write_text(json.dumps(trainer.data.eval_sources, indent=0))
    d = trainer.data
    print(f"data: {len(d.train)} training {'rows' if trainer.KIND == 'unpaired' else 'pairs'}, {len(d.eval)} "
          f"held-out pairs ({d.format} format){f', {len(d.problems)} bad rows skipped' if d.problems else ''}; "
          f"{len(trainer.batches)} batches of {c.batch_size}, {trainer.max_steps} steps")
    print(f"reference log-probs: cache {trainer.ref_cache_status} ({trainer.ref_seconds:.1f} s)")
    return runs.run_recording_status(run_dir, lambda: _loop(trainer, run_dir), step=lambda: trainer.step)


def _loop(trainer: OfflineTrainer, run_dir: runs.RunDir) -> dict[str, Any]:
    c = trainer.config
    loop, tokens_per_s = train_fixed_batches(
        trainer, run_dir, describe_eval=format_preference_eval,
        heldout_record=lambda e: {f"heldout_{k}": e[k] for k in ("accuracy", "margin", "ranking_accuracy",
                                                                  "chosen_logps", "rejected_logps")})
    if loop.stop_reason == "nonfinite":
        runs.mark_stopped(run_dir, step=trainer.step, reason=runs.nonfinite_reason(c.max_nonfinite_steps),
                          command=trainer.COMMAND)
        return {"status": "stopped", "step": trainer.step, "nonfinite_steps": trainer.nonfinite_total}

    if trainer.data.eval and (not trainer.evals or trainer.evals[-1]["step"] != trainer.step):
        trainer.evaluate()
    runs.save_run_checkpoint(trainer, run_dir, keep=c.keep_checkpoints)
    save_policy_or_merged(trainer.model, trainer.tokenizer, run_dir.final)
    if c.plots:
        plot_preference_run(run_dir.read_metrics(), trainer.evals, run_dir.plots)
    summary = _summary(trainer, loop.stop_reason, loop.step_seconds, tokens_per_s)
    run_dir.set_status("complete", step=trainer.step, reason=loop.stop_reason)
    _print_summary(summary, run_dir)
    return summary


def _summary(trainer: OfflineTrainer, stop_reason: str, step_seconds: list[float], tokens_per_s: list[float]):
    evals = trainer.evals
    return {
        "status": "complete",
        "stop_reason": stop_reason,
        "objective": trainer.config.objective,
        "steps": trainer.step,
        "train_seconds": trainer.train_clock,
        "median_step_seconds": statistics.median(step_seconds) if step_seconds else math.nan,
        "median_tokens_per_s": statistics.median(tokens_per_s) if tokens_per_s else math.nan,
        "padding_frac": _mean_padding(trainer),
        "nonfinite_steps": trainer.nonfinite_total,
        "reference_cache": trainer.ref_cache_status,
        "reference_seconds": trainer.ref_seconds,
        "skipped_rows": len(trainer.data.problems),
        "heldout_before": evals[0] if evals else None,
        "heldout_after": evals[-1] if evals else None,
        "likelihood_displacement": trainer.displacement_warned,
        "evals": evals,
    }


def _mean_padding(trainer: OfflineTrainer) -> float:
    """Share of the token positions of one full pass over the fixed batches that are padding."""
    total = padding = 0
    for batch in trainer.batches:
        items = [trainer.data.train[i] for i in batch]
        slots = padding_slots([r.prompt_ids for r in items], [trainer.completions(r) for r in items])
        total, padding = total + slots["total"], padding + slots["padding"]
    return padding / max(total, 1)


def _print_summary(s: dict[str, Any], run_dir: runs.RunDir) -> None:
    print(f"trained {s['steps']} steps in {s['train_seconds']:.0f} s (median {s['median_step_seconds']:.2f} s/step, "
          f"{s['median_tokens_per_s']:.0f} tokens/s, {100 * s['padding_frac']:.1f}% padding; stopped by "
          f"{s['stop_reason']})")
    if s["heldout_before"]:
        print(f"held-out before: {format_preference_eval(s['heldout_before'])}")
        print(f"held-out after:  {format_preference_eval(s['heldout_after'])}")
    if s["likelihood_displacement"]:
        print("warning: likelihood displacement: held-out chosen and rejected log-probs both fell during training",
              file=sys.stderr)
    print(f"wrote {run_dir.path}/: config.yaml metrics.jsonl eval_rows.json plots/ checkpoints/ final/ summary.json")
