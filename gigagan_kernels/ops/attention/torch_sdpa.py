"""Backend "torch", its SDPA form: torch's scaled_dot_product_attention on operands that make it compute L2
logits exactly (flash-style, O(L) memory), with the reference's backward under create_graph=True."""
from __future__ import annotations

import contextlib
import math

import torch
from torch.nn.attention import sdpa_kernel

from .reference import reference_grads


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def sdpa_operands(q, k, v, kind, scale):
    """(q', k', v', scale') such that torch's dot-product SDPA on them is our attention, or the inputs as they
    are for dot logits.

    L2 logits -s||q_i - k_j||^2 equal 2s (q_i . k_j - ||k_j||^2 / 2) up to the row term -s||q_i||^2, which
    cancels in the softmax. So q' = [q, 1, 1, 0...] and k' = [k, hi, lo, 0...] with hi + lo = -||k_j||^2 / 2:
    the norm is reduced in fp32 and split into two parts of the input dtype (hi = the rounded value, lo = its
    rounding error), so it reaches the tensor cores' fp32 accumulator with ~16 (bf16) or ~22 (fp16) bits,
    against the fused kernels' 24-bit fp32 bias; in fp32 and fp64 lo is 0 and the bias is exact. All three
    are padded to one head dim, a multiple of 8, because the flash backend takes only equal head dims."""
    if kind == "dot":
        return q, k, v, scale
    B, H, Lq, D = q.shape
    Lk, Dv = k.shape[2], v.shape[3]
    width = _round_up(max(D + 2, Dv), 8)
    norm_dtype = torch.promote_types(k.dtype, torch.float32)                                    # fp32, or fp64
    bias = -0.5 * torch.linalg.vector_norm(k, dim=-1, dtype=norm_dtype).square()               # [B, H, Lk]
    hi = bias.to(k.dtype)
    lo = (bias - hi.to(norm_dtype)).to(k.dtype)
    q_aug = torch.cat([q, q.new_ones(B, H, Lq, 2), q.new_zeros(B, H, Lq, width - D - 2)], dim=-1)
    k_aug = torch.cat([k, hi[..., None], lo[..., None], k.new_zeros(B, H, Lk, width - D - 2)], dim=-1)
    v_aug = v if Dv == width else torch.cat([v, v.new_zeros(B, H, Lk, width - Dv)], dim=-1)
    return q_aug, k_aug, v_aug, 2.0 * scale


def attention_sdpa(q, k, v, *, kind="l2", scale=None, key_padding_mask=None, sdpa_backend=None):
    """torch's scaled_dot_product_attention on the operands of sdpa_operands: flash-style on CUDA (flash
    backend without a mask, memory-efficient or cuDNN with one) and on CPU, so O(L) memory. A row whose
    keys are all masked attends to every key inside SDPA (which would otherwise return NaN there) and is
    zeroed after. sdpa_backend (a torch.nn.attention.SDPBackend) forces SDPA's kernel; None lets torch pick.
    First-order gradients are SDPA's own; attention() wraps this for higher orders."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    Dv = v.shape[-1]
    q_, k_, v_, sdpa_scale = sdpa_operands(q, k, v, kind, scale)
    attn_mask, row_has_keys = None, None
    if key_padding_mask is not None:
        row_has_keys = key_padding_mask.any(dim=-1)                                             # [B]
        attn_mask = (key_padding_mask | ~row_has_keys[:, None])[:, None, None, :]
    with contextlib.nullcontext() if sdpa_backend is None else sdpa_kernel(sdpa_backend):
        out = torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, attn_mask=attn_mask, scale=sdpa_scale)
    if out.shape[-1] != Dv:
        out = out[..., :Dv]
    if row_has_keys is not None:
        out = out * row_has_keys[:, None, None, None].to(out.dtype)
    return out



class SdpaAttention(torch.autograd.Function):
    """attention_sdpa with SDPA's first-order backward, and the reference's under create_graph=True (SDPA's
    flash and memory-efficient backwards are not differentiable). The forward records SDPA's graph on
    detached inputs and the first backward replays and frees it; a second backward through the same graph
    (retain_graph=True) records it again."""

    @staticmethod
    def _record(q, k, v, kind, scale, mask, sdpa_backend):
        inner = [t.detach().requires_grad_(t.requires_grad) for t in (q, k, v)]
        with torch.enable_grad():
            return attention_sdpa(*inner, kind=kind, scale=scale, key_padding_mask=mask,
                                  sdpa_backend=sdpa_backend), inner

    @staticmethod
    def forward(ctx, q, k, v, kind, scale, mask, sdpa_backend=None):
        out, inner = SdpaAttention._record(q, k, v, kind, scale, mask, sdpa_backend)
        ctx.save_for_backward(q, k, v)
        ctx.inner = (out, inner)
        ctx.options = (kind, scale, mask, sdpa_backend)
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out):
        kind, scale, mask, sdpa_backend = ctx.options
        q, k, v = ctx.saved_tensors
        if torch.is_grad_enabled():
            return (*reference_grads(q, k, v, kind, scale, mask, grad_out), None, None, None, None)
        out, inner = ctx.inner if ctx.inner is not None else SdpaAttention._record(q, k, v, kind, scale, mask,
                                                                                  sdpa_backend)
        ctx.inner = None                                  # SDPA's saved tensors go with the replay
        wanted = [t for t in inner if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out) if wanted else ())
        return (*(next(grads) if t.requires_grad else None for t in inner), None, None, None, None)
