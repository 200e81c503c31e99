"""Backend "cuda": the CUDA extension's ops (csrc/adaptive_modconv.{cu,cpp} register
gigagan_kernels_cuda::adaptive_modconv2d_forward / _backward); their fake kernels and autograd are added here at
import, so raw torch.ops calls have them too."""
from __future__ import annotations

import torch

from ... import backend, cuda_extension, fused_op
from .autograd import first_order, forward_fake, reference_grads, setup_context, weights_shape
from .common import OP_NAME, workspace_bytes

CUDA_MAX_FILTERS = 32  # kModconvMaxFilters in csrc/adaptive_modconv.h


def _cuda_backward(*args):
    return backend.cuda_extension_ops().adaptive_modconv2d_backward(*args)


def cuda_plan(x_shape, bank_shape, element_size: int, *, needs_grad: bool, keep: int = -1, workspace=None):
    """(forward_chunk, backward_chunk, keep) of the CUDA path: csrc's plan_weights, the Triton "weights" plan of
    its batched-GEMM form."""
    _C = cuda_extension.load()                          # the pybind module; callers checked it is built
    B, Cin, H, W = x_shape
    _, Cout, _, k, _ = bank_shape
    return _C.modconv_plan_weights(B, Cin, H, W, Cout, k, element_size, needs_grad, keep,
                                   workspace_bytes() if workspace is None else workspace)


def _cuda_forward_fake(x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain, clamp,
                       save_lin, workspace, keep_weights):
    y, lin, d = forward_fake(x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain,
                             clamp, save_lin)
    keep = keep_weights and cuda_plan(x.shape, weight_bank.shape, x.element_size(), needs_grad=True,
                                      workspace=workspace)[2]
    return y, lin, d, x.new_empty(weights_shape(x, weight_bank) if keep else (0,))


def _cuda_backward_fake(grad_y, x, weight_bank, select_logits, style, bias, noise, lin, d, kept, demodulate,
                        activation, gain, clamp, workspace):
    empty = grad_y.new_empty((0,))
    return (torch.empty_like(x), torch.empty_like(weight_bank, memory_format=torch.contiguous_format),
            torch.empty_like(select_logits), torch.empty_like(style),
            torch.empty_like(bias) if bias is not None else empty,
            torch.empty_like(noise) if noise is not None else empty)


fused_op.register_cuda_op(OP_NAME, _cuda_forward_fake, _cuda_backward_fake, setup_context,
                          first_order(_cuda_backward), reference_grads)
