"""A hand-written llama forward for sampling: the contract and the draws of ``TransformersGenerator``, faster.

Why: a CPU decode step of a small llama is bound by streaming the weights from memory (SmolLM2-135M: ~540 MB
fp32 per step), yet transformers' llama spends as long again on ~30 small ops per layer, separate q/k/v
projections and a KV cache grown by ``torch.cat`` every step. Here each call packs the live weights once
(fused QKV; every matrix either MKL-packed for the decode batch or ``(in, out)``-contiguous, see ``_Linear``),
preallocates a static KV cache written in place, runs prefill and decode through one forward of about 15
kernels per layer, and drops finished rows from the batch. The per-step draw (``rlxf.rollout.base.TokenSampler``)
and the position ids of left-padded rows are those ``TransformersGenerator`` uses, so with the same
``torch.Generator`` both backends draw the same tokens whenever their logits agree to float rounding (on SmolLM2
they differ by ~1e-5 in log-prob, so a rare draw that lands that close to a token boundary can differ).

Prompts that share a prefix (a chat template's system prompt) compute it once. Weights are re-read from the
model on every ``generate`` call (``load_weights`` copies new ones into that model): a policy that trains between
calls is updated in place by fused AdamW without bumping version counters, so a stale copy could not be
detected cheaply. Packing costs about one pass over the
weights (0.1-0.2 s for SmolLM2, about one decode step).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import LlamaForCausalLM

from rlxf.data.batching import left_padded_positions, pad_left
from rlxf.rollout.base import Rollout, TokenSampler, check_generate_args, load_state_into


def _unsupported_reason(model) -> str | None:
    """Why ``model`` cannot run here, or None: a plain ``LlamaForCausalLM`` with default RoPE, SiLU, no biases."""
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
        attn, mlp = layer.self_attn, layer.mlp
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if any(type(m) is not torch.nn.Linear for m in linears):  # e.g. peft LoRA wrappers
            return "supports plain nn.Linear projections only (merge adapters first)"
    return None


def supports(model) -> bool:
    """Whether :class:`FastLlamaGenerator` can run ``model``."""
    return _unsupported_reason(model) is None


class _Linear:
    """``x @ W.T`` for one weight ``W (out, in)`` and inputs of ``rows`` rows, in the fastest form W's storage allows.

    Row-major W (as loaded), float32, with MKL: packed once per call by ``cblas_sgemm_pack`` through
    ``torch.ops.mkl`` (the ops torch.compile's weight-freezing pass uses), for exactly ``rows`` rows: measured 1.2x
    (projections) to 1.5x (LM head) faster than ``x @ W.T`` in either layout for 32 rows here, and packing costs
    one pass over W. Inputs with another row count (prefill) fall back to ``F.linear`` inside the op.
    Otherwise (notably W stored transposed by ``use_kn_layout``, where packing would first need a transposed copy,
    ~5x slower than a memcpy here): ``x @ W.T`` on ``(in, out)``-contiguous memory, a free view in that case.
    """

    def __init__(self, weight: torch.Tensor, rows: int):
        self.weight, self.rows, self.packed, self.kn = weight.detach(), rows, None, None
        if _can_pack(self.weight):
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, rows)
        else:
            self.kn = self.weight.t().contiguous()

    def resize(self, rows: int) -> None:
        """Repack for a new row count (about one decode step's worth of weight streaming)."""
        if self.packed is not None and rows != self.rows:
            self.rows, self.packed = rows, torch.ops.mkl._mkl_reorder_linear_weight(self.weight, rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return x @ self.kn
        return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, None, self.rows)

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """``out += x @ W.T`` in place (one fused GEMM when not packed)."""
        if self.packed is None:
            out.addmm_(x, self.kn)
        else:
            out.add_(self(x))


def _can_pack(weight: torch.Tensor) -> bool:
    return (weight.is_contiguous() and weight.dtype == torch.float32 and weight.device.type == "cpu"
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"))


@dataclass
class _Layer:
    """One decoder layer's weights."""

    attn_norm: torch.Tensor  # (H,)
    qkv: _Linear  # H -> (q_heads + 2 kv_heads) * d: q, k, v heads; q/k dims reordered, see _pack
    o: _Linear  # q_heads * d -> H
    mlp_norm: torch.Tensor  # (H,)
    gate: _Linear  # H -> I
    up: _Linear  # H -> I
    down: _Linear  # I -> H


class FastLlamaGenerator:
    """Token-in/token-out generation for llama-architecture transformers models (e.g. SmolLM2).

    Args:
        model: a ``LlamaForCausalLM`` (see :func:`supports`); read, never modified; its training mode does not
            matter (llama has no dropout outside attention, and none is applied here). Computes in the
            model's dtype.
        eos_token_ids: token ids that end a completion.
        pad_token_id: id written after a completion ends.
    """

    supports = staticmethod(supports)

    def __init__(self, model, *, eos_token_ids, pad_token_id: int):
        reason = _unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"FastLlamaGenerator {reason}")
        self.model = model
        self.version = 0
        self.eos_token_ids = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long)
        self.pad_token_id = int(pad_token_id)
        config = model.config
        self.q_heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.q_heads
        self.eps = config.rms_norm_eps
        rope = getattr(config, "rope_parameters", None) or {}
        self.rope_theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))

    def load_weights(self, state: Mapping[str, Tensor], version: int) -> None:
        load_state_into(self.model, state)
        self.version = version

    def _pack(self, rows: int) -> list[_Layer]:
        """The live model's decoder weights, packed or copied for ``rows``-row decoding (see :class:`_Linear`).

        Within every q and k head the output dims are reordered ``0, d/2, 1, d/2+1, ...`` so that the pairs RoPE
        rotates together are adjacent and one complex multiply rotates a head; q.k dot products are unchanged
        because q and k are permuted alike.
        """
        d, heads = self.head_dim, self.q_heads + self.kv_heads
        pairs = torch.arange(d).view(2, d // 2).t().reshape(-1)
        cols = torch.cat([(torch.arange(heads)[:, None] * d + pairs).reshape(-1),
                          torch.arange(heads * d, (heads + self.kv_heads) * d)])
        layers = []
        for layer in self.model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            ws = [p.weight.detach() for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
            if all(w.is_contiguous() for w in ws):  # gather whole rows: cheap for row-major storage
                qkv = torch.cat(ws).index_select(0, cols.to(ws[0].device))
            else:  # use_kn_layout: gather columns of the (in, out) storage, keep it that way
                qkv = torch.cat([w.t() for w in ws], dim=1).index_select(1, cols.to(ws[0].device)).t()
            layers.append(_Layer(
                attn_norm=layer.input_layernorm.weight.detach(), qkv=_Linear(qkv, rows),
                o=_Linear(attn.o_proj.weight, rows), mlp_norm=layer.post_attention_layernorm.weight.detach(),
                gate=_Linear(mlp.gate_proj.weight, rows), up=_Linear(mlp.up_proj.weight, rows),
                down=_Linear(mlp.down_proj.weight, rows),
            ))
        return layers

    def _rotations(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE as unit complex numbers ``(length, d/2)`` for positions ``0..length-1``, each times
        ``(q_heads + kv_heads, 1)`` scales: q heads carry attention's ``d**-0.5``, k heads 1.
        Angles as transformers computes them (float32 ``position * inv_freq``), so cos and sin match its."""
        d = self.head_dim
        inv_freq = 1.0 / (self.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float, device=device) / d))
        angles = torch.arange(length, dtype=torch.float, device=device)[:, None] * inv_freq
        scale = torch.tensor([d ** -0.5] * self.q_heads + [1.0] * self.kv_heads, device=device)[:, None]
        return torch.complex(angles.cos(), angles.sin()), scale

    def _forward(self, layers, x, rot, bias, caches, start: int) -> torch.Tensor:
        """Run the decoder on ``T`` new positions per row; return the last position's hidden state ``(R, H)``.

        x: embeddings ``(R, T, H)`` (overwritten: it becomes the residual stream); rot: complex rotations
        ``(R, T, q_heads + kv_heads, d/2)``; bias: additive attention mask ``(R * kv_heads, group * T, start + T)``
        (0 or -inf) with ``group = q_heads / kv_heads``; caches: per layer keys ``(R, kv_heads, d, max_len)``
        and values ``(R, kv_heads, max_len, d)``, filled up to ``start``, written here at ``start .. start + T``.
        Keys are stored transposed so that ``q @ keys[..., :end]`` is a plain batched GEMM: a slice of row-major
        keys, transposed, is not BLAS-compatible and costs a copy (5x slower here).
        """
        rows, t, hidden = x.shape
        qh, kvh, d = self.q_heads, self.kv_heads, self.head_dim
        group, end = qh // kvh, start + t
        x = x.view(rows * t, hidden)  # the residual stream, updated in place
        for layer, (k_cache, v_cache) in zip(layers, caches, strict=True):
            qkv = layer.qkv(_rms_norm(x, layer.attn_norm, self.eps)).view(rows, t, qh + 2 * kvh, d)
            qk = _rotate(qkv[:, :, :qh + kvh], rot)  # q (pre-scaled) and k heads are adjacent: one multiply
            k_cache[..., start:end] = qk[:, :, qh:].permute(0, 2, 3, 1)
            v_cache[:, :, start:end] = qkv[:, :, qh + kvh:].transpose(1, 2)
            # Grouped-query attention without repeating K/V: the `group` query heads that share a KV head are
            # stacked along the query axis, so one small GEMM per (row, KV head) covers them.
            q = qk[:, :, :qh].reshape(rows, t, kvh, group, d).permute(0, 2, 3, 1, 4).reshape(rows * kvh, -1, d)
            scores = torch.baddbmm(bias, q, k_cache[..., :end].reshape(rows * kvh, d, end))
            out = torch.bmm(torch.softmax(scores, dim=-1), v_cache[:, :, :end].reshape(rows * kvh, end, d))
            layer.o.add_to(x, out.view(rows, kvh, group, t, d).permute(0, 3, 1, 2, 4).reshape(rows * t, qh * d))
            h = _rms_norm(x, layer.mlp_norm, self.eps)
            layer.down.add_to(x, F.silu(layer.gate(h)).mul_(layer.up(h)))
        return x.view(rows, t, hidden)[:, -1]

    def _prefill(self, layers, prompt_ids, rotations, head_scale, max_new_tokens: int):
        """Run the distinct prompts; return ``(last hidden (P, H), caches, attention mask (P, width))``.

        The prompts' common prefix (a chat template's system prompt) sits at columns ``0..shared-1`` of every row,
        computed for one row and copied to the others, and each rest is left-padded after it. Padding is masked
        wherever it sits and position ids skip it, so every token sees what it would see left-padded. A padding
        query may see itself, so its (unused) row stays finite and no NaN reaches the cache.
        """
        embed = self.model.model.embed_tokens.weight.detach()
        device, dtype = embed.device, embed.dtype
        kvh, d, group = self.kv_heads, self.head_dim, self.q_heads // self.kv_heads
        shared = _shared_prefix(prompt_ids)
        rest_ids, rest_attn = pad_left([p[shared:] for p in prompt_ids], self.pad_token_id)
        ids = torch.cat([torch.tensor(prompt_ids[0][:shared], dtype=torch.long).expand(len(prompt_ids), -1),
                         rest_ids], dim=1).to(device)
        attn = F.pad(rest_attn, (shared, 0), value=True).to(device)
        prompts, width = ids.shape
        allowed = torch.ones(width, width, dtype=torch.bool, device=device).tril() & attn[:, None, :]
        allowed |= torch.eye(width, dtype=torch.bool, device=device)
        bias = _additive(allowed, dtype)  # (P, width, width)
        rot = rotations[left_padded_positions(attn)][:, :, None] * head_scale
        caches = [(torch.zeros(prompts, kvh, d, width + max_new_tokens, dtype=dtype, device=device),
                   torch.zeros(prompts, kvh, width + max_new_tokens, d, dtype=dtype, device=device))
                  for _ in layers]

        def run(r: int, start: int, end: int, chunk_caches):
            """Columns start..end-1 of the first r rows."""
            b = bias[:r, None, None, start:end, :end].expand(r, kvh, group, end - start, end)
            return self._forward(layers, embed[ids[:r, start:end]], rot[:r, start:end],
                                 b.reshape(r * kvh, -1, end), chunk_caches, start)

        if shared:
            run(1, 0, shared, [(k[:1], v[:1]) for k, v in caches])
            for k, v in caches:
                k[1:, ..., :shared], v[1:, :, :shared] = k[:1, ..., :shared], v[:1, :, :shared]
        return run(prompts, shared, width, caches), caches, attn

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], *, n: int = 1, max_new_tokens: int = 32, temperature: float = 1.0,
                 greedy: bool = False, rng: torch.Generator | None = None) -> Rollout:
        """The ``Generator`` contract (`rlxf.rollout.base`)."""
        check_generate_args(prompt_ids, n=n, greedy=greedy, temperature=temperature)
        embed, final_norm = self.model.model.embed_tokens.weight.detach(), self.model.model.norm.weight.detach()
        device, dtype = embed.device, embed.dtype
        rows = len(prompt_ids) * n
        layers, head = self._pack(rows), _Linear(self.model.lm_head.weight, rows)
        kvh, group = self.kv_heads, self.q_heads // self.kv_heads
        rotations, head_scale = self._rotations(max(map(len, prompt_ids)) + max_new_tokens, device)
        hidden, caches, attn = self._prefill(layers, prompt_ids, rotations, head_scale, max_new_tokens)
        width = attn.shape[1]

        def logits_of(hidden):
            return head(_rms_norm(hidden, final_norm, self.eps))

        logits = logits_of(hidden)
        if n > 1:
            caches = [(k.repeat_interleave(n, dim=0), v.repeat_interleave(n, dim=0)) for k, v in caches]
            logits = logits.repeat_interleave(n, dim=0)
            attn = attn.repeat_interleave(n, dim=0)

        # Decode-time mask over all max_len key slots: prompt padding -inf, generated slots 0.
        key_bias = _additive(torch.cat([attn, attn.new_ones(rows, max_new_tokens)], dim=1), dtype)  # (R, max_len)
        next_pos = attn.sum(dim=1)  # position id of the first generated token
        live = torch.arange(rows, device=device)  # rows still in the batch (caches, key_bias, next_pos follow it)
        sampler = TokenSampler(rows, max_new_tokens, eos=self.eos_token_ids, pad_token_id=self.pad_token_id,
                               greedy=greedy, temperature=temperature, rng=rng, device=device)

        def next_logits(token: Tensor, t: int) -> Tensor:
            # Every row is drawn, finished ones too (their logits are stale), so that the draws consume the
            # generator exactly as TransformersGenerator does.
            nonlocal live, next_pos, key_bias, caches, logits
            keep = sampler.alive[live]
            if 4 * int(keep.sum()) <= 3 * len(live):
                # A quarter of the batch has finished: drop those rows (a copy of the live caches, about
                # what one decode step's attention reads) rather than keep computing them.
                live, next_pos, key_bias = live[keep], next_pos[keep], key_bias[keep]
                caches = [(k[keep], v[keep]) for k, v in caches]
                for linear in [head, *(m for x in layers for m in (x.qkv, x.o, x.gate, x.up, x.down))]:
                    linear.resize(len(live))
            slot, batch = width + t, len(live)
            bias = key_bias[:, None, :slot + 1].expand(batch, kvh * group, slot + 1)
            rot = rotations[next_pos + t][:, None, None] * head_scale
            hidden = self._forward(layers, embed[token[live]][:, None], rot,
                                   bias.reshape(batch * kvh, group, slot + 1), caches, slot)
            if batch == rows:
                logits = logits_of(hidden)
            else:
                logits[live] = logits_of(hidden)
            return logits

        sampler.decode(logits, next_logits)
        return sampler.rollout(prompt_ids, n)


def _shared_prefix(prompts: list[list[int]], min_saving: int = 64) -> int:
    """Length of the prefix all prompts share, at most the shortest prompt's length minus one (every row keeps a
    token of its own to predict from), or 0 when computing it once saves fewer than ``min_saving`` token positions:
    the extra pass over the weights costs about one decode step, ~70 positions of prefill compute here."""
    if len(prompts) < 2:
        return 0
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    length = 0
    while length < limit and all(p[length] == first[length] for p in prompts):
        length += 1
    return length if length * (len(prompts) - 1) >= min_saving else 0


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm``'s arithmetic (float32 statistics) in fewer ops: ``x * x`` rather than ``pow``, ``F.rms_norm``
    and an in-place ``eps`` (measured 33 us against 45-60 us for (32, 576) here; identical values)."""
    h = x.float()
    return weight * (h * torch.rsqrt((h * h).mean(-1, keepdim=True).add_(eps))).to(x.dtype)


def _rotate(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x (R, T, heads, d)`` whose rotated pairs are adjacent: a complex multiply by ``rot``.

    Equals transformers' ``x cos + rotate_half(x) sin`` on the un-permuted dims; computed in float32 since
    complex bfloat16 does not exist.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rot).flatten(-2).to(x.dtype)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean "may attend" -> additive mask: 0 where allowed, -inf elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
