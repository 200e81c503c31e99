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

from ... import backend
from .common import OP_NAME, validate
from .cuda import CUDA_MAX_HEAD_DIM
from .dispatch import auto_cuda_order, torch_form
from .plans import MAX_HEAD_DIM
from .reference import attention_ref
from .torch_materialised import attention_materialised
from .torch_sdpa import SdpaAttention, attention_sdpa
from .triton_op import triton_forward_op

__all__ = ["attention", "attention_ref", "attention_sdpa", "attention_materialised", "validate"]


def attention(q, k, v, *, kind="l2", scale=None, key_padding_mask=None, impl="auto"):
    """Softmax attention with L2-distance ("l2") or dot-product ("dot") logits.

    Args:
        q: [B, H, Lq, D]; k: [B, H, Lk, D]; v: [B, H, Lk, Dv]. One device and dtype (fp32/fp16/bf16).
           k may be the same tensor as q (tied query/key weights, GigaGAN's self-attention).
        kind: "l2" (logit = -scale ||q_i - k_j||^2) or "dot" (logit = scale <q_i, k_j>).
        scale: default 1/sqrt(D).
        key_padding_mask: [B, Lk] bool, True = attend. A row with every key masked returns zeros.
        impl: "auto", "ref", "torch", "triton" or "cuda" (see gigagan_kernels.backend). "torch" is torch's
            scaled_dot_product_attention on exact operands (attention_sdpa); on CUDA "auto" takes it or the
            Triton kernels per call, whichever the cost model predicts faster (auto_cuda_order).

    Accumulation is fp32; the SDPA, Triton and CUDA paths keep O(L) memory (only the row log-sum-exp is
    saved). Gradients of every order are supported for every impl: create_graph=True backwards run through
    the reference. One exception: under torch.compile, impl="torch" is first-order (auto picks Triton there).
    """
    validate(q, k, v, kind, scale, key_padding_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    order = (auto_cuda_order(q.shape, k.shape, v.shape, kind, key_padding_mask is not None, q.dtype)
             if impl == "auto" and q.device.type == "cuda" else None)
    chosen = backend.resolve_impl(impl, q.device, OP_NAME, q.dtype, cuda_order=order)
    if chosen == "ref" or q.numel() == 0 or k.shape[2] == 0:
        return attention_ref(q, k, v, kind=kind, scale=scale, key_padding_mask=key_padding_mask)
    if chosen == "torch" and torch_form(q.shape[2], k.shape[2], q.device) == "materialised":
        return attention_materialised(q, k, v, kind=kind, scale=scale, key_padding_mask=key_padding_mask)
    if chosen == "torch":
        if torch.compiler.is_compiling():
            # dynamo traces SDPA itself; the Function's replayed inner graph is not traceable (first order only).
            return attention_sdpa(q, k, v, kind=kind, scale=scale, key_padding_mask=key_padding_mask)
        return SdpaAttention.apply(q, k, v, kind, scale, key_padding_mask)
    if chosen == "triton":
        max_head_dim, forward_op = MAX_HEAD_DIM, triton_forward_op
    else:
        max_head_dim, forward_op = CUDA_MAX_HEAD_DIM, backend.cuda_op(OP_NAME)
    for name, dim in (("q", q.shape[-1]), ("v", v.shape[-1])):
        if dim > max_head_dim:
            raise ValueError(f"attention(impl={chosen!r}): {name} head dim {dim} exceeds {max_head_dim}")
    out, _ = forward_op(q, k, v, kind, scale, key_padding_mask)
    return out
