"""What the fused backends (Triton and CUDA) share around their forward and backward ops: the shapes their fake
kernels promise, what autograd saves, and the two backwards (the fused backward op for first-order gradients,
the reference's under create_graph=True; gigagan_kernels/fused_op.py)."""
from __future__ import annotations

import torch

from ... import fused_op
from .reference import adaptive_modconv2d_ref


def needs_lin(activation, gain, clamp, bias, noise) -> bool:
    """lin (the demodulated conv before the epilogue) differs from y, so it must be saved."""
    return activation == "lrelu" or gain != 1.0 or clamp is not None or bias is not None or noise is not None


def weights_shape(x, weight_bank):
    return (x.shape[0], weight_bank.shape[1], weight_bank.shape[2] * weight_bank.shape[3] * weight_bank.shape[4])


def forward_fake(x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain, clamp,
                 save_lin):
    B, _, H, W = x.shape
    Cout = weight_bank.shape[1]
    y = x.new_empty((B, Cout, H, W))
    lin = x.new_empty((B, Cout, H, W)) if save_lin else x.new_empty((0,))
    return y, lin, x.new_empty((B, Cout), dtype=torch.float32)


def setup_context(ctx, inputs, output):
    """Shared by the Triton op (extra inputs: strategy, keep_weights) and the CUDA op (workspace, keep_weights);
    both return the kept per-sample weights as a fourth output, and take the first extra input back."""
    x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain, clamp, save_lin = inputs[:12]
    y, lin, d = output[:3]
    ctx.save_for_backward(x, weight_bank, select_logits, style, bias, noise, lin if save_lin else y, d, *output[3:])
    ctx.options = (demodulate, eps, activation, gain, clamp)
    ctx.backend_options = tuple(inputs[12:13])          # the Triton strategy, or the CUDA workspace
    ctx.trailing_inputs = len(inputs) - 6
    # lin, d and the kept weights are saved, never used downstream: no zero-filled gradients for them.
    ctx.set_materialize_grads(False)


def first_order(backward_op):
    """The first-order backward of a fused forward op, through its backward op."""
    def first_order(ctx, grad_y):
        x, weight_bank, select_logits, style, bias, noise, lin, d, *kept = ctx.saved_tensors
        demodulate, _eps, activation, gain, clamp = ctx.options
        dx, dbank, dlogits, dstyle, dbias, dnoise = backward_op(
            grad_y, x, weight_bank, select_logits, style, bias, noise, lin, d, *kept, demodulate, activation, gain,
            clamp, *ctx.backend_options)
        return (dx, dbank, dlogits, dstyle, dbias if bias is not None else None,
                dnoise if noise is not None else None)
    return first_order


def reference_grads(ctx, grad_y):
    x, weight_bank, select_logits, style, bias, noise = ctx.saved_tensors[:6]
    demodulate, eps, activation, gain, clamp = ctx.options
    return fused_op.reference_vjp(
        lambda *t: adaptive_modconv2d_ref(*t[:5], demodulate=demodulate, eps=eps, noise=t[5], activation=activation,
                                          gain=gain, clamp=clamp),
        (x, weight_bank, select_logits, style, bias, noise), grad_y)
