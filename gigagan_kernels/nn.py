"""nn.Module wrappers around the fused ops, with StyleGAN2's equalised learning rate.

Parameters are stored unit-normal and scaled at run time by 1/sqrt(fan_in)
(times an optional lr multiplier), so Adam sees every layer at the same scale.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.profiler import record_function

from .ops.adaptive_modconv2d import adaptive_modconv2d


def _keep_grad_strides(param: nn.Parameter) -> nn.Parameter:
    """Give param's gradient param's own strides. Where a size-1 dimension meets a matmul or conv
    backward (a 1-output layer's bank [1, 1, Cin, 1, 1]), autograd returns other strides for the same
    elements, and DDP warns that they do not match its gradient buckets' strides. (A hook belongs to
    this Parameter: a deepcopy's parameters train correctly but without it.)"""
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad if grad.stride() == param.stride() else grad.new_empty(param.shape).copy_(grad)
    param.register_hook(hook)
    return param


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
    """GigaGAN's sample-adaptive kernel-selection modulated convolution layer (docs/design.md §2).

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
        self.weight_bank = _keep_grad_strides(
            nn.Parameter(torch.randn(num_filters, out_channels, in_channels, kernel_size, kernel_size)))
        # With one filter the softmax is constant, so a selection layer would never learn: leave it out.
        self.select = EqualizedLinear(style_dim, num_filters, bias_init=0.0) if num_filters > 1 else None
        self.affine = EqualizedLinear(style_dim, in_channels, bias_init=1.0)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.noise_strength = nn.Parameter(torch.zeros(())) if use_noise else None
        # Equalised lr for the bank, folded into the style: (W*g)*s == W*(s*g), which saves a bank-sized copy.
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    @record_function("gigagan_kernels.adaptive_modconv2d")
    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        if self.select is None:
            select_logits = torch.zeros((x.shape[0], 1), device=x.device, dtype=dtype)
        else:
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


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    B, L, _ = t.shape
    return t.reshape(B, L, heads, -1).transpose(1, 2)          # [B, heads, L, dim_head]


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    B, heads, L, dim_head = t.shape
    return t.transpose(1, 2).reshape(B, L, heads * dim_head)


class L2SelfAttention(nn.Module):
    """GigaGAN's self-attention: L2-distance logits with tied query/key weights (Lipschitz, as in ViTGAN).

    Tokens are the pixels of x [B, C, H, W]. With ``style_dim`` the style w is projected to one extra
    key/value token, so every pixel can attend to it (the paper feeds w into self-attention). The
    output is added back with a reduced residual gain, which keeps early training stable.
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int | None = None, style_dim: int | None = None,
                 residual_gain: float = 0.2, impl: str = "auto"):
        super().__init__()
        dim_head = dim_head or dim // heads
        self.heads, self.residual_gain, self.impl = heads, residual_gain, impl
        inner = heads * dim_head
        self.to_qk = EqualizedLinear(dim, inner, bias=False)       # tied: queries and keys share it
        self.to_v = EqualizedLinear(dim, inner, bias=False)
        self.to_out = EqualizedLinear(inner, dim)
        self.style_token = EqualizedLinear(style_dim, dim) if style_dim else None

    @record_function("gigagan_kernels.attention")
    def forward(self, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        from .ops.attention import attention
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)                       # [B, HW, C]
        context = tokens
        if self.style_token is not None:
            if w is None:
                raise ValueError("L2SelfAttention: this layer was built with style_dim, so w is required")
            context = torch.cat([tokens, self.style_token(w).to(tokens.dtype)[:, None, :]], dim=1)
        q = _split_heads(self.to_qk(tokens), self.heads)
        k = _split_heads(self.to_qk(context), self.heads)
        v = _split_heads(self.to_v(context), self.heads)
        out = self.to_out(_merge_heads(attention(q, k, v, kind="l2", impl=self.impl)))
        return x + self.residual_gain * out.transpose(1, 2).reshape(B, C, H, W)


class CrossAttention(nn.Module):
    """Cross-attention from image pixels (queries) to text tokens t_local (keys, values), with their mask."""

    def __init__(self, dim: int, text_dim: int, heads: int = 4, dim_head: int | None = None,
                 residual_gain: float = 0.2, impl: str = "auto"):
        super().__init__()
        dim_head = dim_head or dim // heads
        self.heads, self.residual_gain, self.impl = heads, residual_gain, impl
        inner = heads * dim_head
        self.to_q = EqualizedLinear(dim, inner, bias=False)
        self.to_k = EqualizedLinear(text_dim, inner, bias=False)
        self.to_v = EqualizedLinear(text_dim, inner, bias=False)
        self.to_out = EqualizedLinear(inner, dim)

    @record_function("gigagan_kernels.attention")
    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, H, W]; text [B, T, text_dim]; text_mask [B, T] bool, True = a real token."""
        from .ops.attention import attention
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        text = text.to(tokens.dtype)
        q = _split_heads(self.to_q(tokens), self.heads)
        k = _split_heads(self.to_k(text), self.heads)
        v = _split_heads(self.to_v(text), self.heads)
        out = attention(q, k, v, kind="dot", key_padding_mask=text_mask, impl=self.impl)
        out = self.to_out(_merge_heads(out))
        return x + self.residual_gain * out.transpose(1, 2).reshape(B, C, H, W)


class EqualizedConv2d(nn.Module):
    """A plain "same" convolution with equalised lr and a fused bias/lrelu/clamp epilogue.

    It runs through the adaptive_modconv2d op (N = 1, constant style, no demodulation), so the
    impl switch covers every convolution of a model, and the epilogue is fused on the fast paths.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
                 activation: str | None = None, gain: float | None = None, clamp: float | None = None,
                 impl: str = "auto"):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"EqualizedConv2d: kernel_size must be odd, got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.activation, self.gain, self.clamp, self.impl = activation, gain, clamp, impl
        self.weight = _keep_grad_strides(nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size)))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, dtype = x.shape[0], x.dtype
        style = torch.full((B, self.in_channels), self.weight_gain, device=x.device, dtype=dtype)
        select_logits = torch.zeros((B, 1), device=x.device, dtype=dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        return adaptive_modconv2d(x, self.weight.to(dtype)[None], select_logits, style, bias, demodulate=False,
                                  activation=self.activation, gain=self.gain, clamp=self.clamp, impl=self.impl)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"activation={self.activation}")
