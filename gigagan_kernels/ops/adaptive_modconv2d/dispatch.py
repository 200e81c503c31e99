"""How adaptive_modconv2d chooses: its candidates (one per backend form), the call they are asked about, and the
pick each backend makes without timing (the cost model's on CUDA, the measured rules on CPU). Which of several
runnable candidates runs is gigagan_kernels/autotune.py's decision (measured and cached), with the picks here as
its prior and its fallback; gigagan_kernels/dispatcher.py holds the machinery both ops share.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Optional

import torch

from ... import backend
from ...dispatcher import Candidate, OpCandidates, register
from .common import OP_NAME, WORKSPACE_ENV, workspace_bytes
from .plans import MAX_FILTERS, fused_unsupported, weights_unsupported
from .torch_forms import TORCH_FORMS, activations_form_cancels, torch_form


# ----------------------------------------------------------------------------------------------
# The call: the validated arguments, and what the choice depends on.
# ----------------------------------------------------------------------------------------------
def memory_layout(t: torch.Tensor) -> str:
    if t.is_contiguous():
        return "contiguous"
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return "strided"


class ModconvCall:
    """One call's arguments (validated, options normalised) and what every candidate is asked about it."""
    __slots__ = ("x", "weight_bank", "select_logits", "style", "bias", "noise", "demodulate", "eps", "activation",
                 "gain", "clamp", "needs_grad")

    def __init__(self, x, weight_bank, select_logits, style, bias, noise, *, demodulate, eps, activation, gain,
                 clamp, needs_grad):
        self.x, self.weight_bank, self.select_logits, self.style = x, weight_bank, select_logits, style
        self.bias, self.noise = bias, noise
        self.demodulate, self.eps, self.activation, self.gain, self.clamp = demodulate, eps, activation, gain, clamp
        self.needs_grad = needs_grad

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def mode(self) -> str:
        return "fwd+bwd" if self.needs_grad else "fwd"

    def tensors(self) -> tuple:
        return (self.x, self.weight_bank, self.select_logits, self.style, self.bias, self.noise)

    def key(self) -> tuple:
        """What the speed of a candidate depends on: shapes, dtype, layout, the epilogue, which inputs need grad,
        and the workspace budget (whether the "weights" decomposition rebuilds its weights)."""
        grads = tuple(t is not None and t.requires_grad for t in self.tensors()) if self.needs_grad else ()
        return (tuple(self.x.shape), tuple(self.weight_bank.shape), str(self.x.dtype), memory_layout(self.x),
                self.bias is not None, None if self.noise is None else tuple(self.noise.shape), self.demodulate,
                self.activation, self.clamp is not None, grads, workspace_bytes())

    def describe(self) -> str:
        return (f"x {tuple(self.x.shape)} weight_bank {tuple(self.weight_bank.shape)} "
                f"{str(self.x.dtype).replace('torch.', '')} {self.mode}")

    def clone_for_timing(self) -> "ModconvCall":
        """The same call on detached copies (same strides, same requires_grad): timing touches no user tensor."""
        copies = [None if t is None else t.detach().clone().requires_grad_(t.requires_grad) for t in self.tensors()]
        return ModconvCall(*copies, demodulate=self.demodulate, eps=self.eps, activation=self.activation,
                           gain=self.gain, clamp=self.clamp, needs_grad=self.needs_grad)

    def options(self) -> dict:
        return dict(demodulate=self.demodulate, eps=self.eps, activation=self.activation, gain=self.gain,
                    clamp=self.clamp)


# ----------------------------------------------------------------------------------------------
# Candidates
# ----------------------------------------------------------------------------------------------
def _on_cuda(call) -> bool:
    return call.device.type == "cuda"


def _predicted(formulation: str, call) -> Optional[float]:
    """The cost model's seconds on CUDA (it models NVIDIA H200 rates; other cards are ranked by the same model)."""
    if not _on_cuda(call):
        return None
    from ... import cost_model
    return cost_model.modconv_seconds(formulation, tuple(call.x.shape), tuple(call.weight_bank.shape), call.mode,
                                      element_size=call.x.element_size())


def _sizes(call) -> dict:
    B, Cin, H, W = call.x.shape
    N, Cout, _, k, _ = call.weight_bank.shape
    e = call.x.element_size()
    return dict(weights=B * Cout * Cin * k * k * e, cols=B * Cin * k * k * H * W * e, y=B * Cout * H * W * e,
                x=B * Cin * H * W * e, bank=N * Cout * Cin * k * k * e)


class Reference(Candidate):
    name, backend = "ref", "ref"
    formulation = "ref"

    def not_supported_reasons(self, call):
        return []

    def predicted_seconds(self, call):
        return _predicted(self.formulation, call)

    def predicted_bytes(self, call):
        s = _sizes(call)
        return 6 * s["weights"] + 4 * s["y"]          # ~5.5 copies of the per-sample weights live for the backward

    def run(self, call):
        from .reference import adaptive_modconv2d_ref
        return adaptive_modconv2d_ref(*call.tensors()[:5], noise=call.noise, **call.options())


class TorchForm(Candidate):
    backend = "torch"
    FORMULATIONS = {"activations": "torch_activations", "bmm": "torch_weights", "grouped": "ref",
                    "gram": "torch_gram"}

    def __init__(self, form: str):
        self.form = form
        self.name = f"torch:{form}"

    def not_supported_reasons(self, call):
        Cin, k = call.x.shape[1], call.weight_bank.shape[-1]
        if self.form in ("activations", "gram") and activations_form_cancels(call.demodulate, Cin, k):
            return ["with one input channel and 1x1 filters, demodulation cancels the filter's scale and the "
                    "activation form's bank gradient would be a difference of two large terms"]
        return []

    def tuning_reasons(self, call):
        if self.form != "gram" or not call.demodulate:
            return []
        from .torch_forms import gram_ineligible_reason
        why = gram_ineligible_reason(call.weight_bank, call.select_logits, call.style, call.eps)
        return [why] if why else []

    def predicted_seconds(self, call):
        return _predicted(self.FORMULATIONS[self.form], call)

    def predicted_bytes(self, call):
        s, N = _sizes(call), call.weight_bank.shape[0]
        if self.form == "activations":
            return (2 * N + 4) * s["y"] + 2 * s["x"] + 3 * s["weights"]
        if self.form == "bmm":
            return 4 * s["weights"] + 3 * s["cols"] + 4 * s["y"]
        if self.form == "gram":
            # The Gram matrices and their gradient (fp32, Cout*Cin*N^2 each), the N-fold GEMM output and its
            # gradient, the columns.
            N, Cout, Cin = call.weight_bank.shape[:3]
            return 2 * 4 * Cout * Cin * N * N + (2 * N + 4) * s["y"] + 2 * s["cols"]
        return Reference().predicted_bytes(call)

    def run(self, call):
        from .torch_forms import adaptive_modconv2d_torch
        return adaptive_modconv2d_torch(*call.tensors()[:5], noise=call.noise, form=self.form, **call.options())


def _kernel_reasons(backend_name: str, call, max_filters: int) -> list:
    reasons = []
    why = backend.unavailable_reason(backend_name, call.device, OP_NAME, call.x.dtype)
    if why:
        reasons.append(why)
    N = call.weight_bank.shape[0]
    if N > max_filters:
        reasons.append(f"weight_bank has N={N} filters; the {backend_name} kernels support N <= {max_filters}")
    return reasons


def _launch_args(call, save_lin: bool) -> tuple:
    return (call.x, call.weight_bank, call.select_logits, call.style, call.bias, call.noise, bool(call.demodulate),
            float(call.eps), call.activation or "linear", call.gain, call.clamp, save_lin)


def _save_lin(call) -> bool:
    from .autograd import needs_lin
    return call.needs_grad and needs_lin(call.activation, call.gain, call.clamp, call.bias, call.noise)


def keep_weights(call) -> bool:
    """Whether the "weights" decomposition keeps this call's per-sample weights for the backward: the model-wide
    plan's decision for the call's key (gigagan_kernels/memory.py), made once."""
    if not call.needs_grad:
        return False
    from ... import memory
    B, Cin = call.x.shape[:2]
    _, Cout, _, k, _ = call.weight_bank.shape
    return memory.keep_weights((OP_NAME, call.key()), B * Cout * Cin * k * k * call.x.element_size())


class TritonStrategy(Candidate):
    backend = "triton"
    ATOMICS = {"weights": None, "fused": "relaxed fp32 atomics for the style gradient"}

    def __init__(self, strategy: str):
        self.strategy = strategy
        self.name = f"triton:{strategy}"
        self.atomics = self.ATOMICS[strategy]

    def not_supported_reasons(self, call):
        reasons = _kernel_reasons("triton", call, MAX_FILTERS)
        unsupported = (weights_unsupported(tuple(call.weight_bank.shape)) if self.strategy == "weights" else
                       fused_unsupported(tuple(call.x.shape), tuple(call.weight_bank.shape)))
        if unsupported:
            reasons.append(unsupported)
        return reasons

    def predicted_seconds(self, call):
        return _predicted(f"triton_{self.strategy}", call)

    def predicted_bytes(self, call):
        s = _sizes(call)
        if self.strategy == "weights":
            return min(workspace_bytes(), 2 * s["weights"] + 2 * s["cols"]) + 4 * s["y"]
        return 4 * s["y"] + 2 * s["x"]

    def run(self, call):
        from .triton_op import triton_forward_op
        keep = self.strategy == "weights" and keep_weights(call)
        return triton_forward_op(*_launch_args(call, _save_lin(call)), self.strategy, keep)[0]


class CudaWeights(Candidate):
    name, backend = "cuda:weights", "cuda"
    atomics = "shared-memory fp32 atomics for the style and selection gradients"

    def not_supported_reasons(self, call):
        from .cuda import CUDA_MAX_FILTERS
        return _kernel_reasons("cuda", call, CUDA_MAX_FILTERS)

    def predicted_seconds(self, call):
        return _predicted("cuda", call)

    def predicted_bytes(self, call):
        s = _sizes(call)
        return min(workspace_bytes(), 2 * s["weights"] + 2 * s["cols"]) + 4 * s["y"]

    def run(self, call):
        return backend.cuda_op(OP_NAME)(*_launch_args(call, _save_lin(call)), workspace_bytes(), keep_weights(call))[0]


CANDIDATES = (Reference(), *(TorchForm(form) for form in TORCH_FORMS), TritonStrategy("weights"),
              TritonStrategy("fused"), CudaWeights())

# ----------------------------------------------------------------------------------------------
# The picks without timing, and the overrides that force a strategy.
# ----------------------------------------------------------------------------------------------
def predicted_choice(call, runnable: tuple, requested: str) -> str:
    """The candidate the op runs where nothing is timed: the backend auto would take (the cost model's order on
    CUDA; the interpreter's kernels on a CPU where TRITON_INTERPRET=1; else the torch composite), then that
    backend's own pick (torch_form, triton_strategy). The same on every rank for the same call."""
    by_backend: dict = {}
    for name in runnable:
        by_backend.setdefault(name.split(":")[0], []).append(name)
    if requested != "auto":
        order = (requested,)
    elif _on_cuda(call):
        order = auto_cuda_order(tuple(call.x.shape), tuple(call.weight_bank.shape), call.mode)
    elif backend.triton_interpret():
        order = ("triton", "torch")
    else:
        order = ("torch",)
    for name in order + ("torch", "triton", "cuda", "ref"):
        if name not in by_backend:
            continue
        names = by_backend[name]
        if name == "torch":
            Cin, k = call.x.shape[1], call.weight_bank.shape[-1]
            form = torch_form(tuple(call.x.shape), tuple(call.weight_bank.shape), call.device.type)
            if form == "activations" and activations_form_cancels(call.demodulate, Cin, k):
                form = "bmm"
            return f"torch:{form}" if f"torch:{form}" in names else names[0]
        if name == "triton":
            strategy = triton_strategy(tuple(call.x.shape), tuple(call.weight_bank.shape), call.mode)
            return f"triton:{strategy}" if f"triton:{strategy}" in names else names[0]
        return names[0]
    return runnable[0]


def narrow(call, pool: tuple) -> tuple:
    """A forced Triton strategy (use_strategy, GIGAGAN_KERNELS_MODCONV_STRATEGY) leaves the other out."""
    forced = forced_strategy()
    if forced == "auto":
        return pool
    if any(c.name == f"triton:{forced}" for c in pool):
        unsupported = (weights_unsupported(tuple(call.weight_bank.shape)) if forced == "weights" else
                       fused_unsupported(tuple(call.x.shape), tuple(call.weight_bank.shape)))
        if unsupported:
            raise ValueError(f"adaptive_modconv2d: strategy {forced!r} cannot run x {tuple(call.x.shape)} with "
                             f"weight_bank {tuple(call.weight_bank.shape)}: {unsupported}")
    return tuple(c for c in pool if c.backend != "triton" or c.name == f"triton:{forced}")


def forced_strategy() -> str:
    forced = getattr(_strategy_override, "value", None) or os.environ.get(STRATEGY_ENV, "").strip() or "auto"
    _check_strategy(forced, STRATEGY_ENV)
    return forced


STRATEGIES = ("weights", "fused")
STRATEGY_ENV = "GIGAGAN_KERNELS_MODCONV_STRATEGY"
_strategy_override = threading.local()


@contextlib.contextmanager
def use_strategy(strategy: str):
    """Force the Triton strategy that impl="triton" runs ("weights" or "fused"), e.g. for benchmarks.
    GIGAGAN_KERNELS_MODCONV_STRATEGY does the same for a whole process; "auto" (the default) picks per shape."""
    _check_strategy(strategy, "use_strategy(strategy)")
    with backend.thread_override(_strategy_override, strategy):
        yield


def _check_strategy(strategy, source):
    if strategy not in STRATEGIES + ("auto",):
        raise ValueError(f"{source}: expected one of {STRATEGIES + ('auto',)}, got {strategy!r}")


def triton_strategy(x_shape, bank_shape, mode: str = "fwd+bwd") -> str:
    """The Triton strategy for a call: the forced one (use_strategy, then the environment variable), else the
    one the cost model predicts faster (gigagan_kernels/cost_model.py) among those that can take the shape,
    for a forward + backward, or for a forward alone (mode "fwd": no input needs a gradient)."""
    forced = forced_strategy()
    why_not = {"weights": weights_unsupported(bank_shape), "fused": fused_unsupported(x_shape, bank_shape)}
    if forced != "auto" and why_not[forced]:
        raise ValueError(f"adaptive_modconv2d: strategy {forced!r} cannot run x {tuple(x_shape)} with weight_bank "
                         f"{tuple(bank_shape)}: {why_not[forced]}")
    if forced != "auto":
        return forced
    runnable = [st for st in STRATEGIES if not why_not[st]]
    if not runnable:
        raise ValueError(f"adaptive_modconv2d(impl='triton'): no Triton strategy can run x {tuple(x_shape)} with "
                         f"weight_bank {tuple(bank_shape)}: {why_not['weights']}; {why_not['fused']}; use "
                         f"impl='torch'")
    if len(runnable) == 1:
        return runnable[0]
    return _cuda_choices(tuple(x_shape), tuple(bank_shape), _workspace(), mode)[1]


def auto_cuda_order(x_shape, bank_shape, mode: str = "fwd+bwd") -> tuple:
    """impl="auto"'s order of preference on CUDA for one call, fastest first: Triton (its faster strategy) or
    the torch composite (its faster form), as the cost model predicts a forward + backward (or a forward
    alone, mode "fwd"); the CUDA extension last (opt-in: v1 measured slower than Triton, and the cost model
    predicts v2 a few percent slower still; benchmarks/NOTES.md, "CUDA C++ v2")."""
    if not backend.triton_installed():
        return ("torch", "cuda")
    return _cuda_choices(tuple(x_shape), tuple(bank_shape), _workspace(), mode)[2]


def _workspace():
    return workspace_bytes() if backend.triton_installed() else None


_CUDA_CHOICES: dict = {}


def _cuda_choices(x_shape, bank_shape, workspace, mode="fwd+bwd"):
    """The cost model's picks for one shape and mode, computed once (and per workspace, which decides whether
    the "weights" strategy rebuilds its weights): (torch form, Triton strategy, auto's order). A plain dict
    rather than functools.lru_cache, which torch.compile warns it cannot honour."""
    key = (x_shape, bank_shape, workspace, mode)
    if key not in _CUDA_CHOICES:
        _CUDA_CHOICES[key] = _cost_model_choices(x_shape, bank_shape, workspace, mode)
    return _CUDA_CHOICES[key]


def _cost_model_choices(x_shape, bank_shape, workspace, mode):
    from ... import cost_model       # on first use: the cost model imports this op's plans
    form = torch_form(x_shape, bank_shape, "cuda")
    if workspace is None:
        return form, "fused", ("torch", "cuda")
    torch_cost = cost_model.modconv_seconds("torch_weights" if form == "bmm" else "torch_activations", x_shape,
                                            bank_shape, mode)
    triton_costs = {st: cost_model.modconv_seconds(f"triton_{st}", x_shape, bank_shape, mode) for st in STRATEGIES}
    strategy = min(triton_costs, key=triton_costs.get)
    order = ("triton", "torch", "cuda") if triton_costs[strategy] <= torch_cost else ("torch", "triton", "cuda")
    return form, strategy, order


def overrides() -> tuple:
    """What narrow and predicted_choice read besides the call and the environment: use_strategy's choice."""
    return (getattr(_strategy_override, "value", None),)


ADAPTIVE_MODCONV2D = register(OpCandidates(
    OP_NAME, CANDIDATES, predicted_choice=predicted_choice, narrow=narrow, overrides=overrides,
    environment=(STRATEGY_ENV, WORKSPACE_ENV),
    # The tie rule on CPU: the fused kernels, then the lean torch forms, the reference last.
    preference=("triton:weights", "triton:fused", "cuda:weights", "torch:bmm", "torch:activations", "torch:gram",
                "torch:grouped", "ref")))
