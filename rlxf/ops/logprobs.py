"""Per-token log-probabilities and entropies without materialising the full float32 (B*T, V) logits.

The log-softmax over a vocabulary of ~100k entries is where RL fine-tuning spends its memory: a float32 copy
of the logits for B*T tokens is often larger than the model. Everything here walks the flattened rows in
chunks of `chunk_size`, upcasts one `(chunk_size, V)` block to float32, reduces it to per-row numbers and
drops it before the next chunk. The backward passes are custom autograd Functions that recompute each chunk
from the saved inputs (and the forward's per-row statistics) instead of saving any vocabulary-sized block:

    d log softmax(z / tau)[y] / d z = (onehot(y) - softmax(z / tau)) / tau.

Within a chunk the float32 block is updated in place (softmax, then the gradient, in the same storage), so
a chunk costs one float32 block plus, for low-precision inputs, one block in the input dtype. Per row the
forward keeps the max m and s = sum_v exp(z_v - m) rather than lse = m + log s: with logits of 1e4, lse
rounds to 1e-3 in float32, while z - m and log s are both exact enough.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["logprobs_from_logits", "logprobs_from_hidden", "entropy_from_logits"]


# ---------------------------------------------------------------------------------------------------------
# Per-chunk maths on a float32 block `z` (rows = tokens, columns = vocabulary) that the caller owns: the
# block is overwritten.


def _chunk_stats(z: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """From tempered logits `z` (c, V) float32 return (label log-prob, m, s, e).

    With m = max_v z_v, e = exp(z - m) (written into z's storage) and s = sum_v e_v:
    log p_y = (z_y - m) - log s. m, s and log p_y are (c,); e is the (c, V) block.
    """
    label_logit = z.gather(1, labels.unsqueeze(1)).squeeze(1)
    row_max = z.amax(dim=1, keepdim=True)
    e = z.sub_(row_max).exp_()
    s = e.sum(dim=1)
    return (label_logit - row_max.squeeze(1)) - s.log(), row_max.squeeze(1), s, e


def _entropy_(e: Tensor, s: Tensor) -> Tensor:
    """Entropy per row from e = exp(z - m) (destroyed) and s = sum e, with p = e / s:
    H = -sum_v p_v log p_v = log s + sum_v entr(e_v) / s  (entr(x) = -x log x), so no second block."""
    return s.log() + torch.special.entr(e, out=e).sum(dim=1) / s


def _chunk_grad_(z: Tensor, labels: Tensor, row_max: Tensor, sum_exp: Tensor, coef: Tensor) -> Tensor:
    """Overwrite tempered logits `z` (c, V) float32 with coef * (onehot(labels) - softmax(z)); return it.

    `row_max`, `sum_exp` (c,) are the forward's m and s of the same rows; `coef` (c,) = upstream grad / tau.
    """
    probs = z.sub_(row_max.unsqueeze(1)).exp_()  # times 1/s below: softmax
    probs.mul_((-coef / sum_exp).unsqueeze(1))
    return probs.scatter_add_(1, labels.unsqueeze(1), coef.unsqueeze(1))


def _chunks(n: int, chunk_size: int) -> range:
    return range(0, n, chunk_size)


# ---------------------------------------------------------------------------------------------------------
# Logits given.


def _row_reader(logits: Tensor):
    """For (B, T, V) logits return rows(lo, hi): rows lo..hi-1 of the flattened (B*T, V) logits, no full copy.

    A contiguous-enough tensor is viewed; a strided one (e.g. `logits[:, :-1]`) is gathered chunk by chunk.
    """
    vocab = logits.shape[-1]
    try:
        flat = logits.view(-1, vocab)
        return lambda lo, hi: flat[lo:hi]
    except RuntimeError:
        time = logits.shape[1]

        def rows(lo: int, hi: int) -> Tensor:
            idx = torch.arange(lo, hi, device=logits.device)
            return logits[idx // time, idx % time]

        return rows


def _check_labels(labels: Tensor, lead_shape: torch.Size, what: str) -> Tensor:
    if labels.shape != lead_shape:
        raise ValueError(f"labels must be {tuple(lead_shape)} to match {what}, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    return labels.reshape(-1).long()


def _check_options(chunk_size: int, temperature: float) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


class _LogprobsFromLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, labels: Tensor, chunk_size: int, temperature: float):
        rows = _row_reader(logits)
        n = labels.shape[0]
        logps = torch.empty(n, dtype=torch.float32, device=logits.device)
        row_max, sum_exp = torch.empty_like(logps), torch.empty_like(logps)
        for lo in _chunks(n, chunk_size):
            hi = min(lo + chunk_size, n)
            z = rows(lo, hi).to(torch.float32, copy=True)
            if temperature != 1.0:
                z.div_(temperature)
            logps[lo:hi], row_max[lo:hi], sum_exp[lo:hi], _ = _chunk_stats(z, labels[lo:hi])
        ctx.save_for_backward(logits, labels, row_max, sum_exp)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        return logps

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_logps: Tensor):
        logits, labels, row_max, sum_exp = ctx.saved_tensors
        rows = _row_reader(logits)
        n, vocab = labels.shape[0], logits.shape[-1]
        grad = torch.empty(n, vocab, dtype=logits.dtype, device=logits.device)
        coef = grad_logps.float() / ctx.temperature
        for lo in _chunks(n, ctx.chunk_size):
            hi = min(lo + ctx.chunk_size, n)
            z = rows(lo, hi).to(torch.float32, copy=True)
            if ctx.temperature != 1.0:
                z.div_(ctx.temperature)
            grad[lo:hi] = _chunk_grad_(z, labels[lo:hi], row_max[lo:hi], sum_exp[lo:hi], coef[lo:hi])
        return grad.view(logits.shape), None, None, None


def logprobs_from_logits(
    logits: Tensor, labels: Tensor, *, chunk_size: int = 1024, temperature: float = 1.0
) -> Tensor:
    """log softmax(logits / temperature)[labels] per token, chunked over the flattened rows.

    logits: `(B, T, V)` any float dtype (bf16 is upcast one chunk at a time); labels: `(B, T)` integer in
    [0, V). Returns `(B, T)` float32, differentiable wrt `logits` (the backward recomputes each chunk's
    softmax, so no float32 `(B*T, V)` tensor is ever held).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    _check_options(chunk_size, temperature)
    flat_labels = _check_labels(labels, logits.shape[:-1], "logits (B, T, V)")
    logps = _LogprobsFromLogits.apply(logits, flat_labels, chunk_size, float(temperature))
    return logps.view(labels.shape)


@torch.no_grad()
def entropy_from_logits(logits: Tensor, *, chunk_size: int = 1024, temperature: float = 1.0) -> Tensor:
    """Entropy of softmax(logits / temperature) per token, chunked; `(B, T, V)` -> `(B, T)` float32, no grad.

    `temperature` is an addition to the spec's signature so that the entropy matches a tempered sampler.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    _check_options(chunk_size, temperature)
    rows = _row_reader(logits)
    n = logits.shape[0] * logits.shape[1]
    entropy = torch.empty(n, dtype=torch.float32, device=logits.device)
    for lo in _chunks(n, chunk_size):
        hi = min(lo + chunk_size, n)
        z = rows(lo, hi).to(torch.float32, copy=True)
        if temperature != 1.0:
            z.div_(temperature)
        exp_z = z.sub_(z.amax(dim=1, keepdim=True)).exp_()
        entropy[lo:hi] = _entropy_(exp_z, exp_z.sum(dim=1))
    return entropy.view(logits.shape[:2])


# ---------------------------------------------------------------------------------------------------------
# LM head fused with the log-softmax.


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on (as nn.Linear would use), else the promoted input dtype."""
    device = hidden.device.type
    promoted = torch.promote_types(hidden.dtype, weight.dtype)
    if promoted != torch.float64 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return promoted


def _no_autocast(device_type: str):
    # The backward runs outside the caller's autocast region, so both passes cast explicitly to the dtype
    # recorded in forward and keep autocast off: the recomputed logits are then bit-identical to forward's.
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to disable
        return contextlib.nullcontext()


class _LogprobsFromHidden(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        labels: Tensor,
        chunk_size: int,
        temperature: float,
        with_entropy: bool,
        hidden_grad_in_forward: bool,
    ):
        dtype = _compute_dtype(hidden, weight)
        n = hidden.shape[0]
        logps = torch.empty(n, dtype=torch.float32, device=hidden.device)
        row_max, sum_exp = torch.empty_like(logps), torch.empty_like(logps)
        entropy = torch.empty(n if with_entropy else 0, dtype=torch.float32, device=hidden.device)
        # With a frozen head, d log p_y / d h = (w_y - sum_v p_v w_v) / tau does not depend on the upstream
        # gradient, so it is computed here from the softmax already at hand and the backward only scales it:
        # two head matmuls per chunk instead of three, and the backward needs neither hidden nor weight.
        grad_unit = torch.empty_like(hidden) if hidden_grad_in_forward else None
        with _no_autocast(hidden.device.type):
            w = weight.to(dtype)
            for lo in _chunks(n, chunk_size):
                hi = min(lo + chunk_size, n)
                z = (hidden[lo:hi].to(dtype) @ w.t()).float()
                if temperature != 1.0:
                    z.div_(temperature)
                logps[lo:hi], row_max[lo:hi], sum_exp[lo:hi], exp_z = _chunk_stats(z, labels[lo:hi])
                if grad_unit is not None:
                    mean_w = (exp_z.to(dtype) @ w).float() / sum_exp[lo:hi].unsqueeze(1)
                    grad_unit[lo:hi] = (w[labels[lo:hi]].float() - mean_w) / temperature
                if with_entropy:
                    entropy[lo:hi] = _entropy_(exp_z, sum_exp[lo:hi])
        if grad_unit is not None:
            ctx.save_for_backward(grad_unit)
        else:
            ctx.save_for_backward(hidden, weight, labels, row_max, sum_exp)
        ctx.hidden_grad_in_forward = hidden_grad_in_forward
        ctx.dtype, ctx.chunk_size, ctx.temperature = dtype, chunk_size, temperature
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_logps: Tensor, _grad_entropy: Tensor):
        if ctx.hidden_grad_in_forward:
            (grad_unit,) = ctx.saved_tensors
            grad_hidden = (grad_unit.float() * grad_logps.float().unsqueeze(1)).to(grad_unit.dtype)
            return grad_hidden, None, None, None, None, None, None
        hidden, weight, labels, row_max, sum_exp = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype, chunk_size, temperature = ctx.dtype, ctx.chunk_size, ctx.temperature
        n = hidden.shape[0]
        coef = grad_logps.float() / temperature
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # Accumulated in the weight's own dtype (fp32 master weights under autocast stay fp32 here).
        grad_weight = torch.zeros_like(weight) if need_weight else None
        with _no_autocast(hidden.device.type):
            w = weight.to(dtype)
            for lo in _chunks(n, chunk_size):
                hi = min(lo + chunk_size, n)
                h = hidden[lo:hi].to(dtype)
                z = (h @ w.t()).float()
                if temperature != 1.0:
                    z.div_(temperature)
                grad_z = _chunk_grad_(z, labels[lo:hi], row_max[lo:hi], sum_exp[lo:hi], coef[lo:hi]).to(dtype)
                if need_hidden:
                    grad_hidden[lo:hi] = grad_z @ w
                if need_weight:
                    if grad_weight.dtype == dtype:
                        grad_weight.addmm_(grad_z.t(), h)
                    else:
                        grad_weight.add_(grad_z.t() @ h)
        return grad_hidden, grad_weight, None, None, None, None, None


def logprobs_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """The LM head fused with the log-softmax: log softmax(hidden @ weight.T / temperature)[labels].

    hidden: `(B, T, H)`; weight: `(V, H)` (the output embedding, tied or not, frozen or trainable);
    labels: `(B, T)` integer in [0, V). Returns `(logps, entropy)`, both `(B, T)` float32; `entropy` is the
    entropy of the tempered distribution (no gradient) when `with_entropy`, else None.

    Per chunk of `chunk_size` flattened rows the logits are computed in the matmul dtype (autocast's dtype
    when autocast is on, e.g. bf16, otherwise that of hidden/weight) and upcast to float32; only per-row
    numbers are kept. The backward recomputes each chunk and returns grads wrt `hidden` and `weight` (the
    latter only when it requires grad) with d/dlogits = g * (onehot - softmax) / temperature. With a frozen
    head (e.g. LoRA) the hidden grad per unit upstream grad, `(B*T, H)`, is formed in the forward instead and
    nothing is recomputed. Peak extra memory is one `(chunk_size, V)` float32 block (plus one in the matmul
    dtype), independent of B*T.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be (B, T, H), got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must be (V, H) with H = {hidden.shape[-1]}, got shape {tuple(weight.shape)}"
        )
    _check_options(chunk_size, temperature)
    flat_labels = _check_labels(labels, hidden.shape[:-1], "hidden (B, T, H)")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    hidden_grad_in_forward = torch.is_grad_enabled() and hidden.requires_grad and not weight.requires_grad
    logps, entropy = _LogprobsFromHidden.apply(
        flat_hidden,
        weight,
        flat_labels,
        chunk_size,
        float(temperature),
        bool(with_entropy),
        hidden_grad_in_forward,
    )
    return logps.view(labels.shape), (entropy.view(labels.shape) if with_entropy else None)
