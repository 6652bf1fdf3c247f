"""Sampling from the geometric mixture of two policies, token by token (Nash-MD's opponent).

Nash-MD (Munos et al. 2023, Sec. 6) plays the current policy against the regularised policy
``pi_mix(y|x) ∝ pi_theta(y|x)^(1-alpha) * mu(y|x)^alpha``. As in the paper's LLM experiments, the mixture is taken
per token: at each position the next-token distribution is ``softmax((1-alpha) log pi(.|x,y<t) + alpha log
mu(.|x,y<t))`` (`rlxf.ops.geometric_mixture_logprobs`), so each row runs both models with their own KV cache.
The sampled tokens and their log-probs under the mixture come back in the usual :class:`~rlxf.types.Rollout`.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from transformers import DynamicCache

from rlxf.data.batching import left_padded_positions, pad_left
from rlxf.models.forward import cache_kwargs
from rlxf.ops import geometric_mixture_logprobs
from rlxf.rollout.base import Rollout, TokenSampler, check_generate_args, load_state_into

__all__ = ["GeometricMixtureGenerator"]


class GeometricMixtureGenerator:
    """Token-in/token-out sampling from ``pi^(1-mixture_coef) * mu^mixture_coef`` (normalised per token).

    Args:
        policy: the current policy pi (its weights are what ``load_weights`` updates).
        reference: the fixed policy mu.
        mixture_coef: alpha in [0, 1]; 0 samples from ``policy``, 1 from ``reference``.
    """

    def __init__(self, policy, reference, *, mixture_coef: float, eos_token_ids, pad_token_id: int):
        if not 0.0 <= mixture_coef <= 1.0:
            raise ValueError(f"mixture_coef must be in [0, 1], got {mixture_coef}")
        self.policy, self.reference, self.mixture_coef = policy, reference, float(mixture_coef)
        self.eos_token_ids = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long)
        self.pad_token_id = int(pad_token_id)
        self.version = 0

    def load_weights(self, state: Mapping[str, Tensor], version: int) -> None:
        load_state_into(self.policy, state)
        self.version = version

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], *, n: int = 1, max_new_tokens: int = 32, temperature: float = 1.0,
                 greedy: bool = False, rng: torch.Generator | None = None) -> Rollout:
        """The ``Generator`` contract (`rlxf.rollout.base`); the log-probs are the mixture's."""
        check_generate_args(prompt_ids, n=n, greedy=greedy, temperature=temperature)
        models = (self.policy, self.reference)
        device = next(self.policy.parameters()).device
        modes = [m.training for m in models]
        for m in models:
            m.eval()
        ids, attn = pad_left(prompt_ids, self.pad_token_id)
        ids, attn = ids.to(device), attn.to(device)
        caches = [DynamicCache(config=m.config) for m in models]

        def last_logits(inputs: dict) -> list[Tensor]:
            return [m(**inputs, **cache_kwargs(m, c), use_cache=True, logits_to_keep=1).logits[:, -1, :].float()
                    for m, c in zip(models, caches, strict=True)]

        def mixed(logits: list[Tensor]) -> Tensor:
            return geometric_mixture_logprobs(logits[0], logits[1], mixture_coef=self.mixture_coef)

        logits = last_logits(dict(input_ids=ids, attention_mask=attn.long(), position_ids=left_padded_positions(attn)))
        if n > 1:
            for c in caches:
                c.batch_repeat_interleave(n)
            logits = [x.repeat_interleave(n, dim=0) for x in logits]
            attn = attn.repeat_interleave(n, dim=0)
        rows = attn.shape[0]
        next_pos = attn.sum(dim=1, keepdim=True)
        sampler = TokenSampler(rows, max_new_tokens, eos=self.eos_token_ids, pad_token_id=self.pad_token_id,
                               greedy=greedy, temperature=temperature, rng=rng, device=device)

        def next_logits(token: Tensor, t: int) -> Tensor:
            nonlocal attn
            attn = torch.cat([attn, torch.ones((rows, 1), dtype=torch.bool, device=device)], dim=1)
            return mixed(last_logits(dict(input_ids=token[:, None], attention_mask=attn.long(),
                                          position_ids=next_pos + t)))

        sampler.decode(mixed(logits), next_logits)
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
        return sampler.rollout(prompt_ids, n)
