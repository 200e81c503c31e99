"""Attention with L2-distance or dot-product logits and a key padding mask.

    kind "l2":  logit[i, j] = -scale * ||q_i - k_j||^2     (GigaGAN's Lipschitz self-attention)
    kind "dot": logit[i, j] =  scale * <q_i, k_j>
    out = softmax_j(logits, masked keys -> -inf) @ v;  a row with every key masked returns zeros.

The package, after xformers' ops/fmha: this file holds the public function; common.py the contract and
validation; one file per backend (reference.py "ref"; torch_sdpa.py and torch_materialised.py, the two forms
of "torch"; triton_op.py "triton" with its kernels in triton_flash.py; cuda.py "cuda"); plans.py the launch
tables; dispatch.py the choice among them.

Gradient order: first-order backward of the fused paths runs fused kernels; under create_graph=True
(R1 through the discriminator) it is recomputed through the reference, so every order is exact.
"""
from __future__ import annotations

import math

import torch

from ...dispatcher import cached_choice, choose
from . import cuda, triton_op  # noqa: F401  (registering the fused ops' fake kernels and autograd)
from .common import OP_NAME, validate
from .dispatch import AttentionCall
from .reference import attention_ref
from .torch_materialised import attention_materialised
from .torch_sdpa import attention_sdpa

__all__ = ["attention", "attention_ref", "attention_sdpa", "attention_materialised", "validate"]


def _cache_key(q, k, v, kind, scale, key_padding_mask, impl):
    """What validation and the choice of candidate read from one call, or None where it cannot be keyed (a
    non-tensor argument, which validate rejects; while dynamo traces)."""
    Tensor = torch.Tensor
    if (torch.compiler.is_compiling() or not isinstance(q, Tensor) or not isinstance(k, Tensor)
            or not isinstance(v, Tensor)):
        return None
    mask = key_padding_mask
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            return None
        mask = (mask.shape, mask.dtype, mask.device)
    return (q.shape, q.stride(), q.dtype, q.device, q.requires_grad, k is q, k.shape, k.stride(), k.dtype, k.device,
            k.requires_grad, v.shape, v.stride(), v.dtype, v.device, v.requires_grad, mask, kind, scale, impl,
            torch.is_grad_enabled(), torch._C._is_any_autocast_enabled())


def attention(q, k, v, *, kind="l2", scale=None, key_padding_mask=None, impl="auto"):
    """Softmax attention with L2-distance ("l2") or dot-product ("dot") logits.

    Args:
        q: [B, H, Lq, D]; k: [B, H, Lk, D]; v: [B, H, Lk, Dv]. One device and dtype (fp32/fp16/bf16).
           k may be the same tensor as q (tied query/key weights, GigaGAN's self-attention).
        kind: "l2" (logit = -scale ||q_i - k_j||^2) or "dot" (logit = scale <q_i, k_j>).
        scale: default 1/sqrt(D).
        key_padding_mask: [B, Lk] bool, True = attend. A row with every key masked returns zeros.
        impl: "auto", a backend ("ref", "torch", "triton", "cuda": the best of its candidates) or a candidate
            ("torch:sdpa-flash", "torch:materialised", ...; gigagan_kernels.candidates("attention") lists them).
            "torch" is torch's scaled_dot_product_attention on exact operands (attention_sdpa), or for small
            calls the materialised form. "auto" times the runnable candidates on the first call with a new
            shape and keeps the fastest (gigagan_kernels/autotune.py); an unrunnable request raises
            BackendUnavailableError with the reasons.

    Accumulation is fp32; the SDPA, Triton and CUDA paths keep O(L) memory (only the row log-sum-exp is
    saved). Gradients of every order are supported for every impl: create_graph=True backwards run through
    the reference. One exception: under torch.compile, impl="torch" is first-order (auto picks Triton there).
    """
    call, candidate = prepare(q, k, v, kind=kind, scale=scale, key_padding_mask=key_padding_mask, impl=impl)
    if q.numel() == 0 or k.shape[2] == 0:
        return attention_ref(q, k, v, kind=kind, scale=call.scale, key_padding_mask=key_padding_mask)
    return candidate.run(call)


def prepare(q, k, v, *, kind="l2", scale=None, key_padding_mask=None, impl="auto"):
    """attention up to its launch: the validated call and the candidate that runs it (what the host benchmark
    times as dispatch)."""
    key = _cache_key(q, k, v, kind, scale, key_padding_mask, impl)
    candidate = cached_choice(OP_NAME, key)
    if candidate is None:       # a call not seen before: validated here, once per key
        validate(q, k, v, kind, scale, key_padding_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    call = AttentionCall(q, k, v, kind=kind, scale=scale, key_padding_mask=key_padding_mask, needs_grad=needs_grad)
    if candidate is None:
        candidate = choose(OP_NAME, impl, call, empty=q.numel() == 0 or k.shape[2] == 0, cache_key=key)
    return call, candidate
