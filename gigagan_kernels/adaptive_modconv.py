"""Sample-adaptive kernel-selection modulated convolution (GigaGAN, paper eqs. 1-2; docs/design.md §2).

For each sample b:
    a[b]  = softmax(select_logits[b])                 K[b] = sum_n a[b,n] W[n]
    K'[b] = K[b] * style[b][None, :, None, None]       d[b,o] = rsqrt(sum K'[b,o]^2 + eps)
    y[b]  = conv2d(x[b], K'[b] * d[b], "same")  ->  + noise  ->  + bias  ->  lrelu * gain  ->  clamp

This module holds the public function, input validation, the reference
composite ("ref", the oracle of every test and the naive baseline of every
benchmark), the "torch" composite (the CPU default: the cheapest of three exact
forms per call), the choice of Triton strategy, and the torch.library
registration of the fused paths with their autograd. The Triton kernels live
beside it in adaptive_modconv_triton.py; the CUDA C++ kernels in
csrc/adaptive_modconv.{cu,cpp} (ops gigagan_kernels_cuda::*, whose fake kernels
and autograd are registered here); the cost model that picks among them in
cost_model.py.

Gradient order: first-order gradients of the fused paths run fused kernels.
Under create_graph=True (R1) the backward is recomputed through the reference
composite, so gradients of every order are exact for every impl.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Optional

import torch
import torch.nn.functional as F

from . import backend, fused_op

OP_NAME = "adaptive_modconv2d"
ACTIVATIONS = (None, "linear", "lrelu")
LRELU_SLOPE = 0.2


def _default_gain(activation):
    return math.sqrt(2.0) if activation == "lrelu" else 1.0


# ----------------------------------------------------------------------------------------------
# Validation: every assumption the kernels make, checked before any launch.
# ----------------------------------------------------------------------------------------------
def _shape(t):
    return tuple(t.shape)


def validate(x, weight_bank, select_logits, style, bias, noise, activation, gain, clamp, eps):
    named = {"x": x, "weight_bank": weight_bank, "select_logits": select_logits, "style": style}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"adaptive_modconv2d: {name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t, want in (("x", x, 4), ("weight_bank", weight_bank, 5), ("select_logits", select_logits, 2),
                          ("style", style, 2)):
        if t.dim() != want:
            layout = {"x": "[B, Cin, H, W]", "weight_bank": "[N, Cout, Cin, k, k]",
                      "select_logits": "[B, N]", "style": "[B, Cin]"}[name]
            raise ValueError(f"adaptive_modconv2d: {name} must be {want}-D {layout}, got shape {_shape(t)}")
    B, Cin, H, W = x.shape
    N, Cout, bank_cin, kh, kw = weight_bank.shape
    if bank_cin != Cin:
        raise ValueError(f"adaptive_modconv2d: weight_bank has Cin={bank_cin} but x has Cin={Cin} "
                         f"(weight_bank shape {_shape(weight_bank)}, x shape {_shape(x)})")
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"adaptive_modconv2d: weight_bank filters must be square with odd k, "
                         f"got k x k = {kh} x {kw} (shape {_shape(weight_bank)})")
    if N < 1:
        raise ValueError(f"adaptive_modconv2d: weight_bank needs at least one filter, got shape {_shape(weight_bank)}")
    if Cin < 1:
        # Demodulation normalises each output filter over its Cin*k*k taps: with none, there is nothing to scale.
        raise ValueError(f"adaptive_modconv2d: x needs at least one input channel, got shape {_shape(x)}")
    if _shape(select_logits) != (B, N):
        raise ValueError(f"adaptive_modconv2d: select_logits must have shape [B, N] = {(B, N)}, "
                         f"got {_shape(select_logits)}")
    if _shape(style) != (B, Cin):
        raise ValueError(f"adaptive_modconv2d: style must have shape [B, Cin] = {(B, Cin)}, got {_shape(style)}")
    if bias is not None:
        named["bias"] = bias
        if _shape(bias) != (Cout,):
            raise ValueError(f"adaptive_modconv2d: bias must have shape [Cout] = {(Cout,)}, got {_shape(bias)}")
    if noise is not None:
        named["noise"] = noise
        try:
            if torch.broadcast_shapes(noise.shape, (B, Cout, H, W)) != (B, Cout, H, W) or noise.dim() > 4:
                raise RuntimeError
        except RuntimeError:
            raise ValueError(f"adaptive_modconv2d: noise must broadcast to the output shape {(B, Cout, H, W)}, "
                             f"got {_shape(noise)}") from None
    ref_device, ref_dtype = x.device, x.dtype
    if not ref_dtype.is_floating_point:
        raise ValueError(f"adaptive_modconv2d: x must be floating point, got dtype {ref_dtype}")
    for name, t in named.items():
        if t.device != ref_device:
            raise ValueError(f"adaptive_modconv2d: {name} is on {t.device} but x is on {ref_device}; "
                             "all tensors must share one device")
        if t.dtype != ref_dtype:
            raise ValueError(f"adaptive_modconv2d: {name} has dtype {t.dtype} but x has dtype {ref_dtype}; "
                             "all tensors must share one dtype")
    if activation not in ACTIVATIONS:
        raise ValueError(f"adaptive_modconv2d: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if clamp is not None and not clamp >= 0:
        raise ValueError(f"adaptive_modconv2d: clamp must be >= 0 or None, got {clamp}")
    if not eps > 0:
        raise ValueError(f"adaptive_modconv2d: eps must be > 0, got {eps}")
    if gain is not None and not math.isfinite(gain):
        raise ValueError(f"adaptive_modconv2d: gain must be finite, got {gain}")


# ----------------------------------------------------------------------------------------------
# Reference composite: materialise per-sample weights, one grouped convolution (the naive way).
# ----------------------------------------------------------------------------------------------
def _epilogue_ref(y, bias, noise, activation, gain, clamp):
    if noise is not None:
        y = y + noise
    if bias is not None:
        y = y + bias[None, :, None, None]
    if activation == "lrelu":
        y = F.leaky_relu(y, LRELU_SLOPE)
    if gain != 1.0:
        y = y * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y


def adaptive_modconv2d_ref(x, weight_bank, select_logits, style, bias=None, *, demodulate=True, eps=1e-8,
                           noise=None, activation=None, gain=None, clamp=None):
    """Readable composite in plain torch ops; differentiable to any order."""
    gain = _default_gain(activation) if gain is None else float(gain)
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = weight_bank.shape
    if B == 0:
        # Keep the output attached to every input so that backward yields zero gradients.
        anchor = weight_bank.sum() + select_logits.sum() + style.sum() + x.sum()
        return _epilogue_ref(x.new_zeros((0, Cout, H, W)) + anchor * 0, bias, noise, activation, gain, clamp)
    a = torch.softmax(select_logits, dim=1)                                  # paper eq. 1
    weight = torch.einsum("bn,noihw->boihw", a, weight_bank)                 # selected filter K[b]
    weight = weight * style[:, None, :, None, None]                          # modulation, eq. 2
    if demodulate:
        weight = weight * torch.rsqrt(weight.square().sum(dim=(2, 3, 4), keepdim=True) + eps)
    y = F.conv2d(x.reshape(1, B * Cin, H, W), weight.reshape(B * Cout, Cin, k, k), padding=k // 2, groups=B)
    return _epilogue_ref(y.reshape(B, Cout, H, W), bias, noise, activation, gain, clamp)


# ----------------------------------------------------------------------------------------------
# "torch" composite: the CPU default and the plain-torch form for users; per call the cheapest of three
# exact forms. (What create_graph=True backwards of the fused paths differentiate is the reference.)
# ----------------------------------------------------------------------------------------------
TORCH_FORMS = ("activations", "bmm", "grouped")


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


class _SumOfSquares(torch.autograd.Function):
    """sum(t^2) over the last dimension, in at least fp32, without the squared temporary: one norm reduction forward
    (square().sum() would write a tensor as large as the per-sample weights, 604 MB at GigaGAN's 1024-channel
    layers). The backward, 2 t g, is plain torch ops, so gradients of every order stay exact."""

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return torch.linalg.vector_norm(t, dim=-1, dtype=torch.promote_types(t.dtype, torch.float32)).square()

    @staticmethod
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        return (2 * t * grad.unsqueeze(-1)).to(t.dtype)


def adaptive_modconv2d_torch(x, weight_bank, select_logits, style, bias=None, *, demodulate=True, eps=1e-8,
                             noise=None, activation=None, gain=None, clamp=None):
    """The plain-torch composite: per call, the cheapest of three exact forms (torch_form). Plain torch ops,
    so gradients of every order.

    d[b,o]^2 = sum_i s[b,i]^2 sum_{kh,kw} K[b,o,i]^2, with K[b] = sum_n a[b,n] W[n] mixed first (mixing keeps d
    as well conditioned as the reference's; Gram cross terms would cancel where the mixed filter is small).
    With N = 1 the activation form needs only the bank's per-(o, i) sums of squares.
    """
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = weight_bank.shape
    form = torch_form(x.shape, weight_bank.shape, x.device.type)
    if form == "activations" and demodulate and Cin * k * k == 1:
        # Each filter is one scalar that demodulation divides by itself, so y cannot see its scale and the
        # activation form's dbank would be a difference of two large terms.
        form = "bmm"
    if form == "grouped":
        return adaptive_modconv2d_ref(x, weight_bank, select_logits, style, bias, demodulate=demodulate, eps=eps,
                                      noise=noise, activation=activation, gain=gain, clamp=clamp)
    gain = _default_gain(activation) if gain is None else float(gain)
    a = torch.softmax(select_logits, dim=1)
    xs = x * style[:, :, None, None]
    mixed = None
    if form == "activations":
        filters = weight_bank.reshape(N * Cout, Cin, k, k)
        if x.is_cuda:       # cuDNN's NHWC kernels are the fast ones for 16-bit convolutions
            xs = xs.contiguous(memory_format=torch.channels_last)
            filters = filters.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(xs, filters, padding=k // 2)
        # N = 1 too: select_logits gets its (zero) gradient.
        y = torch.einsum("bn,bnohw->bohw", a, y.view(B, N, Cout, H, W))
    else:
        mixed = (a @ weight_bank.reshape(N, -1)).view(B, Cout, Cin * k * k)            # one matmul
        y = torch.bmm(mixed, F.unfold(xs, k, padding=k // 2)).view(B, Cout, H, W)
    if demodulate:
        if mixed is None and N == 1:
            sq = _SumOfSquares.apply(weight_bank.reshape(1, Cout, Cin, k * k)).expand(B, Cout, Cin)
        else:
            if mixed is None:
                mixed = a @ weight_bank.reshape(N, -1)
            sq = _SumOfSquares.apply(mixed.view(B, Cout, Cin, k * k))                        # [B, Cout, Cin]
        norm2 = torch.bmm(sq.to(style.dtype), style.square()[:, :, None])                 # [B, Cout, 1]
        y = y * torch.rsqrt(norm2 + eps)[..., None]
    return _epilogue_ref(y, bias, noise, activation, gain, clamp)


# ----------------------------------------------------------------------------------------------
# Triton path as torch.library custom ops: a forward op and a backward op, autograd glued on.
# ----------------------------------------------------------------------------------------------
def _needs_lin(activation, gain, clamp, bias, noise) -> bool:
    """lin (the demodulated conv before the epilogue) differs from y, so it must be saved."""
    return activation == "lrelu" or gain != 1.0 or clamp is not None or bias is not None or noise is not None


def _wt_shape(x, weight_bank):
    return (x.shape[0], weight_bank.shape[1], weight_bank.shape[2] * weight_bank.shape[3] * weight_bank.shape[4])


@torch.library.custom_op("gigagan_kernels::adaptive_modconv2d_triton", mutates_args=())
def _triton_fwd_op(x: torch.Tensor, weight_bank: torch.Tensor, select_logits: torch.Tensor, style: torch.Tensor,
                   bias: Optional[torch.Tensor], noise: Optional[torch.Tensor], demodulate: bool, eps: float,
                   activation: str, gain: float, clamp: Optional[float], save_lin: bool, strategy: str,
                   keep_weights: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns y, lin (d * conv before the epilogue; empty unless save_lin), d [B, Cout] fp32, and the
    per-sample weights of strategy "weights" when keep_weights (else empty)."""
    from . import adaptive_modconv_triton as kernels
    a = torch.softmax(select_logits.float(), dim=1)
    options = dict(demodulate=demodulate, eps=eps, activation_code=_activation_code(activation), gain=gain,
                   clamp=clamp, save_lin=save_lin)
    if strategy == "weights":
        return kernels.weights_forward(x, weight_bank, a, style, bias, noise, keep_weights=keep_weights, **options)
    y, lin, d = kernels.fused_forward(x, weight_bank, a, style, bias, noise, **options)
    return y, lin, d, x.new_empty((0,))


def _activation_code(activation):
    from . import adaptive_modconv_triton as kernels
    return kernels.ACT_LRELU if activation == "lrelu" else kernels.ACT_LINEAR


@_triton_fwd_op.register_fake
def _(x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain, clamp, save_lin,
      strategy, keep_weights):
    y, lin, d = _forward_fake(x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain,
                              clamp, save_lin)
    return y, lin, d, x.new_empty(_wt_shape(x, weight_bank) if strategy == "weights" and keep_weights else (0,))


def _forward_fake(x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain, clamp,
                  save_lin):
    B, _, H, W = x.shape
    Cout = weight_bank.shape[1]
    y = x.new_empty((B, Cout, H, W))
    lin = x.new_empty((B, Cout, H, W)) if save_lin else x.new_empty((0,))
    return y, lin, x.new_empty((B, Cout), dtype=torch.float32)


@torch.library.custom_op("gigagan_kernels::adaptive_modconv2d_triton_backward", mutates_args=())
def _triton_bwd_op(grad_y: torch.Tensor, x: torch.Tensor, weight_bank: torch.Tensor, select_logits: torch.Tensor,
                   style: torch.Tensor, bias: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                   lin: torch.Tensor, d: torch.Tensor, kept_weights: torch.Tensor, demodulate: bool, activation: str,
                   gain: float, clamp: Optional[float], strategy: str) -> tuple[torch.Tensor, torch.Tensor,
                                                                             torch.Tensor, torch.Tensor,
                                                                             torch.Tensor, torch.Tensor]:
    """Returns dx, dbank, dlogits, dstyle, dbias (empty when bias is None), dnoise (ditto)."""
    from . import adaptive_modconv_triton as kernels
    a = torch.softmax(select_logits.float(), dim=1)
    options = dict(demodulate=demodulate, activation_code=_activation_code(activation), gain=gain, clamp=clamp)
    if strategy == "weights":
        dx, dbank, da, ds, dbias, dnoise = kernels.weights_backward(grad_y, x, weight_bank, a, style, bias, noise, lin,
                                                                    d, kept_weights, **options)
    else:
        gz, c, dbias, dnoise = kernels.epilogue_backward(grad_y, lin, d, bias, noise, **options)
        dx, dbank, da, ds = kernels.fused_backward(gz.view(grad_y.shape), c, x, weight_bank, a, style,
                                                   demodulate=demodulate)
    dlogits = a * (da - (a * da).sum(dim=1, keepdim=True))                     # softmax backward
    return dx, dbank, dlogits.to(select_logits.dtype), ds.to(style.dtype), dbias, dnoise


@_triton_bwd_op.register_fake
def _(grad_y, x, weight_bank, select_logits, style, bias, noise, lin, d, kept_weights, demodulate, activation, gain,
      clamp, strategy):
    empty = grad_y.new_empty((0,))
    return (torch.empty_like(x), torch.empty_like(weight_bank), torch.empty_like(select_logits),
            torch.empty_like(style), torch.empty_like(bias) if bias is not None else empty,
            torch.empty_like(noise) if noise is not None else empty)


def _setup_context(ctx, inputs, output):
    """Shared by the Triton op (extra inputs: strategy, keep_weights) and the CUDA op (workspace, keep_weights);
    both return the kept per-sample weights as a fourth output, and take the first extra input back."""
    x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain, clamp, save_lin = inputs[:12]
    y, lin, d = output[:3]
    ctx.save_for_backward(x, weight_bank, select_logits, style, bias, noise, lin if save_lin else y, d, *output[3:])
    ctx.options = (demodulate, eps, activation, gain, clamp)
    ctx.backend_options = tuple(inputs[12:13])          # the Triton strategy, or the CUDA workspace
    ctx.trailing_inputs = len(inputs) - 6


def _first_order(backward_op):
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


def _reference_grads(ctx, grad_y):
    x, weight_bank, select_logits, style, bias, noise = ctx.saved_tensors[:6]
    demodulate, eps, activation, gain, clamp = ctx.options
    return fused_op.reference_vjp(
        lambda *t: adaptive_modconv2d_ref(*t[:5], demodulate=demodulate, eps=eps, noise=t[5], activation=activation,
                                          gain=gain, clamp=clamp),
        (x, weight_bank, select_logits, style, bias, noise), grad_y)


fused_op.register_autograd(_triton_fwd_op, _setup_context, _first_order(_triton_bwd_op), _reference_grads)


# The per-sample tensors of the "weights" decomposition (Triton's strategy and the CUDA path) live in a budget.
WORKSPACE_ENV = "GIGAGAN_KERNELS_MODCONV_WORKSPACE_MB"
# The reference keeps ~5.5 copies of the per-sample weights alive for its backward (3.4 GiB at GigaGAN's
# 1024-channel layers, B = 32); 1.5 GiB holds the weights of such a layer once, plus their gradient.
DEFAULT_WORKSPACE_MB = 1536


def workspace_bytes() -> int:
    """The budget for the "weights" strategy's per-sample tensors (weights, their gradient, im2col columns),
    from GIGAGAN_KERNELS_MODCONV_WORKSPACE_MB (default 1536 MiB)."""
    raw = os.environ.get(WORKSPACE_ENV, "").strip()
    if not raw:
        return DEFAULT_WORKSPACE_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"{WORKSPACE_ENV} must be a number of MiB, got {raw!r}") from None
    if not mb > 0:
        raise ValueError(f"{WORKSPACE_ENV} must be > 0 MiB, got {raw!r}")
    return int(mb * 2**20)


# ----------------------------------------------------------------------------------------------
# CUDA C++ path (csrc/adaptive_modconv.cpp registers the ops; fake kernels and autograd added here at import).
# ----------------------------------------------------------------------------------------------
CUDA_MAX_FILTERS = 32  # kModconvMaxFilters in csrc/adaptive_modconv.h


def _cuda_backward(*args):
    return backend.cuda_extension_ops().adaptive_modconv2d_backward(*args)


def _cuda_plan(x_shape, bank_shape, element_size: int, *, needs_grad: bool, keep: int = -1, workspace=None):
    """(forward_chunk, backward_chunk, keep) of the CUDA path: csrc's plan_weights, the Triton "weights" plan of
    its batched-GEMM form."""
    from . import _C
    B, Cin, H, W = x_shape
    _, Cout, _, k, _ = bank_shape
    return _C.modconv_plan_weights(B, Cin, H, W, Cout, k, element_size, needs_grad, keep,
                                   workspace_bytes() if workspace is None else workspace)


def _cuda_forward_fake(x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain, clamp,
                       save_lin, workspace, keep_weights):
    y, lin, d = _forward_fake(x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain,
                              clamp, save_lin)
    keep = keep_weights and _cuda_plan(x.shape, weight_bank.shape, x.element_size(), needs_grad=True,
                                       workspace=workspace)[2]
    return y, lin, d, x.new_empty(_wt_shape(x, weight_bank) if keep else (0,))


def _cuda_backward_fake(grad_y, x, weight_bank, select_logits, style, bias, noise, lin, d, kept, demodulate,
                        activation, gain, clamp, workspace):
    empty = grad_y.new_empty((0,))
    return (torch.empty_like(x), torch.empty_like(weight_bank, memory_format=torch.contiguous_format),
            torch.empty_like(select_logits), torch.empty_like(style),
            torch.empty_like(bias) if bias is not None else empty,
            torch.empty_like(noise) if noise is not None else empty)


fused_op.register_cuda_op(OP_NAME, _cuda_forward_fake, _cuda_backward_fake, _setup_context,
                          _first_order(_cuda_backward), _reference_grads)


# ----------------------------------------------------------------------------------------------
# Choosing a backend: auto's per-call order and Triton's strategy, from the cost model.
# ----------------------------------------------------------------------------------------------
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
    from . import adaptive_modconv_triton as kernels
    forced = getattr(_strategy_override, "value", None) or os.environ.get(STRATEGY_ENV, "").strip() or "auto"
    _check_strategy(forced, STRATEGY_ENV)
    why_not = {"weights": kernels.weights_unsupported(bank_shape), "fused": kernels.fused_unsupported(x_shape,
                                                                                                       bank_shape)}
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
    from . import cost_model
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


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------
def adaptive_modconv2d(x, weight_bank, select_logits, style, bias=None, *, demodulate=True, eps=1e-8, noise=None,
                       activation=None, gain=None, clamp=None, impl="auto"):
    """Sample-adaptive kernel-selection modulated convolution with a fused epilogue.

    Args:
        x: [B, Cin, H, W]; any strides (channels_last included).
        weight_bank: [N, Cout, Cin, k, k] with odd k.
        select_logits: [B, N] filter-selection logits (softmax is applied here).
        style: [B, Cin] per-input-channel modulation.
        bias: [Cout] or None.
        demodulate: scale each output filter to unit norm (StyleGAN2 demodulation).
        eps: added under the demodulation rsqrt.
        noise: broadcastable to [B, Cout, H, W], already scaled; added before the bias.
        activation: None / "linear" or "lrelu" (slope 0.2).
        gain: output gain, default sqrt(2) for "lrelu" and 1 otherwise (StyleGAN2 bias_act).
        clamp: clamp the output to [-clamp, clamp] after the gain.
        impl: "auto", "ref", "torch", "triton" or "cuda" (see gigagan_kernels.backend).

    All tensors share one device and dtype (fp32, fp16 or bf16); accumulation is fp32.
    Supports gradients of every order for every impl: first-order backward of the fused
    paths runs fused kernels; under create_graph=True it goes through the reference.
    """
    validate(x, weight_bank, select_logits, style, bias, noise, activation, gain, clamp, eps)
    activation = None if activation == "linear" else activation
    gain = _default_gain(activation) if gain is None else float(gain)
    clamp = None if clamp is None else float(clamp)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight_bank, select_logits, style, bias, noise))
    mode = "fwd+bwd" if needs_grad else "fwd"
    chosen = backend.resolve_impl(impl, x.device, OP_NAME, x.dtype,
                                  auto_cuda_order(x.shape, weight_bank.shape, mode) if x.is_cuda else None)
    B, _, H, W = x.shape
    Cout = weight_bank.shape[1]
    if B > 0 and 0 in (Cout, H, W):
        # An empty output, the same on every backend, attached to every input (whose gradients are zero).
        inputs = [t for t in (x, weight_bank, select_logits, style, bias, noise) if t is not None]
        return x.new_zeros((B, Cout, H, W)) + sum(t.sum() for t in inputs) * 0
    if chosen == "ref" or B == 0:      # an empty batch: the ref keeps y attached to every input
        return adaptive_modconv2d_ref(x, weight_bank, select_logits, style, bias, demodulate=demodulate, eps=eps,
                                      noise=noise, activation=activation, gain=gain, clamp=clamp)
    if chosen == "torch":
        return adaptive_modconv2d_torch(x, weight_bank, select_logits, style, bias, demodulate=demodulate, eps=eps,
                                        noise=noise, activation=activation, gain=gain, clamp=clamp)
    if chosen == "triton":
        from . import adaptive_modconv_triton as kernels
        max_filters = kernels.MAX_FILTERS
    else:
        max_filters = CUDA_MAX_FILTERS
    if weight_bank.shape[0] > max_filters:
        raise ValueError(f"adaptive_modconv2d(impl={chosen!r}): weight_bank has N={weight_bank.shape[0]} filters; "
                         f"the {chosen} kernels support N <= {max_filters}")
    save_lin = needs_grad and _needs_lin(activation, gain, clamp, bias, noise)
    args = (x, weight_bank, select_logits, style, bias, noise, bool(demodulate), float(eps), activation or "linear",
            gain, clamp, save_lin)
    if chosen == "cuda":
        return backend.cuda_op(OP_NAME)(*args, workspace_bytes(), needs_grad)[0]
    strategy = triton_strategy(x.shape, weight_bank.shape, mode)
    keep = strategy == "weights" and kernels.plan_weights(x.shape, weight_bank.shape, x.element_size(),
                                                          needs_grad=needs_grad).keep
    return _triton_fwd_op(*args, strategy, keep)[0]
