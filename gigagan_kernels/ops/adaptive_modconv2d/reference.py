"""Backend "ref": the readable composite in plain torch ops, the oracle of every test and the naive baseline of
every benchmark. It materialises the per-sample weights and runs one grouped convolution, as lucidrains'
gigagan-pytorch and StyleGAN2 do."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import LRELU_SLOPE, default_gain


def epilogue_ref(y, bias, noise, activation, gain, clamp):
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
    gain = default_gain(activation) if gain is None else float(gain)
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = weight_bank.shape
    if B == 0:
        # Keep the output attached to every input so that backward yields zero gradients.
        anchor = weight_bank.sum() + select_logits.sum() + style.sum() + x.sum()
        return epilogue_ref(x.new_zeros((0, Cout, H, W)) + anchor * 0, bias, noise, activation, gain, clamp)
    a = torch.softmax(select_logits, dim=1)                                  # paper eq. 1
    weight = torch.einsum("bn,noihw->boihw", a, weight_bank)                 # selected filter K[b]
    weight = weight * style[:, None, :, None, None]                          # modulation, eq. 2
    if demodulate:
        weight = weight * torch.rsqrt(weight.square().sum(dim=(2, 3, 4), keepdim=True) + eps)
    y = F.conv2d(x.reshape(1, B * Cin, H, W), weight.reshape(B * Cout, Cin, k, k), padding=k // 2, groups=B)
    return epilogue_ref(y.reshape(B, Cout, H, W), bias, noise, activation, gain, clamp)
