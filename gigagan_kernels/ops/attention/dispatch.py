"""How attention chooses: its candidates (one per backend form), the call they are asked about, and the pick each
backend makes without timing (the cost model's on CUDA, the measured rules on CPU). Which of several runnable
candidates runs is gigagan_kernels/autotune.py's decision (measured and cached), with the picks here as its prior
and its fallback; gigagan_kernels/dispatcher.py holds the machinery both ops share.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Optional

import torch
from torch.nn.attention import SDPBackend

from ... import backend
from ...dispatcher import Candidate, OpCandidates, register
from .common import OP_NAME
from .cuda import CUDA_MAX_HEAD_DIM
from .plans import MAX_HEAD_DIM


# ----------------------------------------------------------------------------------------------
# The call: the validated arguments, and what the choice depends on.
# ----------------------------------------------------------------------------------------------
class AttentionCall:
    """One call's arguments (validated, scale resolved) and what every candidate is asked about it."""
    __slots__ = ("q", "k", "v", "kind", "scale", "key_padding_mask", "needs_grad")

    def __init__(self, q, k, v, *, kind, scale, key_padding_mask, needs_grad):
        self.q, self.k, self.v, self.kind, self.scale = q, k, v, kind, scale
        self.key_padding_mask, self.needs_grad = key_padding_mask, needs_grad

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def mode(self) -> str:
        return "fwd+bwd" if self.needs_grad else "fwd"

    @property
    def masked(self) -> bool:
        return self.key_padding_mask is not None

    def tensors(self) -> tuple:
        return (self.q, self.k, self.v)

    def key(self) -> tuple:
        """What the speed of a candidate depends on: shapes, dtype, layout, tied q and k, the mask, which inputs
        need grad."""
        grads = tuple(t.requires_grad for t in self.tensors()) if self.needs_grad else ()
        return (tuple(self.q.shape), tuple(self.k.shape), tuple(self.v.shape), str(self.q.dtype), self.kind,
                self.masked, self.k is self.q, tuple(t.is_contiguous() for t in self.tensors()), grads)

    def describe(self) -> str:
        return (f"q {tuple(self.q.shape)} k {tuple(self.k.shape)} v {tuple(self.v.shape)} {self.kind} "
                f"{'masked ' if self.masked else ''}{str(self.q.dtype).replace('torch.', '')} {self.mode}")

    def clone_for_timing(self) -> "AttentionCall":
        """The same call on detached copies (tied q and k stay tied): timing touches no user tensor."""
        q = self.q.detach().clone().requires_grad_(self.q.requires_grad)
        k = q if self.k is self.q else self.k.detach().clone().requires_grad_(self.k.requires_grad)
        v = self.v.detach().clone().requires_grad_(self.v.requires_grad)
        return AttentionCall(q, k, v, kind=self.kind, scale=self.scale, key_padding_mask=self.key_padding_mask,
                             needs_grad=self.needs_grad)

    def options(self) -> dict:
        return dict(kind=self.kind, scale=self.scale, key_padding_mask=self.key_padding_mask)


# ----------------------------------------------------------------------------------------------
# Candidates
# ----------------------------------------------------------------------------------------------
def _predicted(formulation: str, call) -> Optional[float]:
    """The cost model's seconds on CUDA (it models NVIDIA H200 rates; other cards are ranked by the same model)."""
    if call.device.type != "cuda":
        return None
    from ... import cost_model
    (B, H, Lq, D), Lk, Dv = call.q.shape, call.k.shape[2], call.v.shape[3]
    shape = cost_model.AttentionShape(B, H, Lq, Lk, D, Dv, call.kind, call.masked, call.q.element_size())
    return cost_model.attention_seconds(formulation, shape, call.mode)


def _linear_bytes(call) -> int:
    return 4 * sum(t.numel() for t in call.tensors()) * call.q.element_size()


def _logit_bytes(call) -> int:
    B, H, Lq, _ = call.q.shape
    return B * H * Lq * call.k.shape[2] * max(4, call.q.element_size())


class Reference(Candidate):
    name, backend = "ref", "ref"

    def not_supported_reasons(self, call):
        return []

    def predicted_seconds(self, call):
        return _predicted("ref", call)

    def predicted_bytes(self, call):
        return 6 * _logit_bytes(call) + _linear_bytes(call)

    def run(self, call):
        from .reference import attention_ref
        return attention_ref(call.q, call.k, call.v, **call.options())


class Materialised(Candidate):
    name, backend = "torch:materialised", "torch"

    def not_supported_reasons(self, call):
        return []

    def predicted_seconds(self, call):
        return _predicted("torch_materialised", call)

    def predicted_bytes(self, call):
        return 4 * _logit_bytes(call) + _linear_bytes(call)

    def run(self, call):
        from .torch_materialised import attention_materialised
        return attention_materialised(call.q, call.k, call.v, **call.options())


_SDPA_SUPPORT: dict = {}


def _sdpa_reasons(kernel: str, call) -> list:
    """Why torch's SDPA cannot run `kernel` on this call's operands (torch's own checks, on CUDA), or []."""
    if kernel == "math":
        return []
    if call.device.type != "cuda" and not (call.device.type == "cpu" and kernel == "flash"):
        return [f"SDPA's {kernel} kernel needs CUDA tensors (got {call.device.type})"]
    key = (kernel, call.key(), call.device.index)
    if torch.compiler.is_compiling():
        return _SDPA_SUPPORT.get(key, [])       # traced SDPA runs on torch's own pick (Sdpa.run), whatever this says
    if key not in _SDPA_SUPPORT:
        from .torch_sdpa import sdpa_operands
        q, k, v, _ = sdpa_operands(*(torch.empty(t.shape, device=t.device, dtype=t.dtype) for t in call.tensors()),
                                   call.kind, call.scale)
        for t in (q, k, v):
            t.requires_grad_(call.needs_grad)
        mask = (torch.ones((q.shape[0], 1, 1, k.shape[2]), device=q.device, dtype=torch.bool) if call.masked
                else None)
        if call.device.type == "cpu":
            # torch's CPU dispatch takes its flash kernel wherever that kernel can run: ask it.
            flash = torch._fused_sdp_choice(q, k, v, mask, 0.0, False) == int(SDPBackend.FLASH_ATTENTION)
            _SDPA_SUPPORT[key] = [] if flash else [
                f"SDPA's CPU flash kernel cannot take these operands ({str(q.dtype).replace('torch.', '')}, head "
                f"dims {q.shape[-1]} and {v.shape[-1]}{', a mask' if call.masked else ''})"]
            return _SDPA_SUPPORT[key]
        check = {"flash": "can_use_flash_attention", "efficient": "can_use_efficient_attention",
                 "cudnn": "can_use_cudnn_attention"}[kernel]
        if not hasattr(torch.backends.cuda, check):
            _SDPA_SUPPORT[key] = [f"torch {torch.__version__} has no {check}"]
        else:
            try:
                params = torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, False, False)
            except TypeError:                                       # torch < 2.5: no enable_gqa
                params = torch.backends.cuda.SDPAParams(q, k, v, mask, 0.0, False)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    ok, error = getattr(torch.backends.cuda, check)(params, debug=True), None
                except RuntimeError as e:                    # e.g. no usable driver
                    ok, error = False, str(e).splitlines()[0]
            why = [str(w.message).splitlines()[0] for w in caught] or [error or (
                f"torch's {check} refused the operands ({str(q.dtype).replace('torch.', '')}, head dim "
                f"{q.shape[-1]}{', a mask' if call.masked else ''})")]
            _SDPA_SUPPORT[key] = [] if ok else why
    return _SDPA_SUPPORT[key]


class Sdpa(Candidate):
    backend = "torch"
    KERNELS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    FORMULATIONS = {"flash": "torch_sdpa_flash", "efficient": "torch_sdpa_efficient", "cudnn": "torch_sdpa_cudnn",
                    "math": "torch_materialised"}

    def __init__(self, kernel: str):
        self.kernel = kernel
        self.name = f"torch:sdpa-{kernel}"

    def not_supported_reasons(self, call):
        return _sdpa_reasons(self.kernel, call)

    def predicted_seconds(self, call):
        formulation = self.FORMULATIONS.get(self.kernel)
        return None if formulation is None else _predicted(formulation, call)

    def predicted_bytes(self, call):
        return (4 * _logit_bytes(call) if self.kernel == "math" else 0) + 2 * _linear_bytes(call)

    def run(self, call):
        from .torch_sdpa import SdpaAttention, attention_sdpa
        if torch.compiler.is_compiling():
            # dynamo traces SDPA itself, on torch's own pick of kernel; the Function's replayed inner graph is not
            # traceable (first order only).
            return attention_sdpa(call.q, call.k, call.v, **call.options())
        return SdpaAttention.apply(call.q, call.k, call.v, call.kind, call.scale, call.key_padding_mask,
                                   self.KERNELS[self.kernel])


def _kernel_reasons(backend_name: str, call, max_head_dim: int) -> list:
    reasons = []
    why = backend.unavailable_reason(backend_name, call.device, OP_NAME, call.q.dtype)
    if why:
        reasons.append(why)
    for name, dim in (("q", call.q.shape[-1]), ("v", call.v.shape[-1])):
        if dim > max_head_dim:
            reasons.append(f"{name} head dim {dim} exceeds {max_head_dim}")
    return reasons


class Triton(Candidate):
    name, backend = "triton", "triton"
    atomics = "relaxed fp32 atomics for dQ in the backward"

    def not_supported_reasons(self, call):
        return _kernel_reasons("triton", call, MAX_HEAD_DIM)

    def predicted_seconds(self, call):
        return _predicted("triton", call)

    def predicted_bytes(self, call):
        return 2 * _linear_bytes(call)

    def run(self, call):
        from .triton_op import triton_forward_op
        return triton_forward_op(call.q, call.k, call.v, call.kind, call.scale, call.key_padding_mask)[0]


class Cuda(Candidate):
    name, backend = "cuda", "cuda"
    atomics = "fp32 atomics for dQ in the backward"

    def not_supported_reasons(self, call):
        return _kernel_reasons("cuda", call, CUDA_MAX_HEAD_DIM)

    def predicted_seconds(self, call):
        return _predicted("cuda", call)

    def predicted_bytes(self, call):
        return 2 * _linear_bytes(call)

    def run(self, call):
        return backend.cuda_op(OP_NAME)(call.q, call.k, call.v, call.kind, call.scale, call.key_padding_mask)[0]


SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")
CANDIDATES = (Reference(), Materialised(), *(Sdpa(kernel) for kernel in SDPA_KERNELS), Triton(), Cuda())


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


# ----------------------------------------------------------------------------------------------
# The picks without timing, and the override that forces the torch form.
# ----------------------------------------------------------------------------------------------
def predicted_choice(call, runnable: tuple, requested: str) -> str:
    """The candidate the op runs where nothing is timed: the backend auto would take (the cost model's order on
    CUDA; the interpreter's kernels on a CPU where TRITON_INTERPRET=1; else the torch composite), then, for the
    torch composite, its form (torch_form) and its SDPA kernel: on CUDA the one the cost model predicts fastest,
    elsewhere torch's own order (flash, memory-efficient, cuDNN, math). The same on every rank for the same call."""
    by_backend: dict = {}
    for name in runnable:
        by_backend.setdefault(name.split(":")[0], []).append(name)
    if requested != "auto":
        order = (requested,)
    elif call.device.type == "cuda":
        order = auto_cuda_order(tuple(call.q.shape), tuple(call.k.shape), tuple(call.v.shape), call.kind,
                                call.masked, call.q.dtype)
    elif backend.triton_interpret():
        order = ("triton", "torch")
    else:
        order = ("torch",)
    for name in order + ("torch", "triton", "cuda", "ref"):
        if name not in by_backend:
            continue
        names = by_backend[name]
        if name == "torch":
            form = torch_form(call.q.shape[2], call.k.shape[2], call.device)
            wanted = ["torch:materialised"] if form == "materialised" else \
                [f"torch:sdpa-{kernel}" for kernel in SDPA_KERNELS]
            if form == "sdpa" and call.device.type == "cuda":
                # The cost model's order (cuDNN runs L2's augmented head dim 72 as 72, FlashAttention-2 as 96),
                # torch's own order breaking ties.
                predicted = {c.name: c.predicted_seconds(call) for c in CANDIDATES if c.name in wanted}
                wanted.sort(key=lambda n: (predicted[n] is None, predicted[n] or 0.0))
            for candidate in wanted + names:
                if candidate in names:
                    return candidate
        return names[0]
    return runnable[0]


def narrow(call, pool: tuple) -> tuple:
    """A forced torch form (use_torch_form) leaves the other form's candidates out."""
    forced = getattr(_forced_torch_form, "value", None)
    if forced is None:
        return pool
    keep = (lambda c: c.name == "torch:materialised") if forced == "materialised" else \
        (lambda c: c.name.startswith("torch:sdpa-"))
    return tuple(c for c in pool if c.backend != "torch" or keep(c))


def overrides() -> tuple:
    """What narrow and predicted_choice read besides the call: the forced torch form."""
    return (getattr(_forced_torch_form, "value", None),)


ATTENTION = register(OpCandidates(
    OP_NAME, CANDIDATES, predicted_choice=predicted_choice, narrow=narrow, overrides=overrides,
    # The tie rule on CPU: the fused kernels, then SDPA's kernels in torch's order, the materialised forms last.
    preference=("triton", "cuda", "torch:sdpa-flash", "torch:sdpa-efficient", "torch:sdpa-cudnn", "torch:sdpa-math",
                "torch:materialised", "ref")))
