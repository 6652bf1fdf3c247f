"""Offline preference optimisation from a fixed set of pairs (``rlxf train dpo objective=<name>``).

One loop serves every loss registered with kind ``preference`` (DPO, IPO, SimPO, ORPO, ...) and, with
kind ``unpaired``, KTO. The loss is looked up by name; the tensors it takes are passed by the names in its
signature and its hyperparameters only when the user sets them (``beta=``, ``gamma=``, ...). Nothing here
re-implements a loss.

Before training::

    pairs = load + check + tokenise the data (every bad row reported as file:line)
    split off the held-out pairs (seeded, fixed: eval_rows.json in the run directory lists them)
    batches = fixed length-bucketed batches (sort by length within windows of bucket_window batches)
    ref = reference log-probs of every sequence, computed once with the initial weights (LoRA: adapters
          off) and cached on disk, keyed by the model weights, the token ids and the batch plan

Per optimizer step (one batch of ``batch_size`` pairs, in a seeded order of the fixed batches per epoch)::

    for each micro-batch:  chosen and rejected in one forward (prompt prefilled once, fused chunked LM head)
        loss = objective(**tensors by name, **hyperparameters).loss.sum() / batch_size ; backward
    clip grad norm; skip the step if anything is non-finite; optimizer step

Dividing each micro-batch's summed per-pair loss by the whole batch's size makes gradient accumulation
exactly the big batch (test: values and gradients). The reference model is never in memory during training:
its log-probs come from the cache (or were computed by the policy itself before its first step).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rlxf.config import ConfigError, config_from_yaml, config_to_yaml, option
from rlxf.eval.preference import autocast_context
from rlxf.recipes.run_dir import (
    RunDir,
    mark_nonfinite_stop,
    open_run_dir,
    progress_bar,
    resolve_device,
    resolve_resume,
    run_recording_status,
)

RECIPE = "preference"
CACHE_VERSION = 2
# Loss hyperparameters a user may set; each is passed only when set and only to a loss that takes it.
HYPERPARAMETERS = ("beta", "gamma", "tau", "epsilon", "alpha", "lam", "lambda_", "margin", "bc_weight",
                   "divergence", "desirable_weight", "undesirable_weight")
# Tensors this recipe can hand a loss, by name.
PAIRED_TENSORS = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
                  "chosen_lengths", "rejected_lengths", "chosen_scores", "rejected_scores", "group_ids",
                  "group_weights", "group_sizes", "rejected_logits", "rejected_ids", "rejected_mask")
UNPAIRED_TENSORS = ("policy_logps", "ref_logps", "policy_kl_logps", "ref_kl_logps", "desirable", "lengths")


@dataclass
class Config:
    """Offline preference optimisation on a fixed set of pairs (``rlxf train dpo``)."""

    # what to train
    model: str = option("smollm2", "Policy (and reference): 'smollm2', 'tiny' (test model) or a directory.")
    data: str = option(
        "hh_harmless_512",
        "Preference JSONL(.gz): prompt/chosen/rejected strings, conversational messages, raw HH transcripts or "
        "unpaired prompt/completion/label rows; 'hh_harmless_512' = 512 HH-RLHF harmless pairs shipped with rlxf.",
    )
    eval_data: str | None = option(None, "Held-out preference file; default: split eval_fraction off `data`.")
    eval_fraction: float = option(0.1, "Held-out share of `data` when eval_data is not given.")
    eval_size: int = option(0, "Held-out pairs (overrides eval_fraction when > 0).")
    split_seed: int = option(0, "Seed of the held-out split (eval_rows.json in the run lists the rows).")
    strict: bool = option(True, "Stop on any bad data row (false: skip and count them).")
    max_prompt_tokens: int = option(256, "Prompts longer than this lose tokens from the left.")
    max_completion_tokens: int = option(128, "Completions longer than this lose tokens from the right.")
    # the algorithm
    objective: str = option("dpo", "Loss by name: any `preference` loss, or `kto` (unpaired); see `rlxf list`.")
    beta: float | None = option(None, "Loss hyperparameter beta (null = the loss's own default).")
    gamma: float | None = option(None, "Loss hyperparameter gamma (e.g. SimPO's margin), null = default.")
    tau: float | None = option(None, "Loss hyperparameter tau (e.g. IPO), null = default.")
    epsilon: float | None = option(None, "Loss hyperparameter epsilon (cdpo / robust_dpo flip rate), null = default.")
    alpha: float | None = option(None, "Loss hyperparameter alpha (rpo, hdpo, fdpo, cpl), null = default.")
    lam: float | None = option(None, "Loss hyperparameter lambda (cpl), null = default.")
    lambda_: float | None = option(None, "Loss hyperparameter lambda_ (orpo), null = default.")
    margin: float | None = option(None, "Loss hyperparameter margin, null = default.")
    bc_weight: float | None = option(None, "Loss hyperparameter bc_weight (cpl), null = default.")
    divergence: str | None = option(None, "fdpo's divergence (reverse_kl, forward_kl, js, alpha), null = default.")
    desirable_weight: float | None = option(None, "KTO lambda_D, null = default.")
    undesirable_weight: float | None = option(None, "KTO lambda_U, null = default.")
    group_step_size: float = option(0.01, "group_robust_dpo: step size eta of the group-weight update.")
    # optimisation
    batch_size: int = option(8, "Pairs (KTO: rows) per optimizer step.")
    micro_batch_size: int = option(0, "Pairs per forward/backward (0 = the whole batch); exact accumulation.")
    epochs: int = option(1, "Passes over the training pairs (used when max_steps = 0).")
    max_steps: int = option(0, "Stop after this many optimizer steps (0 = epochs x batches per epoch).")
    lr: float = option(5e-6, "Learning rate (AdamW; constant after warmup).")
    warmup_steps: int = option(0, "Linear warmup steps.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Gradient norm clip.")
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto", "Forward/backward (and reference) precision: bf16 autocast or fp32; auto = bf16 where faster."
    )
    bucket_window: int = option(32, "Sort by length within windows of this many batches (1 = no bucketing).")
    gradient_checkpointing: bool = option(
        False, "Keep only each decoder layer's input and rerun the layer in backward: less memory, ~1/3 more "
               "compute (packed and transformers paths alike).")
    packed_forward: bool = option(
        True, "Run plain Llama models (SmolLM2) through rlxf.models.packed: no padding, leaner activations, same "
              "maths; false = the transformers modules (other architectures and LoRA always use them).")
    # LoRA
    lora_r: int = option(0, "LoRA rank (0 = full fine-tuning). The reference is then the model, adapters off.")
    lora_alpha: float = option(16.0, "LoRA alpha (scaling alpha / r).")
    lora_dropout: float = option(0.0, "LoRA dropout.")
    lora_targets: list[str] = option(["q_proj", "k_proj", "v_proj", "o_proj"], "Modules that get LoRA adapters.")
    # reference cache, budget and bookkeeping
    ref_cache: bool = option(True, "Cache reference log-probs on disk under the rlxf cache ($RLXF_CACHE).")
    time_budget_s: float = option(0.0, "Stop at the first step end after this much training time. 0 = none.")
    eval_every: int = option(25, "Held-out evaluation every N steps (0 = only before and after training).")
    eval_batch_size: int = option(16, "Pairs per forward in evaluation and reference passes.")
    save_every: int = option(50, "Checkpoint every N steps (0 = only at the end).")
    max_nonfinite_steps: int = option(3, "Stop (with a checkpoint) after this many non-finite steps in a row.")
    seed: int = option(42, "Seed for data order and initialisation.")
    threads: int = option(0, "torch CPU threads (0 = torch default).")
    device: str = option("auto", "'auto' (cuda if available), 'cpu' or 'cuda[:i]'.")
    output_dir: str = option("runs", "Parent directory of run directories.")
    run_name: str | None = option(None, "Run directory name (default: <objective>-<timestamp>).")
    resume: str | None = option(None, "Run directory to resume from its latest checkpoint.")
    progress: bool = option(True, "Show a progress bar.")
    plots: bool = option(True, "Write PNG plots (loss, accuracy, margins, log-probs) to <run>/plots at the end.")


# ----------------------------------------------------------------------------------------------- set-up


def _loss_kwargs(fn, config: Config) -> dict[str, Any]:
    """Hyperparameters the user set, checked against the loss's signature."""
    params = inspect.signature(fn).parameters
    kwargs = {}
    for name in HYPERPARAMETERS:
        value = getattr(config, name)
        if value is None:
            continue
        if name not in params:
            takes = [p for p in params if params[p].kind == inspect.Parameter.KEYWORD_ONLY and p in HYPERPARAMETERS]
            raise ConfigError(f"objective {config.objective!r} takes no {name!r} (its hyperparameters: "
                             f"{', '.join(takes) or 'none'}); remove {name}={value}")
        kwargs[name] = value
    return kwargs


def _tensor_names(fn, kind: str) -> list[str]:
    """The tensors the loss takes, by name; a clear error for one the recipe cannot provide."""
    available = PAIRED_TENSORS if kind == "preference" else UNPAIRED_TENSORS
    names = []
    for name, p in inspect.signature(fn).parameters.items():
        if name in HYPERPARAMETERS:
            continue
        if name in available:
            names.append(name)
        elif p.default is inspect.Parameter.empty:
            raise ConfigError(f"objective {fn.registered_name!r} needs {name!r}, which the preference recipe does "
                             f"not provide")
    return names


def implicit_beta(fn, config: Config) -> float:
    """beta of the implicit reward beta * log(pi/pi_ref) used by evaluation: the run's beta if the loss has
    one, else 0.1. (Only the sign matters for accuracy; the margin scales with it.)"""
    if config.beta is not None:
        return config.beta
    p = inspect.signature(fn).parameters.get("beta")
    return float(p.default) if p is not None and isinstance(p.default, int | float) else 0.1


@dataclass
class _Data:
    train: list  # TokenizedPair, or TokenizedUnpaired for kind "unpaired"
    eval: list  # TokenizedPair (held-out pairs; empty for unpaired-only data without eval_data)
    problems: list[str]
    eval_rows: list[str]  # file:line of every held-out pair
    format: str


def _split(n: int, config: Config) -> list[int]:
    """Indices of the held-out rows: a seeded sample of eval_size (else eval_fraction x n) rows, sorted."""
    count = config.eval_size if config.eval_size > 0 else round(config.eval_fraction * n)
    count = min(count, n - 1) if n > 1 else 0
    order = list(range(n))
    random.Random(config.split_seed).shuffle(order)
    return sorted(order[:count])


def load_data(config: Config, tokenizer, kind: str) -> _Data:
    """Train and held-out rows, checked and tokenised (bad rows raise before any run directory exists)."""
    from rlxf.data import DataError
    from rlxf.data.preferences import load_preferences, pairs_to_unpaired, tokenize_pairs, tokenize_unpaired

    data = load_preferences(config.data, strict=config.strict)
    problems = list(data.problems)
    if not data.paired and kind == "preference":
        raise DataError(f"{data.path}: unpaired (prompt/completion/label) rows need an unpaired objective such "
                        f"as kto, not {config.objective!r}")
    limits = {"max_prompt_tokens": config.max_prompt_tokens, "max_completion_tokens": config.max_completion_tokens}
    rows = list(data.rows)
    if config.eval_data:
        held = load_preferences(config.eval_data, strict=config.strict)
        problems += held.problems
        if not held.paired:
            raise DataError(f"{held.path}: held-out data must be pairs")
        eval_rows = list(held.rows)
    elif data.paired:
        chosen = set(_split(len(rows), config))
        eval_rows = [r for i, r in enumerate(rows) if i in chosen]
        rows = [r for i, r in enumerate(rows) if i not in chosen]
    else:
        eval_rows = []
    if kind == "unpaired":
        unpaired = pairs_to_unpaired(rows) if data.paired else rows
        train = tokenize_unpaired(unpaired, tokenizer, **limits)
    else:
        train = tokenize_pairs(rows, tokenizer, **limits)
    held_out = tokenize_pairs(eval_rows, tokenizer, **limits)
    if len(train) < config.batch_size:
        raise DataError(f"{config.data}: {len(train)} training rows, fewer than batch_size={config.batch_size}")
    return _Data(train, held_out, problems, [r.source for r in eval_rows], data.format)


def _length(item) -> int:
    if hasattr(item, "chosen_ids"):
        return len(item.prompt_ids) + max(len(item.chosen_ids), len(item.rejected_ids))
    return len(item.prompt_ids) + len(item.completion_ids)


def make_batches(items: list, batch_size: int, window: int, seed: int) -> list[list[int]]:
    """Fixed batch composition: a seeded permutation, cut into windows of ``window`` batches, each window sorted
    by length (so a batch holds similar lengths) and cut into batches; the last incomplete batch is dropped.
    Each epoch visits these batches in its own seeded order (:func:`batch_for_step`)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    usable = len(order) - len(order) % batch_size
    order = order[:usable]
    span = batch_size * max(1, window)
    sorted_order = []
    for start in range(0, usable, span):
        sorted_order += sorted(order[start:start + span], key=lambda i: _length(items[i]))
    return [sorted_order[i:i + batch_size] for i in range(0, usable, batch_size)]


def batch_for_step(batches: list[list[int]], step: int, seed: int) -> list[int]:
    """The batch of ``step`` (0-based): epoch e = step // len(batches) visits the batches in a seeded order.
    A pure function of ``step``, so a resumed run draws exactly the batches of an uninterrupted one."""
    epoch, pos = divmod(step, len(batches))
    order = list(range(len(batches)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return batches[order[pos]]


def kl_partners(n: int, batches: list[list[int]]) -> list[int]:
    """KTO's mismatched pairs: row i's KL completion is that of the next row of its batch (cyclically), so z0
    is estimated from (x_i, y_j), j != i, of the same batch. Rows in no batch pair with row (i + 1) mod n."""
    partner = [(i + 1) % n for i in range(n)]
    for batch in batches:
        for j, i in enumerate(batch):
            partner[i] = batch[(j + 1) % len(batch)]
    return partner


# ------------------------------------------------------------------------------------------ reference log-probs


def model_fingerprint(model) -> str:
    """sha256 over every parameter and buffer (names, shapes, dtypes and bytes) of the state dict."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


def _adapters_off(model):
    """Context in which a peft model computes with its base weights only (nothing for a plain model)."""
    import contextlib

    disable = getattr(model, "disable_adapter", None)
    return disable() if callable(disable) else contextlib.nullcontext()


@torch.no_grad()
def _logps_in_length_order(model, prompts, completions, *, pad_token_id, batch_size, precision,
                           packed: bool | None = None) -> torch.Tensor:
    """Summed log-probs `(N, n)` of ``completions[i]`` (n token lists each) given ``prompts[i]``, no grad."""
    from rlxf.eval.preference import sequence_logps

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + max(len(c) for c in completions[i]))
    out = torch.zeros(len(prompts), len(completions[0]) if completions else 0)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        sums, _, _ = sequence_logps(model, [prompts[i] for i in idx], [completions[i] for i in idx],
                                    pad_token_id=pad_token_id, precision=precision, packed=packed)
        out[idx] = sums.float().cpu()
    return out


def reference_pair_logps(model, pairs, *, pad_token_id, batch_size, precision) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference (adapters off) summed log-probs of chosen and rejected, `(N,)` each."""
    was_training = model.training
    model.eval()
    try:
        with _adapters_off(model):
            out = _logps_in_length_order(model, [p.prompt_ids for p in pairs],
                                         [(p.chosen_ids, p.rejected_ids) for p in pairs], pad_token_id=pad_token_id,
                                         batch_size=batch_size, precision=precision)
    finally:
        model.train(was_training)
    return out[:, 0].contiguous(), out[:, 1].contiguous()


def reference_logps(model, data: _Data, partners: list[int] | None, *, key: str, use_cache: bool, pad_token_id,
                    batch_size, precision, packed: bool | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Every reference log-prob the run needs, from the cache or computed now with ``model`` (adapters off).

    Keys: ``train_a``/``train_b`` (pairs: chosen/rejected; unpaired: the completion and the KL partner's
    completion), ``eval_chosen``/``eval_rejected``. Returns (tensors, "hit" | "miss" | "off")."""
    from safetensors.torch import load_file, save_file

    from rlxf.models import cache_dir

    path = cache_dir() / "preference_ref" / f"{key}.safetensors"
    if use_cache and path.exists():
        return load_file(str(path)), "hit"
    was_training = model.training
    model.eval()
    try:
        with _adapters_off(model):
            if partners is None:
                ab = _logps_in_length_order(
                    model, [p.prompt_ids for p in data.train], [(p.chosen_ids, p.rejected_ids) for p in data.train],
                    pad_token_id=pad_token_id, batch_size=batch_size, precision=precision,
                    packed=packed)
            else:
                ab = _logps_in_length_order(
                    model, [r.prompt_ids for r in data.train],
                    [(r.completion_ids, data.train[partners[i]].completion_ids) for i, r in enumerate(data.train)],
                    pad_token_id=pad_token_id, batch_size=batch_size, precision=precision,
                    packed=packed)
            tensors = {"train_a": ab[:, 0].contiguous(), "train_b": ab[:, 1].contiguous()}
            if data.eval:
                ev = _logps_in_length_order(
                    model, [p.prompt_ids for p in data.eval], [(p.chosen_ids, p.rejected_ids) for p in data.eval],
                    pad_token_id=pad_token_id, batch_size=batch_size, precision=precision,
                    packed=packed)
                tensors["eval_chosen"], tensors["eval_rejected"] = ev[:, 0].contiguous(), ev[:, 1].contiguous()
    finally:
        model.train(was_training)
    if not use_cache:
        return tensors, "off"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{id(tensors)}")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return tensors, "miss"


# ----------------------------------------------------------------------------------------------- checkpoints


class _LoraWeights:
    """What `save_checkpoint`/`load_checkpoint` see of a LoRA run: only the adapter weights are written
    (``model/model.safetensors`` + ``adapter_config.json``) and loaded back; the frozen base comes from
    ``config.model``."""

    hf_quantizer = None

    def __init__(self, peft_model):
        self.peft_model = peft_model
        self.config = peft_model.config

    def save_pretrained(self, path, safe_serialization: bool = True) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        Path(path).mkdir(parents=True, exist_ok=True)
        self.peft_model.peft_config["default"].save_pretrained(str(path))
        weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.peft_model).items()}
        save_file(weights, str(Path(path) / "model.safetensors"))

    def load_state_dict(self, weights, strict: bool = False):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.peft_model, weights)
        return [], list(getattr(result, "unexpected_keys", []))


# ----------------------------------------------------------------------------------------------- the trainer


class Trainer:
    """State of one run; ``run()`` below is the loop, read top to bottom.

    Public for callers that drive their own loop (the benchmark, notebooks): ``Trainer(config)`` loads the model
    and data and computes (or loads) the reference log-probs, then each ``train_step(batch_for_step(...))`` is one
    optimizer step. It writes nothing to disk; ``run(config)`` adds the run directory, checkpoints and evaluation.
    """

    def __init__(self, config: Config):
        from rlxf.models import load_policy
        from rlxf.models.layout import bf16_is_faster
        from rlxf.objectives import get_objective

        self.config = c = config
        self.device = resolve_device(c.device)
        if c.threads:
            torch.set_num_threads(c.threads)
        try:
            self.objective = get_objective(c.objective)
        except KeyError as err:
            raise ConfigError(err.args[0]) from None
        self.kind = self.objective.kind
        if self.kind not in ("preference", "unpaired"):
            raise ConfigError(f"objective {c.objective!r} is a {self.kind} loss; `rlxf train dpo` takes preference "
                             f"losses or kto (see `rlxf list`)")
        self.loss_kwargs = _loss_kwargs(self.objective, c)
        self.tensor_names = _tensor_names(self.objective, self.kind)
        if c.micro_batch_size < 0 or c.batch_size < 1:
            raise ConfigError("batch_size must be >= 1 and micro_batch_size >= 0")
        self.beta = implicit_beta(self.objective, c)

        random.seed(c.seed)
        np.random.seed(c.seed)
        torch.manual_seed(c.seed)
        self.model, self.tokenizer = load_policy(c.model, device=self.device, seed=c.seed)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            raise ValueError(f"the tokenizer of {c.model!r} has no pad token")
        self.data = load_data(c, self.tokenizer, self.kind)
        self._check_data_fields()
        self.precision = c.precision if c.precision != "auto" else (
            "bf16" if bf16_is_faster(self.device) else "fp32")
        self.packed = None if c.packed_forward else False  # None: packed wherever the model supports it
        self.batches = make_batches(self.data.train, c.batch_size, c.bucket_window, c.seed)
        self.partners = kl_partners(len(self.data.train), self.batches) if self.kind == "unpaired" else None
        self.max_steps = c.max_steps or c.epochs * len(self.batches)

        # The reference: the initial weights. Fingerprinted before any adapter exists; evaluated after LoRA is
        # added (adapters off), through the very path and batches the held-out evaluation uses, so that before the
        # first step every held-out margin is exactly 0 by construction (adapters start at B = 0).
        from rlxf.data.preferences import data_fingerprint

        self.base_fingerprint = model_fingerprint(self.model)
        if c.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            self.model = get_peft_model(self.model, LoraConfig(
                r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                target_modules=list(c.lora_targets), task_type="CAUSAL_LM"))
        from rlxf.models.packed import supports_packed_forward

        path = "packed" if self.packed is None and supports_packed_forward(self.model) else "padded"
        self.ref_key = hashlib.sha256(json.dumps([
            CACHE_VERSION, self.base_fingerprint, data_fingerprint(self.data.train), data_fingerprint(self.data.eval),
            self.partners, self.precision, str(self.device.type), path,
        ]).encode()).hexdigest()[:32]
        t0 = time.perf_counter()
        self.ref, self.ref_cache_status = reference_logps(
            self.model, self.data, self.partners, key=self.ref_key, use_cache=c.ref_cache, pad_token_id=self.pad_id,
            batch_size=c.eval_batch_size, precision=self.precision, packed=self.packed)
        self.ref_seconds = time.perf_counter() - t0

        if hasattr(self.model.config, "use_cache"):
            self.model.config.use_cache = False
        if c.gradient_checkpointing:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=c.lr, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=c.weight_decay, fused=True)
        warmup = c.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)
        self.rng = torch.Generator().manual_seed(c.seed)  # checkpointed; dropout draws from the global RNG
        self.step = 0
        self.train_clock = 0.0
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.evals: list[dict[str, Any]] = []
        self.displacement_warned = False
        self.group_weights = self.group_sizes = None
        if "group_weights" in self.tensor_names:
            self.group_weights = torch.full((len(self.group_names),), 1.0 / len(self.group_names))
            self.group_sizes = torch.bincount(torch.tensor(self.train_group_ids),
                                              minlength=len(self.group_names)).float()

    def _check_data_fields(self) -> None:
        name, train = self.config.objective, self.data.train
        if "chosen_scores" in self.tensor_names and any(p.chosen_score is None for p in train):
            raise ConfigError(f"objective {name!r} needs chosen_score and rejected_score in every data row")
        self.group_names: list[str] = []
        if "group_ids" in self.tensor_names:
            missing = [p.source for p in train if p.group is None]
            if missing:
                raise ConfigError(f"objective {name!r} needs a 'group' in every row; missing at {missing[0]} "
                                 f"(and {len(missing) - 1} more)")
            self.group_names = sorted({p.group for p in train})
            index = {g: i for i, g in enumerate(self.group_names)}
            self.train_group_ids = [index[p.group] for p in train]

    # -- one step ---------------------------------------------------------------------------------------

    def _pair_tensors(self, idx: list[int], *, grad: bool) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        from rlxf.eval.preference import sequence_logps

        items = [self.data.train[i] for i in idx]
        with torch.set_grad_enabled(grad):
            sums, lengths, slots = sequence_logps(
                self.model, [p.prompt_ids for p in items], [(p.chosen_ids, p.rejected_ids) for p in items],
                pad_token_id=self.pad_id, precision=self.precision, packed=self.packed)
        dev = sums.device
        t = {"policy_chosen_logps": sums[:, 0], "policy_rejected_logps": sums[:, 1],
             "ref_chosen_logps": self.ref["train_a"][idx].to(dev),
             "ref_rejected_logps": self.ref["train_b"][idx].to(dev),
             "chosen_lengths": lengths[:, 0], "rejected_lengths": lengths[:, 1]}
        if "rejected_logits" in self.tensor_names:  # token-level losses (cringe_pairwise): a second forward
            from rlxf.models.forward import completion_logits

            with torch.set_grad_enabled(grad), autocast_context(self.device, self.precision):
                t["rejected_logits"], t["rejected_ids"], t["rejected_mask"] = completion_logits(
                    self.model, [p.prompt_ids for p in items], [p.rejected_ids for p in items],
                    pad_token_id=self.pad_id)
        if "chosen_scores" in self.tensor_names:
            t["chosen_scores"] = torch.tensor([p.chosen_score for p in items], device=dev)
            t["rejected_scores"] = torch.tensor([p.rejected_score for p in items], device=dev)
        if self.group_weights is not None:
            t["group_ids"] = torch.tensor([self.train_group_ids[i] for i in idx], device=dev)
            t["group_weights"] = self.group_weights.to(dev)
            t["group_sizes"] = self.group_sizes.to(dev)
        return t, slots

    def _unpaired_tensors(self, idx: list[int], kl: dict[str, torch.Tensor]):
        from rlxf.eval.preference import sequence_logps

        items = [self.data.train[i] for i in idx]
        sums, lengths, slots = sequence_logps(
            self.model, [r.prompt_ids for r in items], [(r.completion_ids,) for r in items],
            pad_token_id=self.pad_id, precision=self.precision, packed=self.packed)
        dev = sums.device
        t = {"policy_logps": sums[:, 0], "ref_logps": self.ref["train_a"][idx].to(dev), "lengths": lengths[:, 0],
             "desirable": torch.tensor([r.label for r in items], dtype=torch.bool, device=dev),
             **{k: v.to(dev) for k, v in kl.items()}}
        return t, slots

    @torch.no_grad()
    def _batch_kl(self, batch: list[int]) -> dict[str, torch.Tensor]:
        """KTO's mismatched pairs of the whole batch, without gradient (z0 is a constant in the loss). Every
        micro-batch gets the same (M,) tensors, so z0 is the whole batch's estimate and accumulation is exact."""
        from rlxf.eval.preference import sequence_logps

        items = self.data.train
        per = self.config.micro_batch_size or len(batch)
        parts = []
        for start in range(0, len(batch), per):
            idx = batch[start:start + per]
            sums, _, _ = sequence_logps(
                self.model, [items[i].prompt_ids for i in idx],
                [(items[self.partners[i]].completion_ids,) for i in idx], pad_token_id=self.pad_id,
                precision=self.precision, packed=self.packed)
            parts.append(sums[:, 0].float())
        return {"policy_kl_logps": torch.cat(parts), "ref_kl_logps": self.ref["train_b"][batch]}

    def _call_loss(self, tensors: dict[str, torch.Tensor]):
        return self.objective(**{k: tensors[k] for k in self.tensor_names if k in tensors}, **self.loss_kwargs)

    def _update_group_weights(self, batch: list[int]) -> None:
        """Group-robust DPO (Ramesh et al. 2024, Algorithm 1): alpha is updated from the batch's per-group mean
        DPO losses under the current policy before the theta step (a no-grad pass, so any micro-batching)."""
        from rlxf.objectives.group_robust import group_mean_losses, update_group_weights

        per = self.config.micro_batch_size or len(batch)
        losses = []
        for start in range(0, len(batch), per):
            t, _ = self._pair_tensors(batch[start:start + per], grad=False)
            t = {**t, "group_weights": torch.ones_like(self.group_weights), "group_sizes": None}
            losses.append(self._call_loss(t).loss.detach().float().cpu())
        ids = torch.tensor([self.train_group_ids[i] for i in batch])
        self.group_weights = update_group_weights(
            self.group_weights, group_mean_losses(torch.cat(losses), ids, len(self.group_names)),
            step_size=self.config.group_step_size)

    def accumulate(self, batch: list[int]) -> dict[str, float]:
        """Forward/backward over micro-batches of ``batch``, each micro-batch's summed per-pair loss divided by
        the whole batch's size, so the accumulated gradient is the big batch's. ``nonfinite`` in the result
        (and no gradient left behind) when a loss is not finite."""
        c = self.config
        per = c.micro_batch_size or len(batch)
        total = len(batch)
        if self.group_weights is not None:
            self._update_group_weights(batch)
        kl = self._batch_kl(batch) if self.kind == "unpaired" else None
        sums: dict[str, float] = {}
        loss_total = 0.0
        slots = {"total": 0, "padding": 0}
        extra = {"policy_chosen_logps": 0.0, "policy_rejected_logps": 0.0}
        for start in range(0, total, per):
            idx = batch[start:start + per]
            if self.kind == "unpaired":
                tensors, s = self._unpaired_tensors(idx, kl)
            else:
                tensors, s = self._pair_tensors(idx, grad=True)
                for k in extra:
                    extra[k] += float(tensors[k].detach().float().sum())
            slots = {k: slots[k] + s[k] for k in slots}
            out = self._call_loss(tensors)
            loss = out.loss.float().sum() / total
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)  # earlier micro-batches' gradients must not leak
                return {"nonfinite": 1.0, "loss": math.nan}
            loss.backward()
            loss_total += float(loss.detach())
            for name, value in out.metrics.items():
                sums[name] = sums.get(name, 0.0) + float(value) * len(idx) / total
        metrics = {"loss": loss_total, **sums}
        if self.kind == "preference":
            metrics.update({k: v / total for k, v in extra.items()})
        metrics["tokens"] = slots["total"] - slots["padding"]
        metrics["padding_frac"] = slots["padding"] / max(slots["total"], 1)
        return metrics

    def train_step(self, batch: list[int]) -> dict[str, float]:
        """:meth:`accumulate`, then one guarded optimizer step (skipped when anything is non-finite)."""
        metrics = self.accumulate(batch)
        if metrics.get("nonfinite"):
            return metrics
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        metrics["grad_norm"] = float(grad_norm)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            metrics["nonfinite"] = 1.0
            return metrics
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.group_weights is not None:
            metrics.update({f"group_weight/{g}": float(w) for g, w in zip(self.group_names, self.group_weights,
                                                                                  strict=True)})
        return metrics

    # -- evaluation ---------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any] | None:
        from rlxf.eval.preference import evaluate_preferences

        if not self.data.eval:
            return None
        report = evaluate_preferences(
            self.model, self.data.eval, self.ref["eval_chosen"], self.ref["eval_rejected"], beta=self.beta,
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
        return _LoraWeights(self.model) if self.config.lora_r > 0 else self.model

    def trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "data_position": self.step * self.config.batch_size,
                "train_clock": self.train_clock, "nonfinite_total": self.nonfinite_total,
                "nonfinite_in_row": self.nonfinite_in_row, "evals": self.evals, "ref_key": self.ref_key,
                "displacement_warned": self.displacement_warned,
                "group_weights": self.group_weights.tolist() if self.group_weights is not None else None}

    def save(self, run: RunDir) -> Path:
        from rlxf.recipes.checkpoint import save_checkpoint

        return save_checkpoint(
            run.checkpoints / f"step-{self.step:06d}", model=self._checkpoint_model(), tokenizer=self.tokenizer,
            optimizer=self.optimizer, scheduler=self.scheduler, sampling_rng=self.rng,
            trainer_state=self.trainer_state())

    def restore(self, checkpoint: Path) -> None:
        from rlxf.recipes.checkpoint import load_checkpoint

        state = load_checkpoint(checkpoint, model=self._checkpoint_model(), optimizer=self.optimizer,
                                scheduler=self.scheduler, sampling_rng=self.rng)
        self.step = state["step"]
        self.train_clock = state["train_clock"]
        self.nonfinite_total = state["nonfinite_total"]
        self.nonfinite_in_row = state["nonfinite_in_row"]
        self.evals = state["evals"]
        self.displacement_warned = state.get("displacement_warned", False)
        if state.get("group_weights") is not None:
            self.group_weights = torch.tensor(state["group_weights"], dtype=torch.float32)


# ----------------------------------------------------------------------------------------------- the loop


def run(config: Config) -> dict[str, Any]:
    """Train; returns a summary dict (also written to ``<run>/summary.json``)."""
    config = resolve_resume(config, extendable=("max_steps", "time_budget_s", "progress", "plots"))
    trainer = Trainer(config)  # validates data, loads the model, reference log-probs: nothing on disk yet
    c = trainer.config
    name = f"{c.objective}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = open_run_dir(trainer, config_to_yaml(c, recipe="dpo"), default_name=name)
    if not c.resume:
        (run_dir.path / "eval_rows.json").write_text(json.dumps(trainer.data.eval_rows, indent=0))
    d = trainer.data
    print(f"run directory: {run_dir.path}")
    print(f"data: {len(d.train)} training {'rows' if trainer.kind == 'unpaired' else 'pairs'}, {len(d.eval)} "
          f"held-out pairs ({d.format} format){f', {len(d.problems)} bad rows skipped' if d.problems else ''}; "
          f"{len(trainer.batches)} batches of {c.batch_size}, {trainer.max_steps} steps")
    print(f"reference log-probs: cache {trainer.ref_cache_status} ({trainer.ref_seconds:.1f} s)")
    return run_recording_status(run_dir, lambda: _loop(trainer, run_dir), step=lambda: trainer.step)


def _loop(trainer: Trainer, run_dir: RunDir) -> dict[str, Any]:
    from rlxf.eval.preference import format_preference_eval
    from rlxf.eval.preference_plots import plot_preference_run

    c = trainer.config
    if not trainer.evals and trainer.data.eval:
        trainer.evaluate()
        print(f"held-out before training: {format_preference_eval(trainer.evals[-1])}")
    stop_reason = "max_steps"
    step_seconds: list[float] = []
    tokens_per_s: list[float] = []
    budget = c.time_budget_s if c.time_budget_s > 0 else None
    with progress_bar(c.progress) as bar:
        task = bar.add_task(c.objective, total=budget or trainer.max_steps, info="") if bar else None
        while trainer.step < trainer.max_steps:
            if budget is not None and trainer.train_clock >= budget:
                stop_reason = "time_budget"
                break
            t0 = time.perf_counter()
            batch = batch_for_step(trainer.batches, trainer.step, c.seed)
            metrics = trainer.train_step(batch)
            trainer.step += 1
            nonfinite = metrics.pop("nonfinite", 0.0) > 0
            trainer.nonfinite_in_row = trainer.nonfinite_in_row + 1 if nonfinite else 0
            trainer.nonfinite_total += int(nonfinite)
            step_time = time.perf_counter() - t0
            trainer.train_clock += step_time
            step_seconds.append(step_time)
            record = {"step": trainer.step, "epoch": (trainer.step - 1) // len(trainer.batches),
                      "skipped_nonfinite": int(nonfinite), "lr": trainer.scheduler.get_last_lr()[0], **metrics,
                      "seconds_step": step_time, "train_seconds": trainer.train_clock}
            if "tokens" in metrics:
                record["tokens_per_s"] = metrics["tokens"] / step_time
                tokens_per_s.append(record["tokens_per_s"])
            stopping = trainer.nonfinite_in_row >= c.max_nonfinite_steps
            if c.eval_every and trainer.step % c.eval_every == 0 and trainer.data.eval and not stopping:
                e = trainer.evaluate()
                record.update({f"heldout_{k}": e[k] for k in ("accuracy", "margin", "ranking_accuracy",
                                                                "chosen_logps", "rejected_logps")})
            if (c.save_every and trainer.step % c.save_every == 0) or stopping:
                trainer.save(run_dir)
            run_dir.log(record)
            if bar:
                done = trainer.train_clock if budget else trainer.step
                acc = f" held-out {100 * trainer.evals[-1]['accuracy']:.1f}%" if trainer.evals else ""
                bar.update(task, completed=min(done, budget or trainer.max_steps),
                           info=f"step {trainer.step} loss {record.get('loss', math.nan):.4f}{acc}")
            if stopping:
                stop_reason = "nonfinite"
                break
    if stop_reason == "nonfinite":
        mark_nonfinite_stop(run_dir, step=trainer.step, max_nonfinite_steps=c.max_nonfinite_steps, command="dpo")
        return {"status": "stopped", "step": trainer.step, "nonfinite_steps": trainer.nonfinite_total}

    if trainer.data.eval and (not trainer.evals or trainer.evals[-1]["step"] != trainer.step):
        trainer.evaluate()
    trainer.save(run_dir)
    _save_final(trainer, run_dir)
    if c.plots:
        plot_preference_run(run_dir.read_metrics(), trainer.evals, run_dir.plots)
    summary = _summary(trainer, stop_reason, step_seconds, tokens_per_s)
    run_dir.set_status("complete", step=trainer.step, reason=stop_reason)
    _print_summary(summary, run_dir)
    return summary


def _save_final(trainer: Trainer, run_dir: RunDir) -> None:
    """``final/``: a plain transformers model directory (LoRA: adapters merged; the adapters alone in
    ``final/adapter``)."""
    from rlxf.models import save_policy

    if trainer.config.lora_r > 0:
        trainer.model.save_pretrained(str(run_dir.final / "adapter"))
        save_policy(trainer.model.merge_and_unload(), trainer.tokenizer, run_dir.final)
    else:
        save_policy(trainer.model, trainer.tokenizer, run_dir.final)


def _summary(trainer: Trainer, stop_reason: str, step_seconds: list[float], tokens_per_s: list[float]):
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


def _mean_padding(trainer: Trainer) -> float:
    """Share of the token positions of one full pass over the fixed batches that are padding."""
    from rlxf.eval.preference import padding_slots

    total = padding = 0
    for batch in trainer.batches:
        items = [trainer.data.train[i] for i in batch]
        if trainer.kind == "unpaired":
            slots = padding_slots([r.prompt_ids for r in items], [(r.completion_ids,) for r in items])
        else:
            slots = padding_slots([p.prompt_ids for p in items], [(p.chosen_ids, p.rejected_ids) for p in items])
        total, padding = total + slots["total"], padding + slots["padding"]
    return padding / max(total, 1)


def _print_summary(s: dict[str, Any], run_dir: RunDir) -> None:
    from rlxf.eval.preference import format_preference_eval

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


def evaluate_run(run_dir: str | Path, *, batch_size: int | None = None) -> dict[str, Any]:
    """Held-out preference metrics of a run's latest checkpoint (the final weights of a finished run) on its
    own split, against its reference (from the cache, or recomputed from ``config.model``)."""
    from rlxf.recipes.checkpoint import latest_checkpoint

    config = config_from_yaml(Config, Path(run_dir) / "config.yaml")
    config = replace(config, progress=False, eval_batch_size=batch_size or config.eval_batch_size)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint")
    trainer = Trainer(config)
    if not trainer.data.eval:
        raise ValueError(f"{run_dir}: the run has no held-out pairs")
    trainer.restore(checkpoint)
    trainer.evals = []
    report = trainer.evaluate()
    return {**report, "run": str(run_dir), "checkpoint": str(checkpoint)}
