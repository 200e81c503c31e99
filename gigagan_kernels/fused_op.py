"""What both ops share between their fused kernels and autograd, written once.

A fused path is a forward op and a first-order backward op: torch.library custom ops around the Triton
kernels, or the C++ ops of the CUDA extension (gigagan_kernels_cuda::<op>_forward / _backward). Autograd runs
the backward op for a first-order backward; under create_graph=True it differentiates the op's float64-tested
reference instead, so gradients of every order are exact for every backend.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import cuda_extension


def reference_vjp(reference: Callable, inputs: tuple, grad_out: torch.Tensor) -> tuple:
    """grad_out's vector-Jacobian product through reference(*inputs), with create_graph=True: one gradient per
    input (None for inputs that are None or need no gradient)."""
    with torch.enable_grad():
        # view_as gives each argument its own graph node, so aliased arguments (k is q) get their own gradients.
        leaves = tuple(t.view_as(t) if t is not None and t.requires_grad else t for t in inputs)
        out = reference(*leaves)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True)
                     if wanted else ())
    return tuple(next(grads) if t is not None and t.requires_grad else None for t in leaves)


def autograd_backward(first_order: Callable, reference_grads: Callable) -> Callable:
    """The autograd backward of a fused forward op. first_order(ctx, grad) runs the fused backward op,
    reference_grads(ctx, grad) the reference; both return the gradients of the op's leading (differentiable)
    inputs, and the ctx.trailing_inputs inputs after them (options, masks) get None."""
    def backward(ctx, grad, *_grads_of_other_outputs):
        if grad is None:    # grads are not materialised: only a saved-for-backward output (d, lin, lse) was reached
            return (None,) * len(ctx.needs_input_grad)
        grads = reference_grads(ctx, grad) if torch.is_grad_enabled() else first_order(ctx, grad)
        return tuple(grads) + (None,) * ctx.trailing_inputs
    return backward


def register_autograd(op, setup_context: Callable, first_order: Callable, reference_grads: Callable) -> None:
    """op: a torch.library custom op, or the qualified name of one defined elsewhere (C++)."""
    torch.library.register_autograd(op, autograd_backward(first_order, reference_grads), setup_context=setup_context)


def register_cuda_op(op_name: str, forward_fake: Callable, backward_fake: Callable, setup_context: Callable,
                     first_order: Callable, reference_grads: Callable) -> None:
    """Give the CUDA extension's gigagan_kernels_cuda::<op_name>_forward and _backward their fake kernels and the
    forward its autograd (the C++ side registers only CUDA kernels) as soon as the extension loads (it compiles on
    first use), so raw torch.ops calls have them too. Nothing happens if the extension lacks the op."""
    def register():
        ops = torch.ops.gigagan_kernels_cuda
        if not all(hasattr(ops, f"{op_name}_{part}") for part in ("forward", "backward")):
            return
        torch.library.register_fake(f"gigagan_kernels_cuda::{op_name}_forward")(forward_fake)
        torch.library.register_fake(f"gigagan_kernels_cuda::{op_name}_backward")(backward_fake)
        register_autograd(f"gigagan_kernels_cuda::{op_name}_forward", setup_context, first_order, reference_grads)

    cuda_extension.on_load(register)
