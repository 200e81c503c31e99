"""Backend "cuda": the CUDA extension's ops (csrc/attention.{cu,cpp} register gigagan_kernels_cuda::attention_forward
/ _backward); their fake kernels and autograd (the Triton op's) are added here at import, so raw torch.ops calls
have them too."""
from __future__ import annotations

from ... import backend, fused_op
from .common import OP_NAME
from .triton_op import backward_fake, first_order, forward_fake, fused_reference_grads, setup_context

CUDA_MAX_HEAD_DIM = 128  # kAttentionMaxHeadDim in csrc/attention.h


def _cuda_backward(*args):
    return backend.cuda_extension_ops().attention_backward(*args)


fused_op.register_cuda_op(OP_NAME, forward_fake, backward_fake, setup_context, first_order(_cuda_backward),
                          fused_reference_grads)
