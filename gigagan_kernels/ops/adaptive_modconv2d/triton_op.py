"""Backend "triton": its forward and backward as torch.library custom ops (one of each for both strategies,
triton_weights.py and triton_fused.py), with fake kernels and autograd. The kernels are imported on first use,
so importing the package never needs Triton."""
from __future__ import annotations

from typing import Optional

import torch

from ... import fused_op
from .autograd import first_order, forward_fake, reference_grads, setup_context, weights_shape
from .common import ACT_LINEAR, ACT_LRELU


@torch.library.custom_op("gigagan_kernels::adaptive_modconv2d_triton", mutates_args=())
def triton_forward_op(x: torch.Tensor, weight_bank: torch.Tensor, select_logits: torch.Tensor, style: torch.Tensor,
                      bias: Optional[torch.Tensor], noise: Optional[torch.Tensor], demodulate: bool, eps: float,
                      activation: str, gain: float, clamp: Optional[float], save_lin: bool, strategy: str,
                      keep_weights: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns y, lin (d * conv before the epilogue; empty unless save_lin), d [B, Cout] fp32, and the
    per-sample weights of strategy "weights" when keep_weights (else empty)."""
    from . import triton_fused, triton_weights
    options = dict(demodulate=demodulate, eps=eps, activation_code=activation_code(activation), gain=gain,
                   clamp=clamp, save_lin=save_lin)
    if strategy == "weights":
        return triton_weights.weights_forward(x, weight_bank, select_logits, style, bias, noise,
                                              keep_weights=keep_weights, **options)
    y, lin, d = triton_fused.fused_forward(x, weight_bank, select_logits, style, bias, noise, **options)
    return y, lin, d, x.new_empty((0,))


def activation_code(activation):
    return ACT_LRELU if activation == "lrelu" else ACT_LINEAR


@triton_forward_op.register_fake
def _(x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain, clamp, save_lin,
      strategy, keep_weights):
    y, lin, d = forward_fake(x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain,
                             clamp, save_lin)
    return y, lin, d, x.new_empty(weights_shape(x, weight_bank) if strategy == "weights" and keep_weights else (0,))


@torch.library.custom_op("gigagan_kernels::adaptive_modconv2d_triton_backward", mutates_args=())
def triton_backward_op(grad_y: torch.Tensor, x: torch.Tensor, weight_bank: torch.Tensor, select_logits: torch.Tensor,
                       style: torch.Tensor, bias: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                       lin: torch.Tensor, d: torch.Tensor, kept_weights: torch.Tensor, demodulate: bool,
                       activation: str, gain: float, clamp: Optional[float], strategy: str
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns dx, dbank, dlogits, dstyle, dbias (empty when bias is None), dnoise (ditto)."""
    from . import triton_fused, triton_weights
    options = dict(demodulate=demodulate, activation_code=activation_code(activation), gain=gain, clamp=clamp)
    if strategy == "weights":
        return triton_weights.weights_backward(grad_y, x, weight_bank, select_logits, style, bias, noise, lin, d,
                                               kept_weights, **options)
    return triton_fused.fused_backward(grad_y, x, weight_bank, select_logits, style, bias, noise, lin, d, **options)


@triton_backward_op.register_fake
def _(grad_y, x, weight_bank, select_logits, style, bias, noise, lin, d, kept_weights, demodulate, activation, gain,
      clamp, strategy):
    empty = grad_y.new_empty((0,))
    return (torch.empty_like(x), torch.empty_like(weight_bank), torch.empty_like(select_logits),
            torch.empty_like(style), torch.empty_like(bias) if bias is not None else empty,
            torch.empty_like(noise) if noise is not None else empty)


fused_op.register_autograd(triton_forward_op, setup_context, first_order(triton_backward_op), reference_grads)
