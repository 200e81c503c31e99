"""Sample-adaptive kernel-selection modulated convolution (GigaGAN, paper eqs. 1-2; docs/design.md §2).

For each sample b:
    a[b]  = softmax(select_logits[b])                 K[b] = sum_n a[b,n] W[n]
    K'[b] = K[b] * style[b][None, :, None, None]       d[b,o] = rsqrt(sum K'[b,o]^2 + eps)
    y[b]  = conv2d(x[b], K'[b] * d[b], "same")  ->  + noise  ->  + bias  ->  lrelu * gain  ->  clamp

The package, after xformers' ops/fmha: this file holds the public function; common.py the contract and
validation; one file per backend (reference.py "ref", torch_forms.py "torch", triton_op.py "triton" with its
strategies triton_weights.py and triton_fused.py, cuda.py "cuda"); plans.py the launch tables and plans;
dispatch.py the choice among them.

Gradient order: first-order gradients of the fused paths run fused kernels. Under create_graph=True (R1) the
backward is recomputed through the reference composite, so gradients of every order are exact for every impl.
"""
from __future__ import annotations

import torch

from ...dispatcher import cached_choice, choose
from . import cuda, triton_op  # noqa: F401  (registering the fused ops' fake kernels and autograd)
from .common import OP_NAME, default_gain, validate
from .dispatch import ModconvCall
from .reference import adaptive_modconv2d_ref
from .torch_forms import adaptive_modconv2d_torch

__all__ = ["adaptive_modconv2d", "adaptive_modconv2d_ref", "adaptive_modconv2d_torch", "validate"]


def _cache_key(x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain, clamp, impl):
    """What validation and the choice of candidate read from one call (the others' dtype and device are checked
    equal to x's by validation), or None where it cannot be keyed (a non-tensor argument, which validate rejects;
    while dynamo traces). Written for speed: it runs on every call."""
    Tensor = torch.Tensor
    if (torch.compiler.is_compiling() or not isinstance(x, Tensor) or not isinstance(weight_bank, Tensor)
            or not isinstance(select_logits, Tensor) or not isinstance(style, Tensor)):
        return None
    bias_key = noise_key = None
    if bias is not None:
        if not isinstance(bias, Tensor):
            return None
        bias_key = (bias.shape, bias.dtype, bias.device, bias.requires_grad)
    if noise is not None:
        if not isinstance(noise, Tensor):
            return None
        noise_key = (noise.shape, noise.dtype, noise.device, noise.requires_grad)
    return (x.shape, x.stride(), x.dtype, x.device, x.requires_grad, weight_bank.shape, weight_bank.dtype,
            weight_bank.device, weight_bank.requires_grad, select_logits.shape, select_logits.dtype,
            select_logits.device, select_logits.requires_grad, style.shape, style.dtype, style.device,
            style.requires_grad, bias_key, noise_key, demodulate, eps, activation, gain, clamp, impl,
            torch.is_grad_enabled(), torch._C._is_any_autocast_enabled())


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
        impl: "auto", a backend ("ref", "torch", "triton", "cuda": the best of its candidates) or a candidate
            ("torch:bmm", "triton:weights", ...; gigagan_kernels.candidates("adaptive_modconv2d") lists them).
            "auto" times the runnable candidates on the first call with a new shape and keeps the fastest
            (gigagan_kernels/autotune.py); an unrunnable request raises BackendUnavailableError with the reasons.

    All tensors share one device and dtype (fp32, fp16 or bf16); accumulation is fp32.
    Supports gradients of every order for every impl: first-order backward of the fused
    paths runs fused kernels; under create_graph=True it goes through the reference.
    """
    call, candidate = prepare(x, weight_bank, select_logits, style, bias, demodulate=demodulate, eps=eps, noise=noise,
                               activation=activation, gain=gain, clamp=clamp, impl=impl)
    B, _, H, W = x.shape
    Cout = weight_bank.shape[1]
    if B > 0 and 0 in (Cout, H, W):
        # An empty output, the same on every backend, attached to every input (whose gradients are zero).
        inputs = [t for t in (x, weight_bank, select_logits, style, bias, noise) if t is not None]
        return x.new_zeros((B, Cout, H, W)) + sum(t.sum() for t in inputs) * 0
    if B == 0:          # an empty batch: the reference keeps y attached to every input
        return adaptive_modconv2d_ref(x, weight_bank, select_logits, style, bias, noise=noise, **call.options())
    return candidate.run(call)


def prepare(x, weight_bank, select_logits, style, bias=None, *, demodulate=True, eps=1e-8, noise=None,
             activation=None, gain=None, clamp=None, impl="auto"):
    """adaptive_modconv2d up to its launch: the validated call and the candidate that runs it (what the host
    benchmark times as dispatch)."""
    key = _cache_key(x, weight_bank, select_logits, style, bias, noise, demodulate, eps, activation, gain, clamp, impl)
    candidate = cached_choice(OP_NAME, key)
    if candidate is None:       # a call not seen before: validated here, once per key
        validate(x, weight_bank, select_logits, style, bias, noise, activation, gain, clamp, eps)
    activation = None if activation == "linear" else activation
    gain = default_gain(activation) if gain is None else float(gain)
    clamp = None if clamp is None else float(clamp)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight_bank.requires_grad or select_logits.requires_grad or style.requires_grad
        or (bias is not None and bias.requires_grad) or (noise is not None and noise.requires_grad))
    call = ModconvCall(x, weight_bank, select_logits, style, bias, noise, demodulate=bool(demodulate), eps=float(eps),
                       activation=activation, gain=gain, clamp=clamp, needs_grad=needs_grad)
    if candidate is None:
        B, _, H, W = x.shape
        candidate = choose(OP_NAME, impl, call, empty=0 in (B, weight_bank.shape[1], H, W), cache_key=key)
    return call, candidate
