"""How attention chooses: the torch composite's form, and auto's per-call order of backends on CUDA from the
cost model (gigagan_kernels/cost_model.py); and the override that forces the form."""
from __future__ import annotations

import contextlib
import threading

import torch

from ... import backend
from .cuda import CUDA_MAX_HEAD_DIM
from .plans import MAX_HEAD_DIM

TORCH_FORMS = ("sdpa", "materialised")
# CPU: below this many logits per head the materialised form measured faster on the 2-core build machine
# (256 x 77 masked: 3.7 against 9.4 ms fwd+bwd; 64 x 65: 6.4 against 13.9), above it SDPA (256 x 256: 9.6
# against 14.0). CUDA always takes SDPA: flash-style, O(L) memory.
CPU_MATERIALISED_MAX_LOGITS = 32768
_forced_torch_form = threading.local()


@contextlib.contextmanager
def use_torch_form(form: str):
    """Force the torch composite's form ("sdpa" or "materialised"), e.g. to test or time each."""
    if form not in TORCH_FORMS:
        raise ValueError(f"use_torch_form: form must be one of {TORCH_FORMS}, got {form!r}")
    with backend.thread_override(_forced_torch_form, form):
        yield


def torch_form(Lq: int, Lk: int, device: torch.device) -> str:
    """Which exact form the torch composite runs for a call."""
    forced = getattr(_forced_torch_form, "value", None)
    if forced is not None:
        return forced
    return "materialised" if device.type == "cpu" and Lq * Lk <= CPU_MATERIALISED_MAX_LOGITS else "sdpa"


_CUDA_ORDERS: dict = {}


def auto_cuda_order(q_shape, k_shape, v_shape, kind, masked, dtype) -> tuple:
    """impl="auto"'s order of preference on CUDA for one call, fastest first as the cost model predicts
    forward + backward (gigagan_kernels/cost_model.py, fit to the committed H200 measurements): the SDPA
    composite ("torch") or the Triton kernels; Triton only where its kernels run (head dims <= 128, fp32 /
    fp16 / bf16); the CUDA extension last (opt-in: unmeasured since its rewrite on mma.sync, and predicted
    slower than Triton's wgmma forward; benchmarks/NOTES.md, "CUDA C++ v2"). Under torch.compile Triton
    comes first, since the composite is first-order only there. A plain dict cache, which dynamo traces."""
    key = (tuple(q_shape), tuple(k_shape), tuple(v_shape), kind, bool(masked), dtype)
    if key not in _CUDA_ORDERS:
        from ... import cost_model       # on first use: the cost model imports this op's plans
        (B, H, Lq, D), Lk, Dv = q_shape, k_shape[2], v_shape[3]
        shape = cost_model.AttentionShape(B, H, Lq, Lk, D, Dv, kind, bool(masked),
                                          4 if dtype == torch.float32 else 2)
        candidates = ["torch"]
        if backend.triton_installed() and max(D, Dv) <= MAX_HEAD_DIM and dtype in backend.KERNEL_DTYPES:
            candidates.append("triton")
        candidates.sort(key=lambda f: cost_model.attention_seconds(f, shape))                       # stable
        if max(D, Dv) <= CUDA_MAX_HEAD_DIM:
            candidates.append("cuda")
        _CUDA_ORDERS[key] = tuple(candidates)
    order = _CUDA_ORDERS[key]
    if torch.compiler.is_compiling() and "triton" in order:
        order = ("triton",) + tuple(c for c in order if c != "triton")
    return order
