"""adaptive_modconv2d's contract, shared by every backend: its constants, the input validation that runs before
any launch, and the workspace budget of the per-sample-weight paths."""
from __future__ import annotations

import math
import os

import torch

OP_NAME = "adaptive_modconv2d"
ACTIVATIONS = (None, "linear", "lrelu")
LRELU_SLOPE = 0.2


def default_gain(activation):
    return math.sqrt(2.0) if activation == "lrelu" else 1.0


# Activation codes the fused kernels take (a constexpr).
ACT_LINEAR = 0
ACT_LRELU = 1


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


# The per-sample tensors of the "weights" decomposition (Triton's strategy and the CUDA path) live in a budget: half
# of it for the weights kept from forwards for their backwards, across the whole model (gigagan_kernels/memory.py
# plans which calls keep them, once), the other half for one call's temporaries.
WORKSPACE_ENV = "GIGAGAN_KERNELS_MODCONV_WORKSPACE_MB"
# The reference keeps ~5.5 copies of the per-sample weights alive for its backward (3.4 GiB at GigaGAN's
# 1024-channel layers, B = 32); 1.5 GiB holds the weights of one such layer kept, plus one call's temporaries.
DEFAULT_WORKSPACE_MB = 1536


def workspace_bytes() -> int:
    """The budget for the "weights" strategy's per-sample tensors (kept weights across the model, one call's
    weights, their gradient and im2col columns), from GIGAGAN_KERNELS_MODCONV_WORKSPACE_MB (default 1536 MiB)."""
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
