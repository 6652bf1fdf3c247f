"""A hand-written llama forward for sampling: the same contract and draws as ``TransformersGenerator``, faster.

Why: on a small CPU a decode step is bound by streaming the weights from memory (SmolLM2-135M: ~540 MB fp32 per
step), yet transformers' llama spends as long again on ~30 small ops per layer, separate q/k/v and gate/up
projections, and a KV cache grown by ``torch.cat`` every step. Here each call packs the live weights once
(fused QKV and gate/up, every matrix stored ``(in, out)``-contiguous so decoding computes ``x @ W``, the layout
MKL's small-row GEMM prefers), preallocates a static KV cache written in place, and runs prefill and decode
through one forward function. The sampling loop, the inverse-CDF draw, the completion mask and the position ids
of left-padded rows are those of ``TransformersGenerator``, imported rather than copied, so with the same
``torch.Generator`` both backends draw the same tokens whenever their logits agree to float rounding.

Weights are repacked on every ``generate`` call: the policy trains between calls, and fused AdamW updates
parameters in place without bumping their version counters, so a stale copy could not be detected cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlxf.rollout.base import Rollout, pad_left
from rlxf.rollout.transformers_backend import _completion_mask, _positions, sample_categorical


def _unsupported_reason(model) -> str | None:
    """Why ``model`` cannot run here, or None: a plain ``LlamaForCausalLM`` with default RoPE, SiLU, no biases."""
    from transformers import LlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM):
        return f"needs a transformers LlamaForCausalLM, got {type(model).__name__}"
    config = model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return f"supports rope_scaling None (rope_type 'default') only, got {rope}"
    if config.hidden_act != "silu":
        return f"supports hidden_act 'silu' only, got {config.hidden_act!r}"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "supports bias-free projections only (attention_bias and mlp_bias must be False)"
    for layer in model.model.layers:
        linears = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                   layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj]
        if any(type(m) is not torch.nn.Linear for m in linears):  # e.g. peft LoRA wrappers: merge them first
            return "supports plain nn.Linear projections only (merge adapters before generating)"
    return None


def supports(model) -> bool:
    """Whether :class:`FastLlamaGenerator` can run ``model``."""
    return _unsupported_reason(model) is None


@dataclass
class _Layer:
    """One decoder layer's weights, each matrix ``(in, out)``-contiguous for ``x @ W``."""

    attn_norm: torch.Tensor  # (H,)
    q: torch.Tensor  # (H, q_heads * head_dim)
    k: torch.Tensor  # (H, kv_heads * head_dim)
    v: torch.Tensor  # (H, kv_heads * head_dim)
    o: torch.Tensor  # (q_heads * head_dim, H)
    mlp_norm: torch.Tensor  # (H,)
    gate: torch.Tensor  # (H, I)
    up: torch.Tensor  # (H, I)
    down: torch.Tensor  # (I, H)


def _kn(weight: torch.Tensor) -> torch.Tensor:
    """An nn.Linear weight ``(out, in)`` as ``(in, out)``-contiguous: free for a ``use_kn_layout`` model."""
    return weight.detach().t().contiguous()


class FastLlamaGenerator:
    """Token-in/token-out generation for llama-architecture transformers models (e.g. SmolLM2).

    Args:
        model: a ``LlamaForCausalLM`` (see :func:`supports`); it is read, never modified, and its training
            mode is irrelevant (no dropout is applied here).
        eos_token_ids: token ids that end a completion.
        pad_token_id: id written after a completion ends.
    """

    supports = staticmethod(supports)

    def __init__(self, model, *, eos_token_ids, pad_token_id: int):
        reason = _unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"FastLlamaGenerator {reason}")
        self.model = model
        self.eos_token_ids = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long)
        self.pad_token_id = int(pad_token_id)
        config = model.config
        self.q_heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.q_heads
        self.eps = config.rms_norm_eps
        rope = getattr(config, "rope_parameters", None) or {}
        self.rope_theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))

    def _pack(self) -> tuple[torch.Tensor, list[_Layer], torch.Tensor, torch.Tensor]:
        """``(embedding (V, H), layers, final norm (H,), LM head (H, V))`` copied from the live model."""
        m = self.model
        layers = [
            _Layer(
                attn_norm=layer.input_layernorm.weight.detach(), q=_kn(layer.self_attn.q_proj.weight),
                k=_kn(layer.self_attn.k_proj.weight), v=_kn(layer.self_attn.v_proj.weight),
                o=_kn(layer.self_attn.o_proj.weight), mlp_norm=layer.post_attention_layernorm.weight.detach(),
                gate=_kn(layer.mlp.gate_proj.weight), up=_kn(layer.mlp.up_proj.weight),
                down=_kn(layer.mlp.down_proj.weight),
            )
            for layer in m.model.layers
        ]
        return m.model.embed_tokens.weight.detach(), layers, m.model.norm.weight.detach(), _kn(m.lm_head.weight)

    def _rope_tables(self, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``(length, head_dim)`` for positions ``0..length-1``, computed as transformers does."""
        d = self.head_dim
        inv_freq = 1.0 / (self.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float, device=device) / d))
        freqs = torch.arange(length, dtype=torch.float, device=device)[:, None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm in float32 then back to the model dtype, as ``LlamaRMSNorm``."""
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def _forward(self, weights, x, cos, sin, bias, caches, start: int) -> torch.Tensor:
        """Run the decoder on ``T`` new positions per row and return the final-normed last hidden ``(R, H)``.

        x: ``(R, T, H)`` embeddings; cos/sin: ``(R, T, 1, head_dim)`` per-token rotations; bias: additive
        attention mask ``(R, 1, 1, T, start + T)`` (0 or -inf); caches: per layer ``(k, v)`` each
        ``(R, kv_heads, max_len, head_dim)``, filled up to ``start`` and written here at ``start .. start+T``.
        """
        _, layers, final_norm, _ = weights
        rows, t, _ = x.shape
        qh, kvh, d = self.q_heads, self.kv_heads, self.head_dim
        group, end = qh // kvh, start + t
        for layer, (k_cache, v_cache) in zip(layers, caches, strict=True):
            h = self._norm(x, layer.attn_norm)
            q = _rope((h @ layer.q).view(rows, t, qh, d), cos, sin)
            k_cache[:, :, start:end] = _rope((h @ layer.k).view(rows, t, kvh, d), cos, sin).transpose(1, 2)
            v_cache[:, :, start:end] = (h @ layer.v).view(rows, t, kvh, d).transpose(1, 2)
            # Grouped-query attention without repeating K/V: the `group` query heads sharing a KV head are
            # stacked along the query axis, so one batched matmul per (row, KV head) covers them.
            q = q.view(rows, t, kvh, group, d).permute(0, 2, 3, 1, 4).reshape(rows, kvh, group * t, d)
            scores = (q @ k_cache[:, :, :end].transpose(-1, -2)).mul_(d ** -0.5)
            probs = torch.softmax(scores.view(rows, kvh, group, t, end) + bias, dim=-1)
            out = probs.view(rows, kvh, group * t, end) @ v_cache[:, :, :end]
            out = out.view(rows, kvh, group, t, d).permute(0, 3, 1, 2, 4).reshape(rows, t, qh * d)
            x = x + out @ layer.o
            h = self._norm(x, layer.mlp_norm)
            x = x + (torch.nn.functional.silu(h @ layer.gate) * (h @ layer.up)) @ layer.down
        return self._norm(x[:, -1], final_norm)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        *,
        n: int = 1,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        greedy: bool = False,
        rng: torch.Generator | None = None,
    ) -> Rollout:
        if greedy and n != 1:
            raise ValueError("greedy decoding gives one completion per prompt: use n=1")
        if not greedy and temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("every prompt needs at least one token")
        embed = self.model.model.embed_tokens.weight
        device, dtype = embed.device, embed.dtype
        weights = self._pack()
        head = weights[3]
        ids, attn = pad_left(prompt_ids, self.pad_token_id)
        ids, attn = ids.to(device), attn.to(device)
        eos = self.eos_token_ids.to(device)
        prompts, width = ids.shape
        max_len = width + max_new_tokens
        cos_table, sin_table = self._rope_tables(max_len, device, dtype)

        # Prefill the distinct prompts. Keys at left-padding are masked out; a padding query may see only
        # itself, so its (unused) row stays finite and no NaN reaches the cache.
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        allowed = (causal & attn[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device)
        bias = _additive(allowed, dtype)[:, None, None]  # (P, 1, 1, T, T)
        pos = _positions(attn)
        shape = (prompts, self.kv_heads, max_len, self.head_dim)
        caches = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                  for _ in weights[1]]
        hidden = self._forward(weights, embed[ids], cos_table[pos][:, :, None], sin_table[pos][:, :, None], bias,
                               caches, 0)
        logits = hidden @ head
        if n > 1:
            caches = [(k.repeat_interleave(n, dim=0), v.repeat_interleave(n, dim=0)) for k, v in caches]
            logits = logits.repeat_interleave(n, dim=0)
            attn = attn.repeat_interleave(n, dim=0)

        rows = logits.shape[0]
        # Decode-time mask over all max_len key slots: prompt padding is -inf, generated slots are 0.
        key_ok = torch.cat([attn, torch.ones(rows, max_new_tokens, dtype=torch.bool, device=device)], dim=1)
        key_bias = _additive(key_ok, dtype)[:, None, None, None, :]  # (R, 1, 1, 1, max_len)
        next_pos = attn.sum(dim=1)  # position id of the first generated token
        tokens = torch.full((rows, max_new_tokens), self.pad_token_id, dtype=torch.long, device=device)
        logps = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
        alive = torch.ones(rows, dtype=torch.bool, device=device)
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        length = 0
        for t in range(max_new_tokens):
            scores = torch.log_softmax(logits.float() / (1.0 if greedy else temperature), dim=-1)
            token = scores.argmax(dim=-1) if greedy else sample_categorical(scores, rng)
            token = torch.where(alive, token, torch.full_like(token, self.pad_token_id))
            tokens[:, t] = token
            logps[:, t] = torch.where(alive, scores.gather(1, token[:, None]).squeeze(1), 0.0)
            length = t + 1
            is_eos = torch.isin(token, eos) & alive
            finished |= is_eos
            alive &= ~is_eos
            if not alive.any() or t == max_new_tokens - 1:
                break
            slot, p = width + t, next_pos + t
            hidden = self._forward(weights, embed[token][:, None], cos_table[p][:, None, None],
                                   sin_table[p][:, None, None], key_bias[..., :slot + 1], caches, slot)
            logits = hidden @ head
        tokens, logps = tokens[:, :length], logps[:, :length]
        mask = _completion_mask(tokens, eos)
        return Rollout(
            prompt_ids=[list(p) for p in prompt_ids], completion_ids=tokens.cpu(), completion_mask=mask.cpu(),
            sampler_logps=logps.cpu(), finished=finished.cpu(), n=n,
        )


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x cos + rotate_half(x) sin`` for ``x (R, T, heads, d)``, as transformers' ``apply_rotary_pos_emb``."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean "may attend" -> additive mask: 0 where allowed, -inf elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
