"""The critic of actor-critic PPO (``rlxf train ppo``): a learned value function, GAE advantages, the value update.

Per step, between scoring and the policy update (InstructGPT / "Unpacking DPO and PPO" style)::

    old_logps = log pi_old(y_t | ...)       ref_logps = log pi_ref(y_t | ...)      V_old = V(s_t)     # no gradient
    r_t = -beta (old_logps - ref_logps) + [t = last] R(x, y)        # ops.kl_shaped_rewards: the KL-shaped reward
    A, returns = gae(r, V_old, gamma, lam);  A = whiten(A) over the batch's tokens   # ops.gae, ops.masked_whiten
    policy: ppo_epochs x mini-batches of the clipped surrogate on A      (rlxf.recipes.learner.train_on)
    critic: the same passes and mini-batches of the clipped value loss    (objectives.clipped_value_loss)

The critic is a separate module with its own AdamW (``critic_lr``): a copy of the initial policy's decoder or a
smaller model with the same tokenizer, with a zero-initialised scalar head. Because the advantages are fixed before
either update, updating the critic after the policy (rather than interleaved per mini-batch) gives the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlxf.models.lora import add_lora_in_place
from rlxf.models.precision import autocast_context
from rlxf.models.value import ValueModel, load_value_model
from rlxf.objectives.value import clipped_value_loss
from rlxf.ops import aggregate, aggregate_denominator, gae, kl_shaped_rewards, masked_mean, masked_whiten
from rlxf.recipes.learner import Learner, group_rows, kl_reward_inputs, micro_batches, update_schedule
from rlxf.runs import build_optimizer, clip_gradients
from rlxf.runs.options import OptimizerOptions
from rlxf.types import Rollout, Scores

__all__ = ["Critic", "CriticTargets", "explained_variance"]


@dataclass
class CriticTargets:
    """What a step's advantage stage computed for its update: ``(N, T)`` tensors on the CPU."""

    advantages: Tensor
    returns: Tensor
    old_values: Tensor
    old_logps: Tensor
    mask: Tensor  # the completion tokens of rows with a finite reward: the only ones trained on
    metrics: dict[str, float]


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var[R - V] / Var[R] over the masked-in tokens: 1 for a perfect critic, 0 for one that predicts the mean,
    negative for a worse one (NaN when the returns do not vary)."""
    var_returns = masked_mean((returns - masked_mean(returns, mask)).square(), mask)
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)).square(), mask)
    return float(1.0 - var_residual / var_returns) if float(var_returns) > 0 else float("nan")


@dataclass
class Critic:
    """The value model, its optimizer and the settings of the estimate and the update. Build with :meth:`create`."""

    model: ValueModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[torch.nn.Parameter]
    config: Any  # the recipe's Config: critic_lr, value_clip, gamma, lam, reward_kl_coef, whiten_advantages, ...
    precision: str

    @classmethod
    def create(cls, config, *, policy_tokenizer, device, precision: str) -> Critic:
        name = config.model if config.critic == "policy_copy" else config.critic
        model = load_value_model(name, policy_tokenizer=policy_tokenizer, device=device, seed=config.seed)
        if config.critic_lora_r:  # the decoder gets adapters and is frozen; the head trains whole
            add_lora_in_place(model.decoder, r=config.critic_lora_r, alpha=config.lora_alpha,
                              dropout=config.lora_dropout, targets=config.lora_targets)
        params = [p for p in model.parameters() if p.requires_grad]
        options = OptimizerOptions(lr=config.critic_lr, warmup_steps=config.warmup_steps,
                                   weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm)
        optimizer, scheduler = build_optimizer(params, options)
        return cls(model, optimizer, scheduler, params, config, precision)

    def _values(self, prompts: list[list[int]], completion: Tensor, n: int) -> Tensor:
        with autocast_context(completion.device, self.precision):
            return self.model.values(prompts, completion, n=n)

    @torch.no_grad()
    def values(self, rollout: Rollout) -> Tensor:
        """V(s_t) ``(N, T)`` float32 on the CPU, in micro-batches of prompt groups."""
        device = self.model.head.weight.device
        out = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32)
        for chunk, rows in micro_batches(list(range(len(rollout.prompt_ids))), self.config.micro_batch_groups,
                                         rollout.n):
            out[rows] = self._values([rollout.prompt_ids[g] for g in chunk],
                                     rollout.completion_ids[rows].to(device), rollout.n).cpu()
        return out

    def estimate(self, learner: Learner, scores: Scores, rollout: Rollout) -> CriticTargets:
        """The step's KL-shaped token rewards, values, GAE advantages (whitened when ``whiten_advantages``) and
        returns. Rows whose reward is not finite get advantage 0 and no value target."""
        c = self.config
        step = kl_reward_inputs(learner, scores, rollout)
        mask = step.mask
        old_values = self.values(rollout)
        token_rewards = kl_shaped_rewards(step.rewards, step.old_logps, step.ref_logps, mask, beta=c.reward_kl_coef)
        advantages, returns = gae(token_rewards, old_values, mask, gamma=c.gamma, lam=c.lam)
        if c.whiten_advantages:
            advantages = torch.where(mask, masked_whiten(advantages, mask), 0.0)
        metrics = {"kl": step.kl,  # k1 estimate, the reward's own
                   "value_before_mean": float(masked_mean(old_values, mask)),
                   "return_mean": float(masked_mean(returns, mask)),
                   "explained_variance": explained_variance(old_values, returns, mask)}
        return CriticTargets(advantages, returns, old_values, step.old_logps, mask, metrics)

    def update(self, rollout: Rollout, targets: CriticTargets, *, step: int) -> dict[str, float]:
        """``ppo_epochs`` passes of clipped value-loss updates on ``rollout``'s tokens, in the policy's mini-batches
        (``value_loss``, ``value_clip_frac``, ``value_grad_norm``: means over the updates; ``value_nonfinite`` when one
        was skipped)."""
        c, n = self.config, rollout.n
        device = self.model.head.weight.device
        trained = targets.mask & rollout.completion_mask  # the rollout's mask leaves out what filtration dropped
        sums: dict[str, float] = {}
        updates = 0
        for _, mini in update_schedule(c, len(rollout.prompt_ids), step):
            denominator = aggregate_denominator(trained[group_rows(mini, n)], "token_mean")
            for chunk, rows in micro_batches(mini, c.micro_batch_groups, n):
                mask = trained[rows].to(device)
                values = self._values([rollout.prompt_ids[g] for g in chunk], rollout.completion_ids[rows].to(device),
                                      n)
                out = clipped_value_loss(values, targets.old_values[rows].to(device), targets.returns[rows].to(device),
                                         mask, clip_range=c.value_clip)
                loss = aggregate(out.loss, mask, "token_mean", denominator=denominator)
                loss.backward()
                sums["value_loss"] = sums.get("value_loss", 0.0) + float(loss.detach())
                share = float(mask.sum()) / denominator
                clipped = float(out.metrics["value_clip_frac"]) * share
                sums["value_clip_frac"] = sums.get("value_clip_frac", 0.0) + clipped
            grad_norm = clip_gradients(self.params, c.max_grad_norm)
            if not torch.isfinite(grad_norm):  # nothing moves; the policy's own guard reports its step
                self.optimizer.zero_grad(set_to_none=True)
                sums["value_nonfinite"] = 1.0
                continue
            sums["value_grad_norm"] = sums.get("value_grad_norm", 0.0) + float(grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            updates += 1
        out = {k: v / max(updates, 1) for k, v in sums.items() if k != "value_nonfinite"}
        if "value_nonfinite" in sums:
            out["value_nonfinite"] = 1.0
        return out
