"""Backends: what can run where, and the overrides of "auto".

impl names a backend ("ref", "torch", "triton", "cuda"), a candidate of the op ("torch:bmm"; see
gigagan_kernels/dispatcher.py) or "auto". "ref" is each op's readable oracle; "torch" its plain-torch composite
(any device); "triton" and "cuda" the fused kernels. Here: whether a backend can run at all on a device and dtype
(unavailable_reason), the CUDA extension's ops, and the thread-local override helper. What "auto" is forced to
(use_impl, GIGAGAN_KERNELS_IMPL) and the choice itself live in dispatcher.py. Asking for a backend that cannot run
raises; nothing falls back silently.
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


# os.environ.get encodes the name and decodes the value on every call (1-3 us here); on POSIX its byte dict is what
# it reads, so the per-call snapshot of the dispatcher reads that directly.
_ENVIRON_BYTES = os.environ._data if os.name == "posix" and isinstance(getattr(os.environ, "_data", None), dict) \
    else None


def environ_names(*names: str) -> tuple:
    """names prepared for environ_snapshot."""
    return tuple(map(os.fsencode, names)) if _ENVIRON_BYTES is not None else names


def environ_snapshot(prepared: tuple) -> tuple:
    """The raw values of environment variables (None where unset), cheaply: what a cached choice depends on."""
    return tuple(map((_ENVIRON_BYTES if _ENVIRON_BYTES is not None else os.environ).get, prepared))


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
