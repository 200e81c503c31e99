"""Triton pieces both of adaptive_modconv2d's strategies use: the fused epilogue (forward math, and its
backward as one kernel), the dot dtype and precision, and launch helpers.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .plans import EPILOGUE_CONFIG


@triton.jit
def apply_epilogue(acc, noise, bias, gain, clamp,
                   HAS_NOISE: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr):
    """noise -> bias -> lrelu * gain -> clamp, in fp32; noise and bias come broadcast to acc's shape."""
    if HAS_NOISE:
        acc += noise
    if HAS_BIAS:
        acc += bias
    if ACT == 1:
        acc = tl.where(acc > 0, acc, acc * 0.2)
    acc = acc * gain
    if HAS_CLAMP:
        acc = tl.minimum(tl.maximum(acc, -clamp), clamp)
    return acc


@triton.jit
def _epilogue_bwd_kernel(
    GY_ptr, Lin_ptr, D_ptr, Bias_ptr, Noise_ptr, GZ_ptr, CPart_ptr, BiasPart_ptr, NoisePart_ptr,
    B, Cout, H, W, gain, clamp,
    stride_gzb, stride_gzc, stride_gzp,
    stride_gyb, stride_gyc, stride_gyh, stride_gyw,
    stride_lb, stride_lc, stride_lh, stride_lw,
    stride_nb, stride_nc, stride_nh, stride_nw, stride_db,
    DEMOD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_NOISE: tl.constexpr, NOISE_GRAD: tl.constexpr,
    ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """The whole epilogue backward in one pass over [Cout, pixel] tiles. With g = dL/dlin:
      gz[b, o, p] = d[b, o] g                       ([B, Cout, P] with the given strides: what the GEMMs read)
      cpart[pb, b, o] = sum_{p in tile} g * lin     (c = d^2 sum_p g lin: the demodulation term)
      biaspart[pb, b, o] = sum_{p in tile} g
      NOISE_GRAD 1: noisepart[ob, b, p] = sum_{o in tile} g (noise [*, 1, H, W]); 2: noisepart = g
    Partials per tile, summed on the host: deterministic, no atomics."""
    P = H * W
    num_p = tl.cdiv(P, BLOCK_P)
    num_o = tl.cdiv(Cout, BLOCK_O)
    pid = tl.program_id(0)
    pid_p = pid % num_p
    pid_o = (pid // num_p) % num_o
    b = pid // (num_p * num_o)
    b64 = b.to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    p_mask = offs_p < P
    o_mask = offs_o < Cout
    mask = o_mask[:, None] & p_mask[None, :]
    oh = offs_p // W
    ow = offs_p % W
    g = tl.load(GY_ptr + b64 * stride_gyb + offs_o[:, None] * stride_gyc + (oh * stride_gyh + ow * stride_gyw)[None, :],
                mask=mask, other=0.0).to(tl.float32)
    lin = tl.load(Lin_ptr + b64 * stride_lb + offs_o[:, None] * stride_lc + (oh * stride_lh + ow * stride_lw)[None, :],
                  mask=mask, other=0.0).to(tl.float32)
    v = lin
    if HAS_NOISE:
        v += tl.load(Noise_ptr + b64 * stride_nb + offs_o[:, None] * stride_nc
                     + (oh * stride_nh + ow * stride_nw)[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(Bias_ptr + offs_o, mask=o_mask, other=0.0).to(tl.float32)[:, None]
    if ACT == 1:
        slope = tl.where(v > 0, 1.0, 0.2)
    else:
        slope = 1.0
    g = g * (slope * gain)
    if HAS_CLAMP:
        act = v * (slope * gain)
        g = tl.where((act >= -clamp) & (act <= clamp), g, 0.0)
    g = tl.where(mask, g, 0.0)
    d = tl.load(D_ptr + b64 * stride_db + offs_o, mask=o_mask, other=1.0)
    tl.store(GZ_ptr + b64 * stride_gzb + offs_o[:, None] * stride_gzc + offs_p[None, :] * stride_gzp,
             (g * d[:, None]).to(GZ_ptr.dtype.element_ty), mask=mask)
    part = (pid_p * B + b).to(tl.int64) * Cout + offs_o
    if DEMOD:
        tl.store(CPart_ptr + part, tl.sum(g * lin, axis=1), mask=o_mask)
    if HAS_BIAS:
        tl.store(BiasPart_ptr + part, tl.sum(g, axis=1), mask=o_mask)
    if NOISE_GRAD == 1:
        tl.store(NoisePart_ptr + (pid_o * B + b).to(tl.int64) * P + offs_p, tl.sum(g, axis=0), mask=p_mask)
    if NOISE_GRAD == 2:
        tl.store(NoisePart_ptr + b64 * Cout * P + offs_o[:, None] * P + offs_p[None, :], g, mask=mask)


_DOT_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def dot_dtype(dtype: torch.dtype):
    return _DOT_DTYPES[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's cuDNN convolution default: TF32 unless the user turned it off.
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


def noise_strides(noise, shape):
    if noise is None:
        return (0, 0, 0, 0)
    return noise.expand(shape).stride()


def flat_grid(*counts):
    n = 1
    for c in counts:
        n *= c
    return (n,)


def epilogue_backward(grad_y, lin, d, bias, noise, *, demodulate, activation_code, gain, clamp, pixel_major=False):
    """The epilogue's backward in one kernel. Returns gz = d * dL/dlin ([B, Cout, H*W] in lin's dtype;
    channel-major, or pixel-major for the implicit GEMMs), c = d^2 sum_p dL/dlin * lin (fp32 [B, Cout];
    zeros without demodulation), dbias and dnoise (empty when absent)."""
    B, Cout, H, W = grad_y.shape
    P = H * W
    cfg = EPILOGUE_CONFIG
    num_p, num_o = triton.cdiv(P, cfg["BLOCK_P"]), triton.cdiv(Cout, cfg["BLOCK_O"])
    dev = grad_y.device
    gz = torch.empty((B, P, Cout), device=dev, dtype=lin.dtype).transpose(1, 2) if pixel_major else \
        torch.empty((B, Cout, P), device=dev, dtype=lin.dtype)
    cpart = torch.empty((num_p, B, Cout), device=dev, dtype=torch.float32) if demodulate else gz
    bpart = torch.empty((num_p, B, Cout), device=dev, dtype=torch.float32) if bias is not None else gz
    noise_grad = 0
    npart = gz
    if noise is not None:
        noise4 = noise.reshape((1,) * (4 - noise.dim()) + tuple(noise.shape))
        noise_grad = 1 if noise4.shape[1] == 1 else 2
        npart = torch.empty((num_o, B, P) if noise_grad == 1 else (B, Cout, P), device=dev, dtype=torch.float32)
    _epilogue_bwd_kernel[flat_grid(num_p, num_o, B)](
        grad_y, lin, d, bias if bias is not None else gz, noise if noise is not None else gz, gz, cpart, bpart, npart,
        B, Cout, H, W, float(gain), float(clamp if clamp is not None else 0.0), *gz.stride(), *grad_y.stride(),
        *lin.stride(),
        *noise_strides(noise, grad_y.shape), d.stride(0),
        DEMOD=demodulate, HAS_BIAS=bias is not None, HAS_NOISE=noise is not None, NOISE_GRAD=noise_grad,
        ACT=activation_code, HAS_CLAMP=clamp is not None, **cfg)
    c = cpart.sum(0) * d * d if demodulate else torch.zeros((B, Cout), device=dev, dtype=torch.float32)
    dbias = bpart.sum((0, 1)).to(bias.dtype) if bias is not None else grad_y.new_empty((0,))
    if noise is None:
        dnoise = grad_y.new_empty((0,))
    else:
        full = npart.sum(0).view(B, 1, H, W) if noise_grad == 1 else npart.view(B, Cout, H, W)
        dnoise = full.sum_to_size(noise4.shape).view(noise.shape).to(noise.dtype)
    return gz, c, dbias, dnoise
