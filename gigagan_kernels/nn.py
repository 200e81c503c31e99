"""nn.Module wrappers around the fused ops, with StyleGAN2's equalised learning rate.

Parameters are stored unit-normal and scaled at run time by 1/sqrt(fan_in)
(times an optional lr multiplier), so Adam sees every layer at the same scale.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .adaptive_modconv import adaptive_modconv2d


class EqualizedLinear(nn.Module):
    """y = x @ (W * lr_mul / sqrt(in))^T + b * lr_mul, with W ~ N(0, 1/lr_mul^2)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_multiplier: float = 1.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight * self.weight_gain).to(x.dtype)
        bias = None if self.bias is None else (self.bias * self.bias_gain).to(x.dtype)
        return torch.nn.functional.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class AdaptiveModConv2d(nn.Module):
    """GigaGAN's sample-adaptive kernel-selection modulated convolution layer (SPEC §2).

    Owns the filter bank [N, Cout, Cin, k, k] (unit-normal, equalised lr), the two affine
    layers from w (selection logits, bias init 0; style, bias init 1) and the output bias.
    With ``use_noise`` it adds per-pixel noise scaled by a learned strength (init 0).

        layer = AdaptiveModConv2d(512, 512, 3, num_filters=8, style_dim=512, activation="lrelu")
        y = layer(x, w)          # x [B, 512, H, W], w [B, 512]
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_filters: int, style_dim: int,
                 *, demodulate: bool = True, activation: str | None = "lrelu", gain: float | None = None,
                 clamp: float | None = None, bias: bool = True, use_noise: bool = False, impl: str = "auto"):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"AdaptiveModConv2d: kernel_size must be odd, got {kernel_size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.num_filters = kernel_size, num_filters
        self.demodulate, self.activation, self.gain, self.clamp, self.impl = demodulate, activation, gain, clamp, impl
        self.weight_bank = nn.Parameter(torch.randn(num_filters, out_channels, in_channels, kernel_size, kernel_size))
        self.select = EqualizedLinear(style_dim, num_filters, bias_init=0.0)
        self.affine = EqualizedLinear(style_dim, in_channels, bias_init=1.0)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.noise_strength = nn.Parameter(torch.zeros(())) if use_noise else None
        # Equalised lr for the bank, folded into the style: (W*g)*s == W*(s*g), which saves a bank-sized copy.
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        select_logits = self.select(w).to(dtype)
        style = (self.affine(w) * self.weight_gain).to(dtype)
        if noise is None and self.noise_strength is not None:
            noise = torch.randn((x.shape[0], 1, x.shape[2], x.shape[3]), device=x.device, dtype=dtype)
        if noise is not None and self.noise_strength is not None:
            noise = (noise * self.noise_strength).to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        return adaptive_modconv2d(x, self.weight_bank.to(dtype), select_logits, style, bias,
                                  demodulate=self.demodulate, noise=noise, activation=self.activation,
                                  gain=self.gain, clamp=self.clamp, impl=self.impl)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"num_filters={self.num_filters}, demodulate={self.demodulate}, activation={self.activation}")
