"""Supervised fine-tuning on demonstrations (``rlxf train sft``): masked NLL on the assistant's tokens.

The default run fine-tunes SmolLM2-135M-Instruct on 512 GSM8K training problems with their worked solutions,
shipped with rlxf (``data=gsm8k_train_512``), and reports held-out token accuracy and NLL.

Before training::

    rows = load + check + tokenise the demonstrations (chat template; labels True on assistant tokens only;
           every bad row reported as file:line)
    split off the held-out rows (seeded, fixed: eval_rows.json in the run directory lists them)
    batches = fixed length-bucketed batches (sort by length within windows of bucket_window batches)
    add LoRA adapters (when lora_r > 0)

Per optimizer step (one batch of ``batch_size`` sequences, in a seeded order of the fixed batches per epoch)::

    N = assistant tokens in the batch
    for each micro-batch:
        logps, mask = log pi(token | everything before it) on the labelled tokens      # packed forward
        loss = aggregate(objective(logps, mask), mask, token_mean, denominator=N) ; backward
    clip grad norm; skip the step if anything is non-finite; optimizer step

Exact shortcuts (each leaves loss and gradient as the plain computation has them):

* dividing each micro-batch's summed token loss by the whole batch's N makes gradient accumulation exactly the
  big batch (test: values and gradients);
* for plain Llama models the micro-batch runs as one packed row of real tokens (`rlxf.models.token_logps`): each
  sequence is its own attention segment with its own positions, so nothing crosses from one sequence into
  another and no position is padding (test: packed loss and gradients equal the padded ones);
* the LM head and its log-softmax run on the labelled positions only: the other positions' log-probs are
  multiplied by 0 in the loss, so they need not exist.
"""
from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rlxf import runs
from rlxf.config import ConfigError, option
from rlxf.data import DataError, make_batches
from rlxf.data.demonstrations import load_demonstration_split
from rlxf.eval.demonstrations import evaluate_demonstrations, format_demonstration_eval, plot_sft_run
from rlxf.models import load_policy
from rlxf.models.lora import LoraWeights, add_lora, save_policy_or_merged
from rlxf.models.precision import resolve_precision
from rlxf.models.token_logps import labelled_token_logps
from rlxf.objectives.signature import call_loss, loss_signature, objective_of_kind, resolve_hyperparameters
from rlxf.ops import aggregate
from rlxf.recipes.batch_loop import train_fixed_batches


@dataclass
class Config(runs.ResumableRunOptions, runs.OptimizerOptions):
    """Supervised fine-tuning on demonstrations (``rlxf train sft``)."""

    # the batches are fixed, so more epochs on resume continue the same order
    RESUME_CHANGEABLE = (*runs.ResumableRunOptions.RESUME_CHANGEABLE, "epochs")

    # what to train
    model: str = option("smollm2", "Policy: 'smollm2' (embedded default), 'tiny' (test model) or a directory.")
    data: str = option(
        "gsm8k_train_512",
        "Demonstration JSONL(.gz): prompt/completion strings or chat `messages` (every assistant turn is trained "
        "on); 'gsm8k_train_512' = 512 GSM8K training problems with their worked solutions, shipped with rlxf.")
    eval_data: str | None = option(None, "Held-out demonstration file; default: split eval_fraction off `data`.")
    eval_fraction: float = option(0.1, "Held-out share of `data` when eval_data is not given.", ge=0, lt=1)
    eval_size: int = option(0, "Held-out rows (overrides eval_fraction when > 0).", ge=0)
    split_seed: int = option(0, "Seed of the held-out split (eval_rows.json in the run lists the rows).")
    strict: bool = option(True, "Stop on any bad data row (false: skip and count them).")
    max_tokens: int = option(
        512, "Longest sequence in tokens, chat template included; longer ones lose tokens from the right.", ge=2)
    # the algorithm
    objective: str = option("sft", "Loss by name (kind supervised; see `rlxf list`).")
    loss: dict[str, Any] = option(
        {}, "Loss hyperparameters, loss.<name>=value: keyword arguments of the objective's function, checked "
            "against it (sft takes none).")
    # optimisation
    batch_size: int = option(8, "Sequences per optimizer step.", ge=1)
    micro_batch_size: int = option(0, "Sequences per forward/backward (0 = the whole batch); exact accumulation.",
                                   ge=0)
    epochs: int = option(1, "Passes over the training rows (used when max_steps = 0).", ge=1)
    max_steps: int = option(0, "Stop after this many optimizer steps (0 = epochs x batches per epoch).", ge=0)
    lr: float = option(2e-5, "Learning rate (AdamW; constant after warmup).", gt=0)
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto", "Forward/backward precision: bf16 autocast or fp32; auto = bf16 where faster.")
    bucket_window: int = option(32, "Sort by length within windows of this many batches (1 = no bucketing).", ge=1)
    gradient_checkpointing: bool = option(
        False, "Keep only each decoder layer's input and rerun the layer in backward: less memory, ~1/3 more "
               "compute.")
    packed_forward: bool = option(
        True, "Run plain Llama models (SmolLM2) as one packed row per micro-batch (rlxf.models.packed): no "
              "padding, no attention across sequences, same maths; false = padded rows through the transformers "
              "modules (other architectures and LoRA always use them).")
    # LoRA
    lora_r: int = option(0, "LoRA rank (0 = full fine-tuning).", ge=0)
    lora_alpha: float = option(16.0, "LoRA alpha (scaling alpha / r).", gt=0)
    lora_dropout: float = option(0.0, "LoRA dropout.", ge=0, lt=1)
    lora_targets: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "Modules that get LoRA adapters.")
    # budget and evaluation
    time_budget_s: float = option(0.0, "Stop at the first step end after this much training time. 0 = none.", ge=0)
    eval_every: int = option(25, "Held-out evaluation every N steps (0 = only before and after training).", ge=0)
    eval_batch_size: int = option(16, "Sequences per forward in held-out evaluation.", ge=1)


# The tensors a supervised loss may declare, all computed by one forward.
PROVIDES = frozenset({"policy_logps", "mask"})


class Trainer:
    """State of one run; :func:`run` is the loop. ``Trainer(config)`` loads the model and data and writes nothing;
    each ``train_step(batch_for_step(trainer.batches, step, seed))`` is one optimizer step."""

    def __init__(self, config: Config):
        c = config
        self.device = runs.resolve_device(c.device)
        runs.set_threads(c.threads)
        self.objective = objective_of_kind(c.objective, "supervised")
        self.hyperparameters = resolve_hyperparameters(self.objective, c.loss)
        self.config = c = replace(c, loss=self.hyperparameters)  # config.yaml records every value used
        sig = loss_signature(self.objective)
        if sig.required - PROVIDES:
            raise ConfigError(f"objective {c.objective!r} needs {', '.join(sorted(sig.required - PROVIDES))}, which "
                              f"`rlxf train sft` does not provide")
        self.tensor_names = [name for name in sig.tensors if name in PROVIDES]

        random.seed(c.seed)
        np.random.seed(c.seed)
        torch.manual_seed(c.seed)
        self.model, self.tokenizer = load_policy(c.model, device=self.device, seed=c.seed)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            raise ValueError(f"the tokenizer of {c.model!r} has no pad token")
        self.data = load_demonstration_split(
            c.data, self.tokenizer, eval_data=c.eval_data, eval_fraction=c.eval_fraction, eval_size=c.eval_size,
            split_seed=c.split_seed, strict=c.strict, max_tokens=c.max_tokens)
        if len(self.data.train) < c.batch_size:
            raise DataError(f"{c.data}: {len(self.data.train)} training rows, fewer than batch_size={c.batch_size}")
        self.precision = resolve_precision(c.precision, self.device)
        self.packed = None if c.packed_forward else False  # None: packed wherever the model supports it
        self.batches = make_batches(self.data.train, c.batch_size, c.bucket_window, c.seed,
                                    length=lambda row: len(row.ids))
        self.max_steps = c.max_steps or c.epochs * len(self.batches)
        if c.lora_r > 0:
            self.model = add_lora(self.model, r=c.lora_r, alpha=c.lora_alpha, dropout=c.lora_dropout,
                                  targets=c.lora_targets)
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

    # -- one step ---------------------------------------------------------------------------------------

    def accumulate(self, batch: list[int]) -> dict[str, float]:
        """Forward/backward over micro-batches of ``batch``, each micro-batch's summed token loss divided by the
        whole batch's assistant tokens. ``nonfinite`` in the result (and no gradient left) when a loss is not
        finite."""
        rows = [self.data.train[i] for i in batch]
        total = sum(r.trained_tokens for r in rows)
        per = self.config.micro_batch_size or len(rows)
        sums: dict[str, float] = {"loss": 0.0, "token_accuracy": 0.0}
        slots = {"total": 0, "padding": 0}
        for start in range(0, len(rows), per):
            micro = rows[start:start + per]
            out = labelled_token_logps(self.model, [r.ids for r in micro], [r.labels for r in micro],
                                       pad_token_id=self.pad_id, precision=self.precision, packed=self.packed)
            available = {"policy_logps": out.logps, "mask": out.mask}
            result = call_loss(self.objective, {k: available[k] for k in self.tensor_names}, self.hyperparameters)
            loss = aggregate(result.loss, out.mask, "token_mean", denominator=total)
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)  # earlier micro-batches' gradients must not leak
                return {"nonfinite": 1.0, "loss": math.nan}
            loss.backward()
            share = int(out.mask.sum()) / total  # token-mean metrics of the micro-batch, weighted to the batch's
            sums["loss"] += float(loss.detach())
            sums["token_accuracy"] += int((out.correct & out.mask).sum()) / total
            for name, value in result.metrics.items():
                sums[name] = sums.get(name, 0.0) + float(value) * share
            slots = {k: slots[k] + out.slots[k] for k in slots}
        return {**sums, "trained_tokens": total, "tokens": slots["total"] - slots["padding"],
                "padding_frac": slots["padding"] / max(slots["total"], 1)}

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

    def evaluate(self) -> dict[str, Any] | None:
        if not self.data.eval:
            return None
        report = evaluate_demonstrations(self.model, self.data.eval, pad_token_id=self.pad_id,
                                         batch_size=self.config.eval_batch_size, precision=self.precision,
                                         packed=self.packed)
        record = {"step": self.step, "train_seconds": self.train_clock, **report}
        self.evals.append(record)
        return record

    # -- persistence --------------------------------------------------------------------------------------

    def _checkpoint_model(self):
        return LoraWeights(self.model) if self.config.lora_r > 0 else self.model

    def save(self, run: runs.RunDir) -> Path:
        state = {"step": self.step, "data_position": self.step * self.config.batch_size,
                 "train_clock": self.train_clock, "nonfinite_total": self.nonfinite_total,
                 "nonfinite_in_row": self.nonfinite_in_row, "evals": self.evals}
        return runs.save_checkpoint(
            run.checkpoints / f"step-{self.step:06d}", model=self._checkpoint_model(), tokenizer=self.tokenizer,
            optimizer=self.optimizer, scheduler=self.scheduler, sampling_rng=self.rng, trainer_state=state)

    def restore(self, checkpoint: Path) -> None:
        state = runs.load_checkpoint(checkpoint, model=self._checkpoint_model(), optimizer=self.optimizer,
                                     scheduler=self.scheduler, sampling_rng=self.rng)
        self.step = state["step"]
        self.train_clock = state["train_clock"]
        self.nonfinite_total = state["nonfinite_total"]
        self.nonfinite_in_row = state["nonfinite_in_row"]
        self.evals = state["evals"]


# ----------------------------------------------------------------------------------------------- the loop


def run(config: Config) -> dict[str, Any]:
    """Train; returns a summary dict (also written to ``<run>/summary.json``)."""
    trainer, run_dir = runs.start_run(config, Trainer, recipe="sft")
    c = trainer.config
    if not c.resume:
        (run_dir.path / "eval_rows.json").write_text(json.dumps(trainer.data.eval_sources, indent=0))
    d = trainer.data
    cut = sum(r.truncated for r in d.train + d.eval)
    print(f"data: {len(d.train)} training and {len(d.eval)} held-out demonstrations"
          f"{f', {len(d.problems)} bad rows skipped' if d.problems else ''}"
          f"{f', {cut} cut at max_tokens={c.max_tokens}' if cut else ''}; {len(trainer.batches)} batches of "
          f"{c.batch_size}, {trainer.max_steps} steps; precision {trainer.precision}")
    return runs.run_recording_status(run_dir, lambda: _loop(trainer, run_dir), step=lambda: trainer.step)


def _loop(trainer: Trainer, run_dir: runs.RunDir) -> dict[str, Any]:
    c = trainer.config
    loop, tokens_per_s = train_fixed_batches(
        trainer, run_dir, describe_eval=format_demonstration_eval,
        heldout_record=lambda e: {"heldout_nll": e["nll"], "heldout_token_accuracy": e["accuracy"]})
    if loop.stop_reason == "nonfinite":
        runs.mark_stopped(run_dir, step=trainer.step, reason=runs.nonfinite_reason(c.max_nonfinite_steps),
                          command="sft")
        return {"status": "stopped", "step": trainer.step, "nonfinite_steps": trainer.nonfinite_total}

    runs.save_run_checkpoint(trainer, run_dir, keep=c.keep_checkpoints)
    # After the checkpoint, so that a run resumed from it to a later step evaluates where an uninterrupted one does;
    # before final/, whose saving merges LoRA adapters into the model.
    if trainer.data.eval and (not trainer.evals or trainer.evals[-1]["step"] != trainer.step):
        trainer.evaluate()
    save_policy_or_merged(trainer.model, trainer.tokenizer, run_dir.final)
    if c.plots:
        plot_sft_run(run_dir.read_metrics(), trainer.evals, run_dir.plots)
    evals, seconds = trainer.evals, loop.step_seconds
    summary = {
        "status": "complete",
        "stop_reason": loop.stop_reason,
        "objective": c.objective,
        "steps": trainer.step,
        "train_seconds": trainer.train_clock,
        "median_step_seconds": statistics.median(seconds) if seconds else math.nan,
        "median_tokens_per_s": statistics.median(tokens_per_s) if tokens_per_s else math.nan,
        "precision": trainer.precision,
        "nonfinite_steps": trainer.nonfinite_total,
        "skipped_rows": len(trainer.data.problems),
        "heldout_before": evals[0] if evals else None,
        "heldout_after": evals[-1] if evals else None,
        "evals": evals,
    }
    run_dir.set_status("complete", step=trainer.step, reason=loop.stop_reason)
    print(f"trained {trainer.step} steps in {trainer.train_clock:.0f} s (median {summary['median_step_seconds']:.2f} "
          f"s/step, {summary['median_tokens_per_s']:.0f} tokens/s; stopped by {loop.stop_reason})")
    if evals:
        print(f"held-out before: {format_demonstration_eval(evals[0])}")
        print(f"held-out after:  {format_demonstration_eval(evals[-1])}")
    print(f"wrote {run_dir.path}/: config.yaml metrics.jsonl eval_rows.json plots/ checkpoints/ final/ summary.json")
    return summary
