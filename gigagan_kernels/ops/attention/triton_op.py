"""Backend "triton": its forward and backward as torch.library custom ops around the kernels of
triton_flash.py (imported on first use, so importing the package never needs Triton), with fake kernels, and
the autograd shared with the CUDA backend."""
from __future__ import annotations

from typing import Optional

import torch

from ... import fused_op
from .reference import reference_grads

_KIND_CODES = {"dot": 0, "l2": 1}


def _mask_for_kernel(mask):
    return None if mask is None else mask.contiguous().view(torch.int8)


@torch.library.custom_op("gigagan_kernels::attention_triton", mutates_args=())
def triton_forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: str, scale: float,
                      key_padding_mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton_flash
    return triton_flash.forward(q, k, v, _KIND_CODES[kind], scale, _mask_for_kernel(key_padding_mask))


@triton_forward_op.register_fake
def forward_fake(q, k, v, kind, scale, key_padding_mask):
    B, H, Lq, _ = q.shape
    return q.new_empty((B, H, Lq, v.shape[-1])), q.new_empty((B, H, Lq), dtype=torch.float32)


@torch.library.custom_op("gigagan_kernels::attention_triton_backward", mutates_args=())
def triton_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                       lse: torch.Tensor, kind: str, scale: float,
                       key_padding_mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton_flash
    return triton_flash.backward(grad_out, q, k, v, out, lse, _KIND_CODES[kind], scale,
                                 _mask_for_kernel(key_padding_mask))


@triton_backward_op.register_fake
def backward_fake(grad_out, q, k, v, out, lse, kind, scale, key_padding_mask):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def setup_context(ctx, inputs, output):
    q, k, v, kind, scale, mask = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask)
    ctx.options = (kind, scale)
    ctx.trailing_inputs = 3                              # kind, scale, key_padding_mask
    ctx.set_materialize_grads(False)                     # lse is saved, never used downstream: no zero fill


def first_order(backward_op):
    """The first-order backward of a fused forward op, through its backward op (same arguments)."""
    def first_order(ctx, grad_out):
        q, k, v, out, lse, mask = ctx.saved_tensors
        return backward_op(grad_out.contiguous(), q, k, v, out, lse, *ctx.options, mask)
    return first_order


def fused_reference_grads(ctx, grad_out):
    q, k, v, _out, _lse, mask = ctx.saved_tensors
    return reference_grads(q, k, v, *ctx.options, mask, grad_out)


fused_op.register_autograd(triton_forward_op, setup_context, first_order(triton_backward_op), fused_reference_grads)
