"""How adaptive_modconv2d chooses: auto's per-call order of backends on CUDA, the Triton strategy and the torch
composite's form, from the cost model (gigagan_kernels/cost_model.py); and the overrides that force them."""
from __future__ import annotations

import contextlib
import os
import threading

from ... import backend
from .common import workspace_bytes
from .plans import fused_unsupported, weights_unsupported
from .torch_forms import TORCH_FORMS  # noqa: F401  (the forms torch_form names)


def torch_form(x_shape, bank_shape, device_type: str = "cpu") -> str:
    """The "torch" composite's form for a call:
      "activations": conv(x * s, all N filters) as one shared-weight convolution, mixed with a and scaled by
                     d (StyleGAN2's fused_modconv=False, generalised to N filters);
      "bmm":         per-sample weights mixed by one matmul, the convolution as a batched matmul on
                     unfold(x * s), d as an output scale;
      "grouped":     the reference's per-sample weights and one B-group convolution.

    CUDA: the cost model (gigagan_kernels/cost_model.py) picks between activations and bmm (cuDNN's grouped
    convolution took ~0.2 ms per group in its backward on an H200, so it is never the fastest there).
    CPU (measured on this project's 2-core x86 build machine, benchmarks/NOTES.md): activations for 1x1
    filters (one matmul) and where per-sample weights, counted twice because a B-group convolution runs
    about half as fast per FLOP as a batched one, outweigh the N-fold convolution's activations:
    2*Cout*Cin*k^2 > N*(Cin+Cout)*H*W. Otherwise bmm up to 64 pixels (0.4-0.7x the grouped convolution's
    forward + backward at 4x4 and 8x8) and grouped above (bmm took 1.2-3x at 16x16 and 32x32)."""
    _, Cin, H, W = x_shape
    N, Cout, _, k, _ = bank_shape
    if k == 1:
        return "activations"
    if device_type == "cuda":
        return _cuda_choices(tuple(x_shape), tuple(bank_shape), _workspace())[0]
    if 2 * Cout * Cin * k * k > N * (Cin + Cout) * H * W:
        return "activations"
    return "bmm" if H * W <= 64 else "grouped"


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
    forced = getattr(_strategy_override, "value", None) or os.environ.get(STRATEGY_ENV, "").strip() or "auto"
    _check_strategy(forced, STRATEGY_ENV)
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
    k = bank_shape[-1]
    form = "activations" if k == 1 else {"torch_activations": "activations", "torch_weights": "bmm"}[
        cost_model.fastest(("torch_activations", "torch_weights"), x_shape, bank_shape)]
    if workspace is None:
        return form, "fused", ("torch", "cuda")
    torch_cost = cost_model.modconv_seconds("torch_weights" if form == "bmm" else "torch_activations", x_shape,
                                            bank_shape, mode)
    triton_costs = {st: cost_model.modconv_seconds(f"triton_{st}", x_shape, bank_shape, mode) for st in STRATEGIES}
    strategy = min(triton_costs, key=triton_costs.get)
    order = ("triton", "torch", "cuda") if triton_costs[strategy] <= torch_cost else ("torch", "triton", "cuda")
    return form, strategy, order
