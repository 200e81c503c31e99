"""Backends: what can run where, and the overrides of "auto".

impl names a backend ("ref", "torch", "triton", "cuda"), a candidate of the op ("torch:bmm"; see
gigagan_kernels/dispatcher.py) or "auto". "ref" is each op's readable oracle; "torch" its plain-torch composite
(any device); "triton" and "cuda" the fused kernels. Here: whether a backend can run at all on a device and dtype
(unavailable_reason), and what "auto" is forced to, first by the use_impl context manager, then by the
GIGAGAN_KERNELS_IMPL environment variable. Asking for a backend that cannot run raises; nothing falls back
silently.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import threading

import torch

from . import cuda_extension

IMPLS = ("ref", "torch", "triton", "cuda")
ENV_VAR = "GIGAGAN_KERNELS_IMPL"

# use_impl's choice, per thread. A thread-local rather than a ContextVar: torch 2.11's dynamo cannot trace
# ContextVar.get, which broke torch.compile(fullgraph=True) of impl="auto" there; it traces this and
# guards on it, so a different use_impl recompiles.
_override = threading.local()


def _forced_impl() -> str | None:
    return getattr(_override, "value", None)


@contextlib.contextmanager
def thread_override(holder: threading.local, value):
    """holder.value = value for this thread inside the block, the previous value after it: the mechanism of
    use_impl, adaptive_modconv.use_strategy and attention.use_torch_form."""
    previous = getattr(holder, "value", None)
    holder.value = value
    try:
        yield
    finally:
        holder.value = previous


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run on these tensors in this process."""


def triton_interpret() -> bool:
    """True when Triton kernels run through the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    return _TRITON_INSTALLED


def cuda_extension_ops(allow_compile: bool = False):
    """The torch.ops namespace of the CUDA extension once it is loaded, else None. It loads when already compiled
    for these sources and this torch; allow_compile=True (an explicit impl="cuda") compiles it first if need be
    (gigagan_kernels/cuda_extension.py). impl="auto" never compiles."""
    if not cuda_extension.available(allow_compile):
        return None
    return torch.ops.gigagan_kernels_cuda


def cuda_extension_has(op: str) -> bool:
    """Whether the loaded extension registers <op>_forward and <op>_backward."""
    ops = cuda_extension_ops()
    if ops is None:
        return False
    return all(hasattr(ops, f"{op}_{part}") for part in ("forward", "backward"))


def cuda_op(op: str):
    """gigagan_kernels_cuda::<op>_forward (its fake kernels and autograd are registered as the extension loads:
    fused_op.register_cuda_op)."""
    return getattr(cuda_extension_ops(), f"{op}_forward")


@contextlib.contextmanager
def use_impl(impl: str):
    """Force what impl="auto" resolves to, e.g. for an A/B run of a whole model: a backend, or a candidate name
    ("torch:bmm"; gigagan_kernels.candidates(op) lists them), which then applies to the op that has it."""
    if impl not in IMPLS + ("auto",) and not _is_candidate_name(impl):
        raise ValueError(f"use_impl(impl): expected one of {IMPLS + ('auto',)} or a candidate name, got {impl!r}")
    with thread_override(_override, impl):
        yield


def _is_candidate_name(name) -> bool:
    from .dispatcher import REGISTRY
    return any(name in entry.names for entry in REGISTRY.values())


def forced_impl(op: str, allowed: tuple) -> str:
    """What impl="auto" means for `op` now: use_impl's choice, else GIGAGAN_KERNELS_IMPL, else "auto". A
    candidate name of another op leaves this op on "auto"."""
    chosen = _forced_impl()
    forced = chosen or os.environ.get(ENV_VAR, "").strip() or "auto"
    if forced in IMPLS + ("auto",) or forced in allowed:
        return forced
    if _is_candidate_name(forced):
        return "auto"
    source = "use_impl()" if chosen else ENV_VAR
    raise ValueError(f"{source}: expected one of {IMPLS + ('auto',)} or a candidate name, got {forced!r}")


# What the fused kernels take; "ref" and "torch" take any floating dtype (float64 included: the tests' oracle).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def unavailable_reason(impl: str, device: torch.device, op: str, dtype: torch.dtype | None = None, *,
                       allow_compile: bool = False) -> str | None:
    """Why `impl` cannot run `op` on `device` (and inputs of `dtype`, when given), or None when it can.
    allow_compile: compile the CUDA extension if it is not (raises cuda_extension.CudaExtensionUnavailable when
    that fails)."""
    if impl in ("ref", "torch"):
        return None
    if dtype is not None and dtype not in KERNEL_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in KERNEL_DTYPES)
        return f"the {impl} kernels take {names} inputs, not {str(dtype).replace('torch.', '')}"
    if impl == "triton":
        if not triton_installed():
            return "triton is not installed"
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpret():
            return None
        return f"Triton kernels need CUDA tensors (got {device.type}); set TRITON_INTERPRET=1 to run them on CPU"
    if impl == "cuda":
        if device.type != "cuda":
            return f"the CUDA extension needs CUDA tensors (got {device.type})"
        if cuda_extension_ops(allow_compile) is None:
            return cuda_extension.unavailable_reason()
        if not cuda_extension_has(op):
            return f"the CUDA extension has no ops {op}_forward / {op}_backward"
        return None
    raise AssertionError(impl)
