"""Triton pieces both of adaptive_modconv2d's strategies use: the fused epilogue (forward math, and its
backward as one kernel), the dot dtype and precision, and launch helpers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .plans import EPILOGUE_BWD_CONFIG, FINISH_CONFIG, next_power_of_2


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
def softmax_rows(Logits_ptr, offs_b, b_mask, stride_lb, stride_ln, N, N_PAD: tl.constexpr):
    """a = softmax(select_logits) in fp32 for the rows offs_b: [rows, N_PAD], zero in padded rows and columns.
    Every kernel that needs a recomputes it from the logits (N <= 32 values a row), so no softmax kernel runs."""
    offs_n = tl.arange(0, N_PAD)
    n_mask = offs_n < N
    logits = tl.load(Logits_ptr + offs_b[:, None] * stride_lb + offs_n[None, :] * stride_ln,
                     mask=b_mask[:, None] & n_mask[None, :], other=float("-inf")).to(tl.float32)
    row_max = tl.where(b_mask, tl.max(logits, axis=1), 0.0)
    e = tl.exp(logits - row_max[:, None])
    total = tl.sum(e, axis=1)
    return e / tl.where(b_mask, total, 1.0)[:, None]


@triton.jit
def _epilogue_bwd_kernel(
    GY_ptr, Lin_ptr, D_ptr, Bias_ptr, Noise_ptr, GZ_ptr, C_ptr, BiasPart_ptr, NoiseGrad_ptr,
    B, Cout, H, W, gain, clamp,
    stride_gzb, stride_gzc, stride_gzp,
    stride_gyb, stride_gyc, stride_gyh, stride_gyw,
    stride_lb, stride_lc, stride_lh, stride_lw,
    stride_nb, stride_nc, stride_nh, stride_nw, stride_db,
    DEMOD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_NOISE: tl.constexpr, NOISE_GRAD: tl.constexpr,
    ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """The whole epilogue backward in one pass. One program per (sample b, block of output channels), over all
    the sample's pixels, so that its per-channel sums are complete. With g = dL/dlin:
      gz[b, o, p] = d[b, o] g                       ([B, Cout, P] with the given strides: what the GEMMs read)
      c[b, o] = d^2 sum_p g * lin                   (the demodulation term, complete)
      biaspart[b, o] = sum_p g                      (summed over samples by _finish_grads_kernel)
      NOISE_GRAD 1: noisegrad[ob, b, p] = sum_{o in block} g (noise [*, 1, H, W]; summed over blocks there)
      NOISE_GRAD 2: noisegrad[b, o, p] = g, in noisegrad's dtype
    Partials are per program and summed in a fixed order: deterministic, no atomics, no zero fills."""
    P = H * W
    num_o = tl.cdiv(Cout, BLOCK_O)
    pid = tl.program_id(0)
    pid_o = pid % num_o
    b = pid // num_o
    b64 = b.to(tl.int64)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_mask = offs_o < Cout
    d = tl.load(D_ptr + b64 * stride_db + offs_o, mask=o_mask, other=1.0)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(Bias_ptr + offs_o, mask=o_mask, other=0.0).to(tl.float32)[:, None]
    c_acc = tl.zeros((BLOCK_O,), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_mask = offs_p < P
        mask = o_mask[:, None] & p_mask[None, :]
        oh = offs_p // W
        ow = offs_p % W
        g = tl.load(GY_ptr + b64 * stride_gyb + offs_o[:, None] * stride_gyc
                    + (oh * stride_gyh + ow * stride_gyw)[None, :], mask=mask, other=0.0).to(tl.float32)
        lin = tl.load(Lin_ptr + b64 * stride_lb + offs_o[:, None] * stride_lc
                      + (oh * stride_lh + ow * stride_lw)[None, :], mask=mask, other=0.0).to(tl.float32)
        v = lin + bias
        if HAS_NOISE:
            v += tl.load(Noise_ptr + b64 * stride_nb + offs_o[:, None] * stride_nc
                         + (oh * stride_nh + ow * stride_nw)[None, :], mask=mask, other=0.0).to(tl.float32)
        if ACT == 1:
            slope = tl.where(v > 0, 1.0, 0.2)
        else:
            slope = 1.0
        g = g * (slope * gain)
        if HAS_CLAMP:
            act = v * (slope * gain)
            g = tl.where((act >= -clamp) & (act <= clamp), g, 0.0)
        g = tl.where(mask, g, 0.0)
        tl.store(GZ_ptr + b64 * stride_gzb + offs_o[:, None] * stride_gzc + offs_p[None, :] * stride_gzp,
                 (g * d[:, None]).to(GZ_ptr.dtype.element_ty), mask=mask)
        if DEMOD:
            c_acc += tl.sum(g * lin, axis=1)
        if HAS_BIAS:
            bias_acc += tl.sum(g, axis=1)
        if NOISE_GRAD == 1:
            tl.store(NoiseGrad_ptr + (pid_o * B + b).to(tl.int64) * P + offs_p, tl.sum(g, axis=0), mask=p_mask)
        if NOISE_GRAD == 2:
            tl.store(NoiseGrad_ptr + b64 * Cout * P + offs_o[:, None] * P + offs_p[None, :],
                     g.to(NoiseGrad_ptr.dtype.element_ty), mask=mask)
    if DEMOD:
        tl.store(C_ptr + b64 * Cout + offs_o, c_acc * d * d, mask=o_mask)
    if HAS_BIAS:
        tl.store(BiasPart_ptr + b64 * Cout + offs_o, bias_acc, mask=o_mask)


@triton.jit
def _finish_grads_kernel(
    Logits_ptr, DAPart_ptr, DSPart_ptr, DSR_ptr, BiasPart_ptr, NoisePart_ptr,
    DLogits_ptr, DS_ptr, DBias_ptr, DNoise_ptr,
    B, N, Cin, Cout, P, DA_ROWS, DS_ROWS, NOISE_ROWS,
    stride_lb, stride_ln, stride_dlb, stride_dln, stride_dsb, stride_dsc,
    TAPS: tl.constexpr, TAPS_PAD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_NOISE_PART: tl.constexpr,
    N_PAD: tl.constexpr,
    BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The op's small gradients from the partials the other kernels left, in a fixed order (deterministic):
    program b < B: dlogits[b] = a (da - <a, da>) (softmax backward; a recomputed from the logits, da the sum of
      DA_ROWS partials [DA_ROWS, B, N_PAD]), ds[b] = the sum of DS_ROWS partials [DS_ROWS, B, Cin] (plus, with
      TAPS > 0, the per-tap terms DSR [B, Cin * TAPS]), and with HAS_NOISE_PART the pixel-noise gradient (the sum
      of NOISE_ROWS partials [NOISE_ROWS, B, P]);
    program B: dbias = the sum over samples of BiasPart [B, Cout].
    Each output is written in its own dtype: no cast kernels follow."""
    b = tl.program_id(0)
    if b == B:
        if HAS_BIAS:
            for c0 in range(0, Cout, BLOCK_C):
                offs_c = c0 + tl.arange(0, BLOCK_C)
                acc = tl.zeros((BLOCK_J, BLOCK_C), dtype=tl.float32)
                for j0 in range(0, B, BLOCK_J):
                    offs_j = j0 + tl.arange(0, BLOCK_J)
                    acc += tl.load(BiasPart_ptr + offs_j.to(tl.int64)[:, None] * Cout + offs_c[None, :],
                                   mask=(offs_j < B)[:, None] & (offs_c < Cout)[None, :], other=0.0)
                tl.store(DBias_ptr + offs_c, tl.sum(acc, axis=0).to(DBias_ptr.dtype.element_ty), mask=offs_c < Cout)
    else:
        b64 = b.to(tl.int64)
        offs_n = tl.arange(0, N_PAD)
        da_acc = tl.zeros((BLOCK_J, N_PAD), dtype=tl.float32)
        for j0 in range(0, DA_ROWS, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            da_acc += tl.load(DAPart_ptr + (offs_j.to(tl.int64)[:, None] * B + b) * N_PAD + offs_n[None, :],
                              mask=(offs_j < DA_ROWS)[:, None] & (offs_n < N)[None, :], other=0.0)
        da = tl.sum(da_acc, axis=0)
        a = tl.sum(softmax_rows(Logits_ptr, b + tl.arange(0, 1), tl.full((1,), True, tl.int1), stride_lb, stride_ln,
                                N, N_PAD), axis=0)
        dlogits = a * (da - tl.sum(a * da, axis=0))
        tl.store(DLogits_ptr + b64 * stride_dlb + offs_n * stride_dln, dlogits.to(DLogits_ptr.dtype.element_ty),
                 mask=offs_n < N)
        for c0 in range(0, Cin, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            c_mask = offs_c < Cin
            acc = tl.zeros((BLOCK_J, BLOCK_C), dtype=tl.float32)
            for j0 in range(0, DS_ROWS, BLOCK_J):
                offs_j = j0 + tl.arange(0, BLOCK_J)
                acc += tl.load(DSPart_ptr + (offs_j.to(tl.int64)[:, None] * B + b) * Cin + offs_c[None, :],
                               mask=(offs_j < DS_ROWS)[:, None] & c_mask[None, :], other=0.0)
            ds = tl.sum(acc, axis=0)
            if TAPS > 0:
                offs_t = tl.arange(0, TAPS_PAD)
                ds += tl.sum(tl.load(DSR_ptr + b64 * Cin * TAPS + offs_c[:, None] * TAPS + offs_t[None, :],
                                     mask=c_mask[:, None] & (offs_t < TAPS)[None, :], other=0.0), axis=1)
            tl.store(DS_ptr + b64 * stride_dsb + offs_c * stride_dsc, ds.to(DS_ptr.dtype.element_ty), mask=c_mask)
        if HAS_NOISE_PART:
            for p0 in range(0, P, BLOCK_C):
                offs_p = p0 + tl.arange(0, BLOCK_C)
                p_mask = offs_p < P
                acc = tl.zeros((BLOCK_J, BLOCK_C), dtype=tl.float32)
                for j0 in range(0, NOISE_ROWS, BLOCK_J):
                    offs_j = j0 + tl.arange(0, BLOCK_J)
                    acc += tl.load(NoisePart_ptr + (offs_j.to(tl.int64)[:, None] * B + b) * P + offs_p[None, :],
                                   mask=(offs_j < NOISE_ROWS)[:, None] & p_mask[None, :], other=0.0)
                tl.store(DNoise_ptr + b64 * P + offs_p, tl.sum(acc, axis=0).to(DNoise_ptr.dtype.element_ty),
                         mask=p_mask)


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


@dataclass
class Partials:
    """What the backward kernels leave for _finish_grads_kernel: per-program partial sums, fp32."""
    da: torch.Tensor                    # [rows, B, N_PAD]
    ds: torch.Tensor                    # [rows, B, Cin]
    dsr: Optional[torch.Tensor] = None  # [B, Cin * k * k]: the "fused" strategy's per-tap style terms
    taps: int = 0


class EpilogueGrads:
    """epilogue_backward's results: gz and c for the GEMMs and reductions, and what finish_grads turns into dbias
    and dnoise."""

    def __init__(self, gz, c, bias_part, noise_part, dnoise, noise, out_shape):
        self.gz, self.c, self.bias_part, self.noise_part, self.dnoise, self.noise = \
            gz, c, bias_part, noise_part, dnoise, noise
        self.out_shape = out_shape          # (B, Cout, H, W)


def _noise4(noise):
    return noise.reshape((1,) * (4 - noise.dim()) + tuple(noise.shape))


def epilogue_backward(grad_y, lin, d, bias, noise, *, demodulate, activation_code, gain, clamp, pixel_major=False):
    """The epilogue's backward in one kernel. gz = d * dL/dlin ([B, Cout, H*W] in lin's dtype; channel-major, or
    pixel-major for the implicit GEMMs), c = d^2 sum_p dL/dlin * lin (fp32 [B, Cout]; unwritten without
    demodulation, where nothing reads it), and the bias and noise partials finish_grads completes."""
    B, Cout, H, W = grad_y.shape
    P = H * W
    cfg = EPILOGUE_BWD_CONFIG
    num_o = triton.cdiv(Cout, cfg["BLOCK_O"])
    dev = grad_y.device
    gz = torch.empty((B, P, Cout), device=dev, dtype=lin.dtype).transpose(1, 2) if pixel_major else \
        torch.empty((B, Cout, P), device=dev, dtype=lin.dtype)
    c = torch.empty((B, Cout), device=dev, dtype=torch.float32)
    bias_part = torch.empty((B, Cout), device=dev, dtype=torch.float32) if bias is not None else None
    noise_grad, noise_part, dnoise = 0, None, None
    if noise is not None:
        noise4 = _noise4(noise)
        if noise4.shape[1] == 1:
            noise_grad = 1
            noise_part = torch.empty((num_o, B, P), device=dev, dtype=torch.float32)
        else:
            noise_grad = 2
            # The gradient of a noise of the output's shape is g itself, written in its dtype; a noise broadcast
            # over samples or pixels is summed down after (in fp32).
            exact = tuple(noise4.shape) == (B, Cout, H, W)
            noise_part = torch.empty((B, Cout, H, W), device=dev, dtype=noise.dtype if exact else torch.float32)
            if exact:
                dnoise = noise_part.view(noise.shape)
    _epilogue_bwd_kernel[(num_o * B,)](
        grad_y, lin, d, bias if bias is not None else gz, noise if noise is not None else gz, gz, c,
        bias_part if bias_part is not None else c, noise_part if noise_part is not None else c,
        B, Cout, H, W, float(gain), float(clamp if clamp is not None else 0.0), *gz.stride(), *grad_y.stride(),
        *lin.stride(), *noise_strides(noise, grad_y.shape), d.stride(0),
        DEMOD=demodulate, HAS_BIAS=bias is not None, HAS_NOISE=noise is not None, NOISE_GRAD=noise_grad,
        ACT=activation_code, HAS_CLAMP=clamp is not None, **cfg)
    if noise_grad == 2 and dnoise is None:
        dnoise = noise_part.sum_to_size(_noise4(noise).shape).view(noise.shape).to(noise.dtype)
    return EpilogueGrads(gz, c, bias_part, noise_part, dnoise, noise, (B, Cout, H, W))


def finish_grads(select_logits, style, bias, epilogue: EpilogueGrads, partials: Partials):
    """dlogits, ds, dbias and dnoise (empty when absent) from the partials, by one kernel."""
    B, N = select_logits.shape
    Cin = style.shape[1]
    dev = style.device
    dlogits = torch.empty_like(select_logits)
    ds = torch.empty_like(style)
    dbias = torch.empty_like(bias) if bias is not None else style.new_empty((0,))
    noise = epilogue.noise
    pixel_noise = noise is not None and epilogue.dnoise is None
    direct = False
    target = ds
    if pixel_noise:
        # A [B, 1, H, W] noise gets its gradient written in its dtype; other shapes sum the per-sample one down.
        per_sample_shape = (B, 1) + tuple(epilogue.out_shape[2:])
        direct = tuple(_noise4(noise).shape) == per_sample_shape
        target = torch.empty(per_sample_shape, device=dev, dtype=noise.dtype if direct else torch.float32)
    rows = dict(DA_ROWS=partials.da.shape[0], DS_ROWS=partials.ds.shape[0],
                NOISE_ROWS=epilogue.noise_part.shape[0] if pixel_noise else 0)
    P = epilogue.gz.shape[2]
    _finish_grads_kernel[(B + 1,)](
        select_logits, partials.da, partials.ds, partials.dsr if partials.dsr is not None else partials.ds,
        epilogue.bias_part if epilogue.bias_part is not None else partials.ds,
        epilogue.noise_part if pixel_noise else partials.ds,
        dlogits, ds, dbias if bias is not None else ds, target,
        B, N, Cin, bias.shape[0] if bias is not None else 0, P, *rows.values(),
        select_logits.stride(0), select_logits.stride(1), dlogits.stride(0), dlogits.stride(1), ds.stride(0),
        ds.stride(1), TAPS=partials.taps, TAPS_PAD=next_power_of_2(partials.taps), HAS_BIAS=bias is not None,
        HAS_NOISE_PART=pixel_noise, N_PAD=partials.da.shape[2], **FINISH_CONFIG)
    if not pixel_noise:
        dnoise = epilogue.dnoise if noise is not None else style.new_empty((0,))
    elif direct:
        dnoise = target.view(noise.shape)
    else:
        dnoise = target.sum_to_size(_noise4(noise).shape).view(noise.shape).to(noise.dtype)
    return dlogits, ds, dbias, dnoise
