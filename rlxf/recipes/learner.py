"""The policy-gradient learner of the online loops: the update stage, ``train_on(learner, rollout, advantages)``.

For ``ppo_epochs`` passes over the sampled batch, each pass in mini-batches of ``mini_batch_groups`` prompt
groups (when there are several, shuffled per pass with a seed of the step and the pass, so a resumed run repeats
them), one optimizer update per mini-batch::

    old_logps = log pi(y|x) before any update (no gradient), only when the batch gets more than one update
    for each pass, for each mini-batch of groups:
        denominator = aggregate_denominator(every row of the mini-batch)     # skipped groups keep their share
        for each micro-batch of its groups that carry gradient:
            logps = log pi_theta(y|x) (prompt prefilled once per group, fused chunked LM head)
            loss = aggregate(objective(**declared tensors, **hyperparameters).loss, mask, denominator=...)
            backward
        clip grad norm; skip the update if anything is non-finite; optimizer step

With one update per batch (``ppo_epochs=1``, one mini-batch) ``old_logps`` is the detached current log-prob:
the policy has not moved since it sampled (up to the sampler's numerics, logged as ``sampler_logp_diff``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlxf.feedback import finite_mask
from rlxf.models import load_policy
from rlxf.models.forward import completion_logprobs
from rlxf.models.lora import BaseWeights, adapters_off
from rlxf.models.precision import autocast_context
from rlxf.objectives.signature import call_loss, loss_signature, objective_of_kind, resolve_hyperparameters
from rlxf.ops import aggregate, aggregate_denominator, kl_k3, masked_mean
from rlxf.runs import build_optimizer, clip_gradients
from rlxf.types import Rollout, Scores

__all__ = ["KLRewardInputs", "Learner", "group_rows", "kl_reward_inputs", "micro_batches", "mini_batches",
           "rollout_logps", "train_on"]


@dataclass
class Learner:
    """The policy being trained and everything one update needs. Build it with :meth:`create`."""

    model: torch.nn.Module
    reference: torch.nn.Module | BaseWeights | None
    objective: Any
    hyperparameters: dict[str, Any]
    aggregation: str
    precision: str
    pad_token_id: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[torch.nn.Parameter]
    config: Any  # the recipe's Config: ppo_epochs, mini_batch_groups, micro_batch_groups, skip_zero_advantage,
    # temperature, max_grad_norm, seed

    @property
    def kl_coef(self) -> float:
        """The loss's KL(pi || ref) coefficient (0 for a loss without one)."""
        return float(self.hyperparameters.get("beta", 0.0))

    @classmethod
    def create(cls, config, model, *, precision: str, pad_token_id: int, needs_reference: bool = False) -> Learner:
        """The objective by name (it must be a policy-gradient loss), its hyperparameters from ``config.loss``,
        the reference (loaded when the loss has a KL term, KL is measured, or ``needs_reference``: a KL-shaped
        reward), AdamW and a warmup schedule."""
        objective = objective_of_kind(config.objective, "policy_gradient")
        hyperparameters = resolve_hyperparameters(objective, config.loss)
        reference = None
        if hyperparameters.get("beta", 0.0) > 0 or config.ref_kl_every > 0 or needs_reference:
            if hasattr(model, "peft_config"):  # LoRA: the initial policy is the base, adapters off
                reference = BaseWeights(model)
            else:
                reference, _ = load_policy(config.model, device=next(model.parameters()).device, seed=config.seed)
                reference.eval().requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer, scheduler = build_optimizer(params, config)
        return cls(model, reference, objective, hyperparameters,
                   config.aggregation or objective.default_aggregation, precision, pad_token_id, optimizer, scheduler,
                   params, config)

    def logps(self, model, prompt_ids, completion_ids: Tensor, n: int, *, with_entropy: bool = False):
        """Per-token log-probs ``(rows, T)`` (and entropies) of completions under ``model``, at the sampling
        temperature, each prompt prefilled once for its ``n`` completions. A LoRA run's reference (``BaseWeights``)
        computes with the adapters off and without gradient."""
        if isinstance(model, BaseWeights):
            with torch.no_grad(), adapters_off(model.model):
                return self.logps(model.model, prompt_ids, completion_ids, n, with_entropy=with_entropy)
        with autocast_context(completion_ids.device, self.precision):
            return completion_logprobs(model, prompt_ids, completion_ids, n=n, pad_token_id=self.pad_token_id,
                                       temperature=self.config.temperature, with_entropy=with_entropy)

    @torch.no_grad()
    def reference_kl(self, rollout: Rollout) -> float:
        """k3 estimate of KL(pi || ref) on the rollout's tokens (a measurement, no gradient)."""
        device = next(self.model.parameters()).device
        completion = rollout.completion_ids.to(device)
        mask = rollout.completion_mask.to(device)
        logps, _ = self.logps(self.model, rollout.prompt_ids, completion, rollout.n)
        ref, _ = self.logps(self.reference, rollout.prompt_ids, completion, rollout.n)
        return float(masked_mean(kl_k3(logps, ref), mask))


class _Metrics:
    """Token-weighted means of per-micro-batch metrics."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, name: str, value, weight: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value) * weight
        self.weights[name] = self.weights.get(name, 0.0) + weight

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.weights[k] for k in self.sums if self.weights[k] > 0}


def group_rows(groups: list[int], n: int) -> Tensor:
    """The rollout rows of prompt ``groups`` (each group's ``n`` completions are contiguous)."""
    return torch.tensor([g * n + j for g in groups for j in range(n)])


def micro_batches(groups: list[int], per: int, n: int):
    """``(groups, rows)`` of each micro-batch of at most ``per`` groups (0: all at once), in order."""
    per = per or max(1, len(groups))
    for start in range(0, len(groups), per):
        chunk = groups[start:start + per]
        yield chunk, group_rows(chunk, n)


def mini_batches(groups: int, size: int, *, shuffle: bool, seed: int) -> list[list[int]]:
    order = list(range(groups))
    if shuffle:
        random.Random(seed).shuffle(order)
    return [order[i:i + size] for i in range(0, groups, size)]


def update_schedule(config, groups: int, step: int) -> list[tuple[int, list[int]]]:
    """``(epoch, mini-batch of prompt groups)`` for each optimizer update of a step: ``ppo_epochs`` passes, each in
    mini-batches of ``mini_batch_groups`` groups, shuffled per pass with a seed of the step and the pass (so a
    resumed run repeats them) when there are several."""
    per_update = config.mini_batch_groups or groups
    shuffle = per_update < groups  # one mini-batch of every group needs no new order
    return [(epoch, mini) for epoch in range(config.ppo_epochs)
            for mini in mini_batches(groups, per_update, shuffle=shuffle,
                                     seed=(config.seed * 1_000_003 + step) * 101 + epoch)]


def train_on(learner: Learner, rollout: Rollout, advantages: Tensor, *, step: int,
             old_logps: Tensor | None = None, rewards: Tensor | None = None) -> dict[str, float]:
    """The update stage: ``ppo_epochs`` passes of guarded optimizer updates on ``rollout`` with ``advantages``
    ``(N,)`` or ``(N, T)`` (see the module docstring). ``old_logps`` ``(N, T)``: the policy's log-probs before the
    update when the caller has them already (PPO's KL-shaped reward needs them first); ``rewards`` ``(N,)``: each
    completion's reward, for losses that declare them (the pairwise ones, REBEL, P3O, CoPG). Returns the step's metrics;
    ``nonfinite`` is set (and the rest of the batch's updates skipped, no gradient left behind) when a loss or
    gradient is not finite."""
    c, n = learner.config, rollout.n
    device = next(learner.model.parameters()).device
    mask_all = rollout.completion_mask.to(device)
    declared = loss_signature(learner.objective).tensors
    # A group whose advantages are all 0 carries no gradient only for a loss linear in them without a KL term (not
    # for one that regresses on rewards, e.g. REBEL, whose residual is nonzero once the policy has moved).
    skippable = c.skip_zero_advantage and learner.kl_coef == 0 and "rewards" not in declared
    carries = [not (skippable and bool((g == 0).all())) for g in advantages.reshape(len(rollout.prompt_ids), -1)]
    groups = len(carries)
    per_update = c.mini_batch_groups or groups
    updates = c.ppo_epochs * -(-groups // per_update)
    wants_old = "old_logps" in declared
    old_all = old_logps.float().cpu() if old_logps is not None and wants_old else (
        _old_logps(learner, rollout, carries) if updates > 1 and wants_old else None)
    metrics, epoch_metrics = _Metrics(), [_Metrics() for _ in range(c.ppo_epochs)]
    out: dict[str, float] = {"trained_groups": float(sum(carries))}
    losses, grad_norms = [], []
    if not any(carries):
        learner.optimizer.zero_grad(set_to_none=True)
        return {**out, "loss": 0.0}
    for epoch, mini in update_schedule(c, groups, step):
        denominator = aggregate_denominator(mask_all[group_rows(mini, n).to(device)], learner.aggregation)
        active = [g for g in mini if carries[g]]
        loss = _accumulate(learner, rollout, advantages, rewards, active, denominator, old_all,
                           (metrics, epoch_metrics[epoch]))
        if loss is None:
            return {**out, "nonfinite": 1.0, "loss": float("nan")}
        if not active:
            continue
        grad_norm = clip_gradients(learner.params, c.max_grad_norm)
        grad_norms.append(float(grad_norm))
        losses.append(loss)
        if not torch.isfinite(grad_norm):
            learner.optimizer.zero_grad(set_to_none=True)
            return {**out, **metrics.means(), "loss": sum(losses) / len(losses), "grad_norm": float(grad_norm),
                    "nonfinite": 1.0}
        learner.optimizer.step()
        learner.scheduler.step()
        learner.optimizer.zero_grad(set_to_none=True)
    out.update(metrics.means())
    if c.ppo_epochs > 1:
        for e, em in enumerate(epoch_metrics, start=1):
            out.update({f"{k}/epoch{e}": v for k, v in em.means().items() if k in ("clip_frac", "approx_kl")})
    out["loss"] = sum(losses) / len(losses)
    out["grad_norm"] = sum(grad_norms) / len(grad_norms)
    return out


def _accumulate(learner, rollout, advantages, rewards, groups, denominator, old_all, recorders) -> float | None:
    """Forward/backward over micro-batches of ``groups``; the summed loss, or None (gradients cleared) when it is
    not finite."""
    n, device = rollout.n, next(learner.model.parameters()).device
    declared = loss_signature(learner.objective).tensors
    total = 0.0
    for chunk, rows in micro_batches(groups, learner.config.micro_batch_groups, n):
        completion = rollout.completion_ids[rows].to(device)
        mask = rollout.completion_mask[rows].to(device)
        prompts = [rollout.prompt_ids[g] for g in chunk]
        logps, entropy = learner.logps(learner.model, prompts, completion, n, with_entropy=True)
        available = {"policy_logps": logps, "advantages": advantages[rows].to(device), "mask": mask,
                     "old_logps": logps.detach() if old_all is None else old_all[rows].to(device),
                     "sampler_logps": rollout.sampler_logps[rows].to(device)}
        if rewards is not None:
            available["rewards"] = rewards[rows].to(device)
        if learner.kl_coef > 0:
            with torch.no_grad():
                available["ref_logps"], _ = learner.logps(learner.reference, prompts, completion, n)
        out = call_loss(learner.objective, {k: v for k, v in available.items() if k in declared},
                        learner.hyperparameters)
        loss = aggregate(out.loss, mask, learner.aggregation, denominator=denominator)
        if not torch.isfinite(loss):
            learner.optimizer.zero_grad(set_to_none=True)  # earlier micro-batches' gradients must not leak
            return None
        loss.backward()
        total += float(loss.detach())
        tokens = float(mask.sum())
        step_metrics = {"entropy": masked_mean(entropy, mask),
                        "sampler_logp_diff": masked_mean(
                            (logps.detach() - rollout.sampler_logps[rows].to(device)).abs(), mask),
                        **out.metrics}
        if "ref_logps" in available:
            step_metrics["kl"] = masked_mean(kl_k3(logps.detach(), available["ref_logps"]), mask)
        for recorder in recorders:
            for name, value in step_metrics.items():
                recorder.add(name, value, tokens)
    return total


def _old_logps(learner: Learner, rollout: Rollout, carries: list[bool]) -> Tensor:
    """``(N, T)`` log-probs of the rollout under the policy before this batch's first update (rows of groups
    without gradient stay 0: they are never trained on)."""
    return rollout_logps(learner, learner.model, rollout, groups=[g for g, carry in enumerate(carries) if carry])


@torch.no_grad()
def rollout_logps(learner: Learner, model, rollout: Rollout, *, groups: list[int] | None = None) -> Tensor:
    """``(N, T)`` float32 CPU log-probs of the rollout's tokens under ``model`` (the policy, the reference), without
    gradient, in micro-batches of ``micro_batch_groups`` prompt groups; rows of groups not in ``groups`` (default:
    all) stay 0."""
    n, device = rollout.n, next(learner.model.parameters()).device
    out = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32)
    groups = list(range(len(rollout.prompt_ids))) if groups is None else groups
    for chunk, rows in micro_batches(groups, learner.config.micro_batch_groups, n):
        logps, _ = learner.logps(model, [rollout.prompt_ids[g] for g in chunk],
                                 rollout.completion_ids[rows].to(device), n)
        out[rows] = logps.float().cpu()
    return out


@dataclass
class KLRewardInputs:
    """What a KL-shaped reward (PPO's critic, REINFORCE++) needs from a step, ``(N, T)`` on the CPU except
    ``rewards`` ``(N,)``: the tokens that count (rows with a finite reward only), the rewards (0 where not finite),
    the log-probs under the policy before the update and under the reference, and their k1 KL per token (mean)."""

    mask: Tensor
    rewards: Tensor
    old_logps: Tensor
    ref_logps: Tensor
    kl: float


def kl_reward_inputs(learner: Learner, scores: Scores, rollout: Rollout) -> KLRewardInputs:
    """The policy's and the reference's log-probs of the rollout (no gradient) and the rewards, with rows whose reward
    is not finite masked out (they get no advantage and no value target)."""
    finite = finite_mask(scores)
    mask = rollout.completion_mask & finite[:, None]
    old_logps = rollout_logps(learner, learner.model, rollout)
    ref_logps = rollout_logps(learner, learner.reference, rollout)
    return KLRewardInputs(mask, torch.where(finite, scores.values.float(), 0.0), old_logps, ref_logps,
                          float(masked_mean(old_logps - ref_logps, mask)))
