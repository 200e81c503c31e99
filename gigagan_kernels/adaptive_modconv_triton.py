"""Triton kernels for sample-adaptive kernel-selection modulated convolution.

Notation: a = softmax(select_logits) [B,N], s = style [B,Cin], K[b] = sum_n a[b,n] W[n],
d[b,o] = rsqrt(sum_{i,t} (K[b,o,i,t] s[b,i])^2 + eps). Since d scales output channels,
y_lin[b,o,p] = d[b,o] * conv(x[b], K[b] * s[b])[o,p], and demodulation is an output scale either way.

Two strategies:
  "weights": one kernel builds every sample's mixed, modulated weights once (the mix is a tensor-core
      dot over a group of samples; d comes out of the same pass), then tensor-core GEMMs on them
      (torch.bmm on im2col columns at low resolution, implicit GEMMs at high resolution), fused
      epilogues, and one reduction from the per-sample weight gradient to the bank, selection and
      style gradients. Samples run in chunks under a workspace budget.
  "fused": no per-sample weights in memory; a program serves a group of samples and, per K step, mixes
      the bank tiles once for the whole group with a tensor-core dot, then runs the per-sample GEMMs as
      one batched dot on the mixed tiles (d from the same pass); dx the same way; the bank, selection and
      style gradients from per-sample gradient tiles that never leave the chip.

Layout: kernels of one strategy, then the config tables (shared with the static kernel report), then
the host launchers.
"""
from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

ACT_LINEAR = 0
ACT_LRELU = 1


@triton.jit
def _epilogue(acc, noise, bias, gain, clamp,
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


# ----------------------------------------------------------------------------------------------
# Strategy "weights": per-sample weights built once per call by one kernel, then tensor-core GEMMs.
#
# Per-sample weights Wt[b, o, r] = s[b, i] * sum_n a[b, n] W[n, o, i, t] are written tap-major,
# r = t * Cin + i, so that a K tile of the implicit GEMMs (and a row block of the im2col columns)
# lies inside one tap: the spatial shift and border mask are per pixel, not per element, and no
# division by k*k runs in a GEMM loop.
# ----------------------------------------------------------------------------------------------
@triton.jit
def _build_weights_kernel(
    Bank_ptr, A_ptr, S_ptr, Wt_ptr, D_ptr,
    B, Cin, Cout, N, eps,
    stride_bank_n, stride_bank_o, stride_ab, stride_an, stride_sb, stride_sc, stride_wb, stride_db,
    KK: tl.constexpr, DEMOD: tl.constexpr, N_PAD: tl.constexpr, GROUP_B: tl.constexpr, BLOCK_C: tl.constexpr,
    SPLIT_A: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per (output channel o, group of GROUP_B samples): the bank row W[:, o] is read once
    for the whole group and mixed for it by one tensor-core dot per tap, [GROUP_B, N] x [N, BLOCK_C].
    d[b, o] = rsqrt(sum_r Wt[b, o, r]^2 + eps) accumulates in the same pass, from the unrounded fp32 values.
    SPLIT_A: the softmax weights enter the 16-bit dot as hi + lo parts, so the mix keeps ~16 bits of a."""
    o = tl.program_id(0).to(tl.int64)
    offs_b = tl.program_id(1) * GROUP_B + tl.arange(0, GROUP_B)
    b_mask = offs_b < B
    offs_n = tl.arange(0, N_PAD)
    n_mask = offs_n < N
    a = tl.load(A_ptr + offs_b[:, None] * stride_ab + offs_n[None, :] * stride_an,
                mask=b_mask[:, None] & n_mask[None, :], other=0.0).to(tl.float32)
    a_hi = a.to(DOT_DTYPE)
    a_lo = (a - a_hi.to(tl.float32)).to(DOT_DTYPE)
    R = Cin * KK
    w_rows = Wt_ptr + offs_b.to(tl.int64)[:, None] * stride_wb + o * R
    bank_row = Bank_ptr + o * stride_bank_o
    sumsq = tl.zeros((GROUP_B,), dtype=tl.float32)
    for c0 in range(0, Cin, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_mask = offs_c < Cin
        bc_mask = b_mask[:, None] & c_mask[None, :]
        s = tl.load(S_ptr + offs_b[:, None] * stride_sb + offs_c[None, :] * stride_sc, mask=bc_mask,
                    other=0.0).to(tl.float32)
        for t in range(KK):
            # The taps of one channel block sit within (BLOCK_C * KK) bank elements: L1 serves the other taps.
            bank = tl.load(bank_row + offs_n[:, None] * stride_bank_n + offs_c[None, :] * KK + t,
                           mask=n_mask[:, None] & c_mask[None, :], other=0.0).to(DOT_DTYPE)
            mixed = tl.dot(a_hi, bank, input_precision=DOT_PRECISION)
            if SPLIT_A:
                mixed = tl.dot(a_lo, bank, mixed, input_precision=DOT_PRECISION)
            w = mixed * s
            if DEMOD:
                sumsq += tl.sum(w * w, axis=1)
            tl.store(w_rows + t * Cin + offs_c[None, :], w.to(Wt_ptr.dtype.element_ty), mask=bc_mask)
    if DEMOD:
        tl.store(D_ptr + offs_b * stride_db + o, 1.0 / tl.sqrt(sumsq + eps), mask=b_mask)


@triton.jit
def _im2col_kernel(
    X_ptr, Cols_ptr, Cin, H, W,
    stride_xb, stride_xc, stride_xh, stride_xw, stride_cb,
    KSIZE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Tap-major columns cols[b, t * Cin + i, p] = x[b, i, p + off(t)] (0 outside the image)."""
    KK: tl.constexpr = KSIZE * KSIZE
    PAD: tl.constexpr = KSIZE // 2
    P = H * W
    num_p = tl.cdiv(P, BLOCK_P)
    num_c = tl.cdiv(Cin, BLOCK_C)
    pid = tl.program_id(0)
    pid_p = pid % num_p
    pid_c = (pid // num_p) % num_c
    bt = pid // (num_p * num_c)
    t = bt % KK
    b = (bt // KK).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    ih = offs_p // W + (t // KSIZE - PAD)
    iw = offs_p % W + (t % KSIZE - PAD)
    p_in = (offs_p < P) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    c_mask = offs_c < Cin
    v = tl.load(X_ptr + b * stride_xb + offs_c[:, None] * stride_xc + (ih * stride_xh + iw * stride_xw)[None, :],
                mask=c_mask[:, None] & p_in[None, :], other=0.0)
    tl.store(Cols_ptr + b * stride_cb + (t * Cin + offs_c)[:, None] * P + offs_p[None, :], v,
             mask=c_mask[:, None] & (offs_p < P)[None, :])


@triton.jit
def _col2im_kernel(
    Cols_ptr, DX_ptr, Cin, H, W,
    stride_cb, stride_dxb, stride_dxc, stride_dxh, stride_dxw,
    KSIZE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """The adjoint of _im2col_kernel: dx[b, i, q] = sum_t dcols[b, t * Cin + i, q - off(t)], gathered (no atomics)."""
    KK: tl.constexpr = KSIZE * KSIZE
    PAD: tl.constexpr = KSIZE // 2
    P = H * W
    num_p = tl.cdiv(P, BLOCK_P)
    num_c = tl.cdiv(Cin, BLOCK_C)
    pid = tl.program_id(0)
    pid_p = pid % num_p
    pid_c = (pid // num_p) % num_c
    b = (pid // (num_p * num_c)).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_mask = offs_p < P
    c_mask = offs_c < Cin
    qh = offs_p // W
    qw = offs_p % W
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for t in range(KK):
        ph = qh - (t // KSIZE - PAD)
        pw = qw - (t % KSIZE - PAD)
        p_in = p_mask & (ph >= 0) & (ph < H) & (pw >= 0) & (pw < W)
        v = tl.load(Cols_ptr + b * stride_cb + (t * Cin + offs_c)[:, None] * P + (ph * W + pw)[None, :],
                    mask=c_mask[:, None] & p_in[None, :], other=0.0)
        acc += v.to(tl.float32)
    tl.store(DX_ptr + b * stride_dxb + offs_c[:, None] * stride_dxc + (qh * stride_dxh + qw * stride_dxw)[None, :],
             acc.to(DX_ptr.dtype.element_ty), mask=c_mask[:, None] & p_mask[None, :])


@triton.jit
def _epilogue_fwd_kernel(
    Conv_ptr, D_ptr, Bias_ptr, Noise_ptr, Y_ptr, Lin_ptr,
    Cout, H, W, gain, clamp,
    stride_cb, stride_db, stride_nb, stride_nc, stride_nh, stride_nw,
    stride_yb, stride_yc, stride_yh, stride_yw,
    DEMOD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_NOISE: tl.constexpr, ACT: tl.constexpr,
    HAS_CLAMP: tl.constexpr, SAVE_LIN: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """y = epilogue(d * conv) over a [Cout, pixels] tile of the batched GEMM's output conv [B, Cout, P];
    lin = d * conv is kept for the backward when the epilogue changes it."""
    P = H * W
    num_p = tl.cdiv(P, BLOCK_P)
    num_o = tl.cdiv(Cout, BLOCK_O)
    pid = tl.program_id(0)
    pid_p = pid % num_p
    pid_o = (pid // num_p) % num_o
    b = (pid // (num_p * num_o)).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_mask = offs_o < Cout
    mask = o_mask[:, None] & (offs_p < P)[None, :]
    oh = offs_p // W
    ow = offs_p % W
    acc = tl.load(Conv_ptr + b * stride_cb + offs_o[:, None] * P + offs_p[None, :], mask=mask, other=0.0)
    acc = acc.to(tl.float32)
    if DEMOD:
        acc = acc * tl.load(D_ptr + b * stride_db + offs_o, mask=o_mask, other=1.0)[:, None]
    y_offsets = offs_o[:, None] * stride_yc + (oh * stride_yh + ow * stride_yw)[None, :]
    if SAVE_LIN:
        tl.store(Lin_ptr + b * stride_yb + y_offsets, acc.to(Lin_ptr.dtype.element_ty), mask=mask)
    noise = 0.0
    if HAS_NOISE:
        noise = tl.load(Noise_ptr + b * stride_nb + offs_o[:, None] * stride_nc
                        + (oh * stride_nh + ow * stride_nw)[None, :], mask=mask, other=0.0).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(Bias_ptr + offs_o, mask=o_mask, other=0.0).to(tl.float32)[:, None]
    acc = _epilogue(acc, noise, bias, gain, clamp, HAS_NOISE, HAS_BIAS, ACT, HAS_CLAMP)
    tl.store(Y_ptr + b * stride_yb + y_offsets, acc.to(Y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_fwd_kernel(
    X_ptr, Wt_ptr, D_ptr, Bias_ptr, Noise_ptr, Y_ptr, Lin_ptr,
    Cin, Cout, H, W, gain, clamp,
    stride_xb, stride_xc, stride_xh, stride_xw, stride_wb, stride_db,
    stride_nb, stride_nc, stride_nh, stride_nw,
    stride_yb, stride_yc, stride_yh, stride_yw,
    KSIZE: tl.constexpr, DEMOD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_NOISE: tl.constexpr,
    ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, SAVE_LIN: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Implicit GEMM on per-sample weights: y[b, o, p] = epilogue(d * sum_{t,i} Wt[b, o, t*Cin+i] x[b, i, p+off(t)]).
    M = pixels, N = Cout, K = (tap, channel) in one flat loop so that it software-pipelines."""
    KK: tl.constexpr = KSIZE * KSIZE
    PAD: tl.constexpr = KSIZE // 2
    P = H * W
    R = Cin * KK
    num_p = tl.cdiv(P, BLOCK_P)
    num_o = tl.cdiv(Cout, BLOCK_O)
    pid = tl.program_id(0)
    # Pixel tiles vary fastest: the programs of one (sample, Cout tile) share its weight tile in L2.
    pid_p = pid % num_p
    pid_o = (pid // num_p) % num_o
    b = (pid // (num_p * num_o)).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    oh = offs_p // W
    ow = offs_p % W
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_mask = offs_o < Cout
    x_base = X_ptr + b * stride_xb
    w_base = Wt_ptr + b * stride_wb + offs_o[None, :] * R
    num_c = tl.cdiv(Cin, BLOCK_K)
    acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
    for kit in range(0, KK * num_c):
        t = kit // num_c
        offs_c = (kit - t * num_c) * BLOCK_K + tl.arange(0, BLOCK_K)
        c_mask = offs_c < Cin
        ih = oh + (t // KSIZE - PAD)
        iw = ow + (t % KSIZE - PAD)
        p_in = p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_tile = tl.load(x_base + (ih * stride_xh + iw * stride_xw)[:, None] + offs_c[None, :] * stride_xc,
                         mask=p_in[:, None] & c_mask[None, :], other=0.0)
        w_tile = tl.load(w_base + (t * Cin + offs_c)[:, None], mask=c_mask[:, None] & o_mask[None, :], other=0.0)
        acc = tl.dot(x_tile.to(DOT_DTYPE), w_tile.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    if DEMOD:
        acc = acc * tl.load(D_ptr + b * stride_db + offs_o, mask=o_mask, other=1.0)[None, :]
    out_mask = p_mask[:, None] & o_mask[None, :]
    y_offsets = offs_o[None, :] * stride_yc + (oh * stride_yh + ow * stride_yw)[:, None]
    if SAVE_LIN:
        tl.store(Lin_ptr + b * stride_yb + y_offsets, acc.to(Lin_ptr.dtype.element_ty), mask=out_mask)
    noise = 0.0
    if HAS_NOISE:
        noise = tl.load(Noise_ptr + b * stride_nb + offs_o[None, :] * stride_nc
                        + (oh * stride_nh + ow * stride_nw)[:, None], mask=out_mask, other=0.0).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(Bias_ptr + offs_o, mask=o_mask, other=0.0).to(tl.float32)[None, :]
    acc = _epilogue(acc, noise, bias, gain, clamp, HAS_NOISE, HAS_BIAS, ACT, HAS_CLAMP)
    tl.store(Y_ptr + b * stride_yb + y_offsets, acc.to(Y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _conv_dx_kernel(
    GZ_ptr, Wt_ptr, DX_ptr,
    Cin, Cout, H, W,
    stride_gzb, stride_gzc, stride_gzp, stride_wb, stride_dxb, stride_dxc, stride_dxh, stride_dxw,
    KSIZE: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx[b, i, q] = sum_{t,o} Wt[b, o, t*Cin+i] gz[b, o, q - off(t)]: the transposed implicit GEMM,
    M = pixels, N = Cin, K = (tap, output channel). gz [B, Cout, P] comes pixel-major (channel stride 1), so
    that a tap's shifted rows stay 16-byte aligned and the loads vectorise and pipeline."""
    KK: tl.constexpr = KSIZE * KSIZE
    PAD: tl.constexpr = KSIZE // 2
    P = H * W
    R = Cin * KK
    num_p = tl.cdiv(P, BLOCK_P)
    num_i = tl.cdiv(Cin, BLOCK_I)
    pid = tl.program_id(0)
    pid_p = pid % num_p
    pid_i = (pid // num_p) % num_i
    b = (pid // (num_p * num_i)).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    qh = offs_p // W
    qw = offs_p % W
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    i_mask = offs_i < Cin
    gz_base = GZ_ptr + b * stride_gzb
    w_base = Wt_ptr + b * stride_wb + offs_i[None, :]
    num_o = tl.cdiv(Cout, BLOCK_K)
    acc = tl.zeros((BLOCK_P, BLOCK_I), dtype=tl.float32)
    for kit in range(0, KK * num_o):
        t = kit // num_o
        offs_o = (kit - t * num_o) * BLOCK_K + tl.arange(0, BLOCK_K)
        o_mask = offs_o < Cout
        ph = qh - (t // KSIZE - PAD)
        pw = qw - (t % KSIZE - PAD)
        p_in = p_mask & (ph >= 0) & (ph < H) & (pw >= 0) & (pw < W)
        g_tile = tl.load(gz_base + (ph * W + pw)[:, None] * stride_gzp + offs_o[None, :] * stride_gzc,
                         mask=p_in[:, None] & o_mask[None, :], other=0.0)
        w_tile = tl.load(w_base + (offs_o * R + t * Cin)[:, None], mask=o_mask[:, None] & i_mask[None, :], other=0.0)
        acc = tl.dot(g_tile.to(DOT_DTYPE), w_tile.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    tl.store(DX_ptr + b * stride_dxb + offs_i[None, :] * stride_dxc + (qh * stride_dxh + qw * stride_dxw)[:, None],
             acc.to(DX_ptr.dtype.element_ty), mask=p_mask[:, None] & i_mask[None, :])


@triton.jit
def _conv_dweight_kernel(
    GZ_ptr, X_ptr, GW_ptr,
    Cin, Cout, H, W,
    stride_gzb, stride_gzc, stride_gzp, stride_xb, stride_xc, stride_xh, stride_xw, stride_gwb,
    KSIZE: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """The per-sample weight gradient gw[b, o, t*Cin+i] = sum_p gz[b, o, p] x[b, i, p + off(t)]:
    M = Cout, N = Cin (one tap per program), K = pixels."""
    KK: tl.constexpr = KSIZE * KSIZE
    PAD: tl.constexpr = KSIZE // 2
    P = H * W
    R = Cin * KK
    num_o = tl.cdiv(Cout, BLOCK_O)
    num_i = tl.cdiv(Cin, BLOCK_I)
    pid = tl.program_id(0)
    pid_o = pid % num_o
    pid_i = (pid // num_o) % num_i
    rest = pid // (num_o * num_i)
    t = rest % KK
    b = (rest // KK).to(tl.int64)
    dh = t // KSIZE - PAD
    dw = t % KSIZE - PAD
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_mask = offs_o < Cout
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    i_mask = offs_i < Cin
    gz_base = GZ_ptr + b * stride_gzb + offs_o[:, None] * stride_gzc
    x_base = X_ptr + b * stride_xb + offs_i[None, :] * stride_xc
    acc = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_mask = offs_p < P
        ih = offs_p // W + dh
        iw = offs_p % W + dw
        p_in = p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        g_tile = tl.load(gz_base + offs_p[None, :] * stride_gzp, mask=o_mask[:, None] & p_mask[None, :], other=0.0)
        x_tile = tl.load(x_base + (ih * stride_xh + iw * stride_xw)[:, None], mask=p_in[:, None] & i_mask[None, :],
                         other=0.0)
        acc = tl.dot(g_tile.to(DOT_DTYPE), x_tile.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    tl.store(GW_ptr + b * stride_gwb + offs_o[:, None] * R + (t * Cin + offs_i)[None, :],
             acc.to(GW_ptr.dtype.element_ty), mask=o_mask[:, None] & i_mask[None, :])


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


@triton.jit
def _reduce_dweights_kernel(
    GW_ptr, Bank_ptr, A_ptr, S_ptr, C_ptr, DBank_ptr, DAPart_ptr, DSPart_ptr,
    B, Cin, Cout, N, TAPS, O_PER_PROGRAM, accumulate,
    stride_gwb, stride_bank_n, stride_bank_o, stride_ab, stride_an, stride_sb, stride_sc, stride_cb,
    DEMOD: tl.constexpr, N_PAD: tl.constexpr,
    GROUP_B: tl.constexpr, BLOCK_C: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """From the per-sample weight gradient gw = dL/dWt (without demodulation) to the op's gradients, with the
    bank slice of each (o, channel block, tap) on chip. For every sample b of the group (all B <= GROUP_B):
      Wmix = a @ W                               (the mixed filter, recomputed by a tensor-core dot)
      G    = gw - c[b, o] * Wmix * s             (the demodulation term; c = d^2 sum_p g lin)
      dbank[n, o, i, t]  = sum_b a[b, n] G s     (tensor-core dot over the group)
      da[b, n]          += <W[n], G s>           (tensor-core dot, partial per program)
      ds[b, i]          += sum_{o, t} G Wmix     (partial per program)
    A program owns one channel block and a range of O_PER_PROGRAM output channels. dbank has the bank's
    (contiguous) layout."""
    num_c = tl.cdiv(Cin, BLOCK_C)
    pid = tl.program_id(0)
    pid_c = pid % num_c
    pid_os = pid // num_c
    offs_b = tl.arange(0, GROUP_B)
    b_mask = offs_b < B
    offs_n = tl.arange(0, N_PAD)
    n_mask = offs_n < N
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < Cin
    bc_mask = b_mask[:, None] & c_mask[None, :]
    nc_mask = n_mask[:, None] & c_mask[None, :]
    a = tl.load(A_ptr + offs_b[:, None] * stride_ab + offs_n[None, :] * stride_an,
                mask=b_mask[:, None] & n_mask[None, :], other=0.0).to(tl.float32)
    a = a.to(DOT_DTYPE)
    s = tl.load(S_ptr + offs_b[:, None] * stride_sb + offs_c[None, :] * stride_sc, mask=bc_mask,
                other=0.0).to(tl.float32)
    R = Cin * TAPS
    # Loop-invariant int32 offsets (a group's gradient stays under 2^31 elements, checked on the host); the
    # scalar part moves with (o, t). The bank gradient has the bank's layout.
    gw_offsets = offs_b[:, None] * stride_gwb + offs_c[None, :]
    bank_offsets = offs_n[:, None] * stride_bank_n + offs_c[None, :] * TAPS
    ds_acc = tl.zeros((GROUP_B, BLOCK_C), dtype=tl.float32)
    da_acc = tl.zeros((GROUP_B, N_PAD), dtype=tl.float32)
    o_start = pid_os * O_PER_PROGRAM
    o_end = tl.minimum(o_start + O_PER_PROGRAM, Cout)
    # One flat loop over (o, tap) with a run-time tap count: a constant 9-step inner loop was unrolled by the
    # backend and ran out of registers (255 and spills at every tile size).
    for j in range(o_start * TAPS, o_end * TAPS):
        o = j // TAPS
        t = j - o * TAPS
        bank = tl.load(Bank_ptr + (o * stride_bank_o + t) + bank_offsets, mask=nc_mask, other=0.0).to(DOT_DTYPE)
        wmix = tl.dot(a, bank, input_precision=DOT_PRECISION)
        g = tl.load(GW_ptr + (o * R + t * Cin) + gw_offsets, mask=bc_mask, other=0.0).to(tl.float32)
        if DEMOD:
            c_o = tl.load(C_ptr + offs_b * stride_cb + o, mask=b_mask, other=0.0)
            g = g - c_o[:, None] * wmix * s
        ds_acc += g * wmix
        dwmix = (g * s).to(DOT_DTYPE)
        dbank = tl.dot(tl.trans(a), dwmix, input_precision=DOT_PRECISION)
        da_acc = tl.dot(dwmix, tl.trans(bank), da_acc, input_precision=DOT_PRECISION)
        # accumulate is a run-time flag: the (predicated-off) load also anchors dbank's store layout; without
        # it the compiler rebuilt the offsets in the MMA layout and ran out of registers.
        dbank_ptrs = DBank_ptr + (o * stride_bank_o + t) + bank_offsets
        dbank += tl.load(dbank_ptrs, mask=nc_mask & (accumulate != 0), other=0.0)
        tl.store(dbank_ptrs, dbank.to(DBank_ptr.dtype.element_ty), mask=nc_mask)
    tl.store(DSPart_ptr + (pid_os * GROUP_B + offs_b).to(tl.int64)[:, None] * Cin + offs_c[None, :], ds_acc,
             mask=bc_mask)
    tl.store(DAPart_ptr + (pid.to(tl.int64) * GROUP_B + offs_b)[:, None] * N_PAD + offs_n[None, :], da_acc)


# ----------------------------------------------------------------------------------------------
# Strategy "fused": no per-sample weights in memory. A program serves a group of samples: per K step
# it reads the N bank tiles once, mixes them for the whole group with one tensor-core dot (the bank
# rows are the dot's M, so wgmma on sm_90), and runs the per-sample GEMMs as one batched dot on the
# mixed tiles. Offsets inside a group are int32 from one int64 base per group (the launchers check
# they fit).
# ----------------------------------------------------------------------------------------------
@triton.jit
def _group_selection(A_ptr, group_start, B, N, stride_ab, stride_an,
                     GROUP: tl.constexpr, MIX_COLS: tl.constexpr, N_PAD: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """The mix's right operand [N_PAD, MIX_COLS]: column j holds a[group_start + j % GROUP, :]. A tensor-core
    dot needs >= 16 columns; a group of 8 fills the second 8 with the 16-bit residual a - hi(a), so the mix
    keeps ~16 bits of a; further columns are zero."""
    SPLIT: tl.constexpr = MIX_COLS // GROUP
    offs_n = tl.arange(0, N_PAD)
    offs_split = tl.arange(0, SPLIT)
    offs_g = group_start + tl.arange(0, GROUP)
    a = tl.load(A_ptr + offs_g[None, None, :].to(tl.int64) * stride_ab + offs_n[:, None, None] * stride_an
                + offs_split[None, :, None] * 0,
                mask=(offs_g < B)[None, None, :] & (offs_n < N)[:, None, None], other=0.0)  # [N_PAD, SPLIT, G]
    hi = a.to(DOT_DTYPE).to(tl.float32)
    a = tl.where(offs_split[None, :, None] == 0, hi, tl.where(offs_split[None, :, None] == 1, a - hi, 0.0))
    return tl.reshape(a.to(DOT_DTYPE), (N_PAD, MIX_COLS))


@triton.jit
def _group_mix(bank, a_t, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
               GROUP: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """The group's mixed filters K[g, row, col] = sum_n a[g, n] bank[n, row, col] in fp32, from a bank tile
    loaded as [(row, col), N_PAD] and the selection operand of _group_selection."""
    mixed = tl.dot(bank.to(DOT_DTYPE), a_t, input_precision=DOT_PRECISION)         # [(row, col), MIX_COLS]
    SPLIT: tl.constexpr = a_t.shape[1] // GROUP
    if SPLIT > 1:
        mixed = tl.sum(tl.reshape(mixed, (ROWS * COLS, SPLIT, GROUP)), axis=1)
    return tl.permute(tl.reshape(mixed, (ROWS, COLS, GROUP)), (2, 0, 1))


@triton.jit
def _group_program(B, P, W, GROUP: tl.constexpr, BLOCK_P: tl.constexpr):
    """A group-kernel program's place: (channel tile, pixel tile, first sample of its group, the group's local
    sample indices and mask, its pixel tile's indices, mask, rows and columns). Groups vary fastest, so the
    programs that read one bank slice run together (L2 reuse)."""
    num_g = tl.cdiv(B, GROUP)
    num_p = tl.cdiv(P, BLOCK_P)
    pid = tl.program_id(0)
    pid_p = (pid // num_g) % num_p
    group_start = (pid % num_g) * GROUP
    offs_gl = tl.arange(0, GROUP)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    return (pid // (num_g * num_p), pid_p, group_start, offs_gl, group_start + offs_gl < B, offs_p, offs_p < P,
            offs_p // W, offs_p % W)


@triton.jit
def _fused_fwd_kernel(
    X_ptr, Bank_ptr, A_ptr, S_ptr, D_ptr, Bias_ptr, Noise_ptr, Y_ptr, Lin_ptr,
    B, Cin, Cout, H, W, N, eps, gain, clamp,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_bank_n, stride_bank_o,
    stride_ab, stride_an, stride_sb, stride_sc, stride_db,
    stride_nb, stride_nc, stride_nh, stride_nw,
    stride_yb, stride_yc, stride_yh, stride_yw,
    KSIZE: tl.constexpr, DEMOD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_NOISE: tl.constexpr,
    ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, SAVE_LIN: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    GROUP: tl.constexpr, MIX_COLS: tl.constexpr, N_PAD: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y = epilogue(d * conv(x, K[b] * s[b])) for a group of samples; d from the same pass.

    The reduction index r = ci * k*k + tap is the bank's own order, so a bank tile is BLOCK_O rows of
    BLOCK_K contiguous elements. Per K step: w[g, o, r] = s[g, ci(r)] * K[g, o, r] (fp32), sum of squares
    for d, then acc[g] += x_cols[g] @ w[g]^T in the compute dtype.
    """
    KK: tl.constexpr = KSIZE * KSIZE
    PAD: tl.constexpr = KSIZE // 2
    P = H * W
    R = Cin * KK
    pid_o, pid_p, group_start, offs_gl, g_mask, offs_p, p_mask, oh, ow = _group_program(B, P, W, GROUP, BLOCK_P)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_mask = offs_o < Cout
    offs_n = tl.arange(0, N_PAD)
    a_t = _group_selection(A_ptr, group_start, B, N, stride_ab, stride_an, GROUP, MIX_COLS, N_PAD, DOT_DTYPE)
    offs_c = tl.arange(0, BLOCK_O * BLOCK_K)        # bank tile rows (o, r), r fastest
    c_o = pid_o * BLOCK_O + offs_c // BLOCK_K
    c_r = offs_c % BLOCK_K
    x_group = X_ptr + group_start.to(tl.int64) * stride_xb
    s_group = S_ptr + group_start.to(tl.int64) * stride_sb

    acc = tl.zeros((GROUP, BLOCK_P, BLOCK_O), dtype=tl.float32)
    sumsq = tl.zeros((GROUP, BLOCK_O), dtype=tl.float32)
    for k0 in range(0, R, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < R
        ci = offs_k // KK
        tap = offs_k % KK
        bank = tl.load(Bank_ptr + offs_n[None, :] * stride_bank_n + (c_o * stride_bank_o + k0 + c_r)[:, None],
                       mask=(offs_n < N)[None, :] & ((c_o < Cout) & (k0 + c_r < R))[:, None], other=0.0)
        s = tl.load(s_group + offs_gl[:, None] * stride_sb + ci[None, :] * stride_sc,
                    mask=g_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)              # [G, K]
        w = _group_mix(bank, a_t, DOT_DTYPE, DOT_PRECISION, GROUP, BLOCK_O, BLOCK_K) * s[:, None, :]
        if DEMOD:
            sumsq += tl.sum(w * w, axis=2)
        ih = oh[:, None] + (tap // KSIZE - PAD)[None, :]
        iw = ow[:, None] + (tap % KSIZE - PAD)[None, :]
        pk_mask = p_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x = tl.load(x_group + offs_gl[:, None, None] * stride_xb
                    + (ci[None, :] * stride_xc + ih * stride_xh + iw * stride_xw)[None, :, :],
                    mask=g_mask[:, None, None] & pk_mask[None, :, :], other=0.0)                   # [G, P, K]
        acc = tl.dot(x.to(DOT_DTYPE), tl.permute(w.to(DOT_DTYPE), (0, 2, 1)), acc, input_precision=DOT_PRECISION)

    go_mask = g_mask[:, None] & o_mask[None, :]
    if DEMOD:
        d = 1.0 / tl.sqrt(sumsq + eps)
        acc = acc * tl.expand_dims(d, 1)
        if pid_p == 0:
            tl.store(D_ptr + (group_start + offs_gl)[:, None] * stride_db + offs_o[None, :], d, mask=go_mask)
    out_mask = g_mask[:, None, None] & (p_mask[:, None] & o_mask[None, :])[None, :, :]
    y_offsets = (offs_gl[:, None, None] * stride_yb
                 + (offs_o[None, :] * stride_yc + oh[:, None] * stride_yh + ow[:, None] * stride_yw)[None, :, :])
    y_group = group_start.to(tl.int64) * stride_yb
    if SAVE_LIN:
        tl.store(Lin_ptr + y_group + y_offsets, acc.to(Lin_ptr.dtype.element_ty), mask=out_mask)
    noise = 0.0
    if HAS_NOISE:
        noise = tl.load(Noise_ptr + group_start.to(tl.int64) * stride_nb + offs_gl[:, None, None] * stride_nb
                        + (offs_o[None, :] * stride_nc + oh[:, None] * stride_nh + ow[:, None] * stride_nw)[None, :, :],
                        mask=out_mask, other=0.0).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(Bias_ptr + offs_o, mask=o_mask, other=0.0).to(tl.float32)[None, None, :]
    acc = _epilogue(acc, noise, bias, gain, clamp, HAS_NOISE, HAS_BIAS, ACT, HAS_CLAMP)
    tl.store(Y_ptr + y_group + y_offsets, acc.to(Y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _fused_dx_kernel(
    GZ_ptr, X_ptr, Bank_ptr, A_ptr, S_ptr, DX_ptr, DS_ptr,
    B, Cin, Cout, H, W, N,
    stride_gzb, stride_gzc,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_bank_n, stride_bank_o,
    stride_ab, stride_an, stride_sb, stride_sc, stride_dsb,
    stride_dxb, stride_dxc, stride_dxh, stride_dxw,
    KSIZE: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    GROUP: tl.constexpr, MIX_COLS: tl.constexpr, N_PAD: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dxs[g] = conv_transpose(gz[g], K[g]); dx = dxs * s; ds[b, i] += sum_p dxs * x.

    gz = d * dL/dy_lin is contiguous [B, Cout, H, W]. The reduction index is (o, tap); a tap that reads x
    at p + off(tap) in the forward reads gz at p - off(tap) here. Bank tile rows are (i, (o, tap)).
    """
    KK: tl.constexpr = KSIZE * KSIZE
    PAD: tl.constexpr = KSIZE // 2
    P = H * W
    pid_i, _, group_start, offs_gl, g_mask, offs_p, p_mask, oh, ow = _group_program(B, P, W, GROUP, BLOCK_P)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    i_mask = offs_i < Cin
    offs_n = tl.arange(0, N_PAD)
    a_t = _group_selection(A_ptr, group_start, B, N, stride_ab, stride_an, GROUP, MIX_COLS, N_PAD, DOT_DTYPE)
    offs_c = tl.arange(0, BLOCK_I * BLOCK_K)        # bank tile rows (i, k), k fastest
    c_i = pid_i * BLOCK_I + offs_c // BLOCK_K
    c_k = offs_c % BLOCK_K
    gz_group = GZ_ptr + group_start.to(tl.int64) * stride_gzb

    k_total = Cout * KK
    acc = tl.zeros((GROUP, BLOCK_P, BLOCK_I), dtype=tl.float32)
    for k0 in range(0, k_total, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_total
        co = offs_k // KK
        tap = offs_k % KK
        kc = k0 + c_k
        bank = tl.load(Bank_ptr + offs_n[None, :] * stride_bank_n
                       + ((kc // KK) * stride_bank_o + c_i * KK + kc % KK)[:, None],
                       mask=(offs_n < N)[None, :] & ((c_i < Cin) & (kc < k_total))[:, None], other=0.0)
        w = _group_mix(bank, a_t, DOT_DTYPE, DOT_PRECISION, GROUP, BLOCK_I, BLOCK_K)       # [G, I, K]
        ih = oh[:, None] - (tap // KSIZE - PAD)[None, :]
        iw = ow[:, None] - (tap % KSIZE - PAD)[None, :]
        pk_mask = p_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        g = tl.load(gz_group + offs_gl[:, None, None] * stride_gzb
                    + (co[None, :] * stride_gzc + ih * W + iw)[None, :, :],
                    mask=g_mask[:, None, None] & pk_mask[None, :, :], other=0.0)                    # [G, P, K]
        acc = tl.dot(g.to(DOT_DTYPE), tl.permute(w.to(DOT_DTYPE), (0, 2, 1)), acc, input_precision=DOT_PRECISION)

    out_mask = g_mask[:, None, None] & (p_mask[:, None] & i_mask[None, :])[None, :, :]
    s = tl.load(S_ptr + group_start.to(tl.int64) * stride_sb + offs_gl[:, None] * stride_sb
                + offs_i[None, :] * stride_sc, mask=g_mask[:, None] & i_mask[None, :], other=0.0).to(tl.float32)
    pix = (offs_i[None, :] * stride_xc + oh[:, None] * stride_xh + ow[:, None] * stride_xw)[None, :, :]
    x = tl.load(X_ptr + group_start.to(tl.int64) * stride_xb + offs_gl[:, None, None] * stride_xb + pix,
                mask=out_mask, other=0.0).to(tl.float32)
    tl.atomic_add(DS_ptr + (group_start + offs_gl)[:, None] * stride_dsb + offs_i[None, :], tl.sum(acc * x, axis=1),
                  mask=g_mask[:, None] & i_mask[None, :], sem="relaxed")
    dx = acc * tl.expand_dims(s, 1)
    dx_offsets = (offs_i[None, :] * stride_dxc + oh[:, None] * stride_dxh + ow[:, None] * stride_dxw)[None, :, :]
    tl.store(DX_ptr + group_start.to(tl.int64) * stride_dxb + offs_gl[:, None, None] * stride_dxb + dx_offsets,
             dx.to(DX_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _fused_dbank_kernel(
    GZ_ptr, X_ptr, Bank_ptr, A_ptr, S_ptr, C_ptr, DBank_ptr, DAPart_ptr, DSR_ptr,
    B, Cin, Cout, H, W, N,
    stride_gzb, stride_gzc,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_bank_n, stride_bank_o,
    stride_ab, stride_an, stride_sb, stride_sc, stride_cb, stride_dap, stride_dab, stride_dsrb,
    KSIZE: tl.constexpr, DEMOD: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    GROUP: tl.constexpr, MIX_COLS: tl.constexpr, N_PAD: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Per (Cout tile, r tile): the per-sample filter gradients exist only on chip, one group at a time.

    G[g, o, r]  = sum_p gz[g, o, p] xs[g, r, p]  -  c[g, o] s[g, ci(r)]^2 K[g, o, r]   (2nd: demodulation)
    dbank[n]   += sum_g a[g, n] G[g]                    (one dot per group)
    da[g, n]    = <bank[n], G[g]>                       (one dot per group; per-program partials)
    dsr[g, r]  += -s[g, ci(r)] sum_o c[g, o] K[g, o, r]^2   (relaxed atomics; summed over taps on the host)
    with xs = x * s in im2col order and c = d^2 sum_p dL/dy_lin * y_lin.
    """
    KK: tl.constexpr = KSIZE * KSIZE
    PAD: tl.constexpr = KSIZE // 2
    P = H * W
    R = Cin * KK
    num_k = tl.cdiv(R, BLOCK_K)
    pid = tl.program_id(0)
    pid_k = pid % num_k
    pid_o = pid // num_k

    offs_gl = tl.arange(0, GROUP)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_mask = offs_o < Cout
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = offs_k < R
    ci = offs_k // KK
    tap = offs_k % KK
    dh = tap // KSIZE - PAD
    dw = tap % KSIZE - PAD
    offs_n = tl.arange(0, N_PAD)
    offs_c = tl.arange(0, BLOCK_O * BLOCK_K)        # tile rows (o, r), r fastest
    c_o = pid_o * BLOCK_O + offs_c // BLOCK_K
    c_r = pid_k * BLOCK_K + offs_c % BLOCK_K
    bank_offsets = offs_n[None, :] * stride_bank_n + (c_o * stride_bank_o + c_r)[:, None]
    bank_mask = (offs_n < N)[None, :] & ((c_o < Cout) & (c_r < R))[:, None]
    # The N bank tiles of this slice stay on chip across the whole batch.
    bank = tl.load(Bank_ptr + bank_offsets, mask=bank_mask, other=0.0).to(DOT_DTYPE)     # [(o, r), N_PAD]
    dbank = tl.zeros((BLOCK_O * BLOCK_K, N_PAD), dtype=tl.float32)
    ROWS: tl.constexpr = BLOCK_O * BLOCK_K

    # Group base pointers advance by GROUP batch strides: 64-bit pointer arithmetic, int32 offsets inside.
    x_group = X_ptr
    gz_group = GZ_ptr
    for group_start in range(0, B, GROUP):
        g_mask = group_start + offs_gl < B
        s = tl.load(S_ptr + (group_start + offs_gl)[:, None] * stride_sb + ci[None, :] * stride_sc,
                    mask=g_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        grad = tl.zeros((GROUP, BLOCK_O, BLOCK_K), dtype=tl.float32)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            p_mask = offs_p < P
            g = tl.load(gz_group + offs_gl[:, None, None] * stride_gzb
                        + (offs_o[:, None] * stride_gzc + offs_p[None, :])[None, :, :],
                        mask=g_mask[:, None, None] & (o_mask[:, None] & p_mask[None, :])[None, :, :], other=0.0)
            ih = (offs_p // W)[:, None] + dh[None, :]
            iw = (offs_p % W)[:, None] + dw[None, :]
            pk_mask = p_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x = tl.load(x_group + offs_gl[:, None, None] * stride_xb
                        + (ci[None, :] * stride_xc + ih * stride_xh + iw * stride_xw)[None, :, :],
                        mask=g_mask[:, None, None] & pk_mask[None, :, :], other=0.0)                # [G, P, K]
            xs = (x.to(tl.float32) * tl.expand_dims(s, 1)).to(DOT_DTYPE)
            grad = tl.dot(g.to(DOT_DTYPE), xs, grad, input_precision=DOT_PRECISION)
        a = tl.load(A_ptr + (group_start + offs_gl)[:, None] * stride_ab + offs_n[None, :] * stride_an,
                    mask=g_mask[:, None] & (offs_n < N)[None, :], other=0.0)                      # [G, N_PAD]
        if DEMOD:
            a_t = _group_selection(A_ptr, group_start, B, N, stride_ab, stride_an, GROUP, MIX_COLS, N_PAD,
                                   DOT_DTYPE)
            mixed = _group_mix(bank, a_t, DOT_DTYPE, DOT_PRECISION, GROUP, BLOCK_O, BLOCK_K)  # [G, O, K]
            c = tl.load(C_ptr + (group_start + offs_gl)[:, None] * stride_cb + offs_o[None, :],
                        mask=g_mask[:, None] & o_mask[None, :], other=0.0)
            c_mixed = tl.expand_dims(c, 2) * mixed
            grad = grad - c_mixed * tl.expand_dims(s * s, 1)
            tl.atomic_add(DSR_ptr + (group_start + offs_gl)[:, None] * stride_dsrb + offs_k[None, :],
                          -s * tl.sum(c_mixed * mixed, axis=1), mask=g_mask[:, None] & k_mask[None, :],
                          sem="relaxed")
        # Both contractions over the group run as dots with K = 2 * GROUP: each sample's gradient enters as
        # its 16-bit hi and lo parts (column 2g + j), which keeps ~16 bits of it and lets a group of 8 fill
        # the 16 a tensor-core dot needs.
        grad_t = tl.trans(tl.reshape(grad, (GROUP, ROWS)))                                      # [(o, r), G]
        hi = grad_t.to(DOT_DTYPE).to(tl.float32)
        pair = tl.reshape(tl.join(hi, grad_t - hi), (ROWS, 2 * GROUP)).to(DOT_DTYPE)
        a_pair = tl.reshape(tl.permute(tl.join(a, a), (0, 2, 1)), (2 * GROUP, N_PAD)).to(DOT_DTYPE)
        dbank = tl.dot(pair, a_pair, dbank, input_precision=DOT_PRECISION)
        da = tl.dot(tl.trans(bank), pair, input_precision=DOT_PRECISION)                        # [N_PAD, 2G]
        da = tl.sum(tl.reshape(da, (N_PAD, GROUP, 2)), axis=2)
        tl.store(DAPart_ptr + pid * stride_dap + (group_start + offs_gl)[None, :] * stride_dab + offs_n[:, None],
                 da, mask=g_mask[None, :] & (offs_n < N)[:, None])
        x_group += GROUP * stride_xb
        gz_group += GROUP * stride_gzb

    tl.store(DBank_ptr + bank_offsets, dbank.to(DBank_ptr.dtype.element_ty), mask=bank_mask)


# ----------------------------------------------------------------------------------------------
# Config tables: the single source of truth for what the dispatcher may launch. The static kernel
# report (benchmarks/kernel_report.py) compiles every entry for sm_80 and sm_90.
# ----------------------------------------------------------------------------------------------
# Strategy "weights". Not yet timed on a GPU: tiles follow the register budget and wgmma's shape
# (M a multiple of 64 per warpgroup); the predicted times are in benchmarks/NOTES.md.
# Build and reduce are keyed by GROUP_B, the samples that share one bank read (16, 32 or 64).
BUILD_CONFIGS = {
    16: dict(BLOCK_C=128, num_warps=8, num_stages=2),      # 4 warps spilled 8 B (fp32, N_PAD 32, sm_80)
    32: dict(BLOCK_C=128, num_warps=8, num_stages=2),
    64: dict(BLOCK_C=64, num_warps=8, num_stages=2),
}
REDUCE_CONFIGS = {
    16: dict(BLOCK_C=64, num_warps=8, num_stages=2),
    32: dict(BLOCK_C=64, num_warps=8, num_stages=2),
    64: dict(BLOCK_C=32, num_warps=8, num_stages=2),
}
# The implicit GEMMs on per-sample weights, keyed by pixels per sample (p64: P <= 64, else p128).
CONV_FWD_CONFIGS = {
    "p64": dict(BLOCK_P=64, BLOCK_O=128, BLOCK_K=64, num_warps=4, num_stages=3),
    "p128": dict(BLOCK_P=128, BLOCK_O=128, BLOCK_K=64, num_warps=8, num_stages=3),
}
CONV_DX_CONFIGS = {
    "p64": dict(BLOCK_P=64, BLOCK_I=128, BLOCK_K=64, num_warps=4, num_stages=3),
    "p128": dict(BLOCK_P=128, BLOCK_I=128, BLOCK_K=64, num_warps=8, num_stages=3),
}
CONV_DWEIGHT_CONFIGS = {
    "p64": dict(BLOCK_O=64, BLOCK_I=128, BLOCK_P=32, num_warps=4, num_stages=3),
    "p128": dict(BLOCK_O=128, BLOCK_I=128, BLOCK_P=64, num_warps=8, num_stages=3),
}
# Elementwise passes: im2col / col2im tiles [channels, pixels]; the epilogues [Cout, pixels].
COLUMNS_CONFIG = dict(BLOCK_C=32, BLOCK_P=128, num_warps=4, num_stages=1)
EPILOGUE_CONFIG = dict(BLOCK_O=32, BLOCK_P=128, num_warps=4, num_stages=1)

# Strategy "fused". Keyed by N_PAD (16: N <= 16, GigaGAN's 4 and 8; 32: N <= 32), then by pixels per sample
# (p16: 4x4 layers, p64: 8x8, larger). GROUP samples share one bank read and one mix; the accumulator is
# GROUP x BLOCK_P x BLOCK_O fp32, at most 16K elements (64 registers a thread at 8 warps) next to the
# mixed tile, the gathered activations and their offsets.
FUSED_FWD_CONFIGS = {
    n_pad: {
        "p16": dict(GROUP=16, BLOCK_P=16, BLOCK_O=32, BLOCK_K=16, num_warps=8, num_stages=2),
        "p64": dict(GROUP=8, BLOCK_P=64, BLOCK_O=32, BLOCK_K=16, num_warps=8, num_stages=2),
        "p128": dict(GROUP=8, BLOCK_P=64, BLOCK_O=32, BLOCK_K=16, num_warps=8, num_stages=2),
    }
    for n_pad in (16, 32)
}
# The bank-gradient kernel: the N bank tiles of a (Cout, r) slice and their fp32 gradient stay on chip
# across the batch, with one group's per-sample gradients at a time. Tall r tiles: a gz tile is reused
# across the whole r tile, while the activations' 9 taps come mostly from L1.
FUSED_DBANK_CONFIGS = {
    16: dict(GROUP=8, BLOCK_O=16, BLOCK_K=32, BLOCK_P=16, num_warps=8, num_stages=2),
    32: dict(GROUP=8, BLOCK_O=16, BLOCK_K=16, BLOCK_P=16, num_warps=8, num_stages=2),
}
MAX_FILTERS = max(FUSED_DBANK_CONFIGS)
# Alternatives the GPU check times beside the defaults (N <= 16, more than 16 pixels per sample), each spill-free
# in the static report: a deeper pipeline, wider output tiles (more MACs per gathered activation, the bank mixed
# once per 32 pixels), shorter bank-gradient r tiles. use_fused_tiles forces one.
FUSED_SWEEP = {
    "stages3": dict(fwd=dict(FUSED_FWD_CONFIGS[16]["p64"], num_stages=3), dbank=FUSED_DBANK_CONFIGS[16]),
    "o64": dict(fwd=dict(GROUP=8, BLOCK_P=32, BLOCK_O=64, BLOCK_K=16, num_warps=8, num_stages=2),
                dbank=FUSED_DBANK_CONFIGS[16]),
    "r16": dict(fwd=FUSED_FWD_CONFIGS[16]["p64"],
                dbank=dict(GROUP=8, BLOCK_O=16, BLOCK_K=16, BLOCK_P=32, num_warps=8, num_stages=2)),
}
_fused_tiles = threading.local()
# The largest group any fused config takes: what bounds its int32 in-group offsets.
MAX_FUSED_GROUP = max([c["GROUP"] for t in FUSED_FWD_CONFIGS.values() for c in t.values()]
                      + [c["GROUP"] for c in FUSED_DBANK_CONFIGS.values()]
                      + [c["GROUP"] for t in FUSED_SWEEP.values() for c in t.values()])


@contextlib.contextmanager
def use_fused_tiles(name: str):
    """Run the "fused" strategy with the FUSED_SWEEP tiles `name` (where they apply), e.g. to time them."""
    if name not in FUSED_SWEEP:
        raise ValueError(f"use_fused_tiles(name): expected one of {tuple(FUSED_SWEEP)}, got {name!r}")
    from .backend import thread_override
    with thread_override(_fused_tiles, name):
        yield


def fused_configs(N: int, P: int) -> tuple:
    """(forward, dx, bank-gradient) configs of the "fused" strategy for a bank of N filters and P pixels."""
    n_pad = bank_pad(N)
    fwd, dbank = pick_pixel_config(FUSED_FWD_CONFIGS[n_pad], P), FUSED_DBANK_CONFIGS[n_pad]
    forced = getattr(_fused_tiles, "value", None)
    if forced is not None and n_pad == 16 and P > 16:
        fwd, dbank = FUSED_SWEEP[forced]["fwd"], FUSED_SWEEP[forced]["dbank"]
    dx = {("BLOCK_I" if k == "BLOCK_O" else k): v for k, v in fwd.items()}
    return fwd, dx, dbank


def pick_pixel_config(table: dict, P: int) -> dict:
    if P <= 16:
        return table["p16"]
    if P <= 64:
        return table["p64"]
    return table["p128"]


_DOT_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def dot_dtype(dtype: torch.dtype):
    return _DOT_DTYPES[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 follows torch's cuDNN convolution default: TF32 unless the user turned it off.
    return "tf32" if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 else "ieee"


# ----------------------------------------------------------------------------------------------
# Host launchers. Inputs are validated by the caller (adaptive_modconv.py); here we only
# normalise layouts the kernels assume: a contiguous bank and contiguous gz.
# ----------------------------------------------------------------------------------------------
def _noise_strides(noise, shape):
    if noise is None:
        return (0, 0, 0, 0)
    return noise.expand(shape).stride()


def _flat_grid(*counts):
    n = 1
    for c in counts:
        n *= c
    return (n,)


# ---- strategy "weights" ------------------------------------------------------------------------
MAX_GROUP_B = max(BUILD_CONFIGS)


def group_size(B: int) -> int:
    """Samples that share one bank read in the build and reduce kernels (a tensor-core dot needs >= 16)."""
    return min(MAX_GROUP_B, max(16, triton.next_power_of_2(B)))


def bank_pad(N: int) -> int:
    return max(16, triton.next_power_of_2(N))


def _pixel_key(P: int) -> str:
    return "p64" if P <= 64 else "p128"


def build_weights(bank, a, s, wt, d, *, demodulate, eps):
    """wt [B, Cout, k*k*Cin] (tap-major, contiguous) <- s * (a @ bank); d [B, Cout] <- rsqrt(sum wt^2 + eps)."""
    N, Cout, Cin, k, _ = bank.shape
    B = a.shape[0]
    for b0 in range(0, B, MAX_GROUP_B):
        b1 = min(B, b0 + MAX_GROUP_B)
        gb = group_size(b1 - b0)
        cfg = BUILD_CONFIGS[gb]
        dd = d[b0:b1] if demodulate else wt
        _build_weights_kernel[(Cout, triton.cdiv(b1 - b0, gb))](
            bank, a[b0:b1], s[b0:b1], wt[b0:b1], dd, b1 - b0, Cin, Cout, N, float(eps),
            bank.stride(0), bank.stride(1), a.stride(0), a.stride(1), s.stride(0), s.stride(1), wt.stride(0),
            dd.stride(0), KK=k * k, DEMOD=demodulate, N_PAD=bank_pad(N), GROUP_B=gb,
            SPLIT_A=wt.dtype != torch.float32, DOT_DTYPE=dot_dtype(wt.dtype), DOT_PRECISION=dot_precision(wt.dtype),
            **cfg)


def im2col(x, k):
    """Tap-major columns [B, k*k*Cin, H*W] of x (any strides)."""
    B, Cin, H, W = x.shape
    cols = torch.empty((B, k * k * Cin, H * W), device=x.device, dtype=x.dtype)
    cfg = COLUMNS_CONFIG
    grid = _flat_grid(triton.cdiv(H * W, cfg["BLOCK_P"]), triton.cdiv(Cin, cfg["BLOCK_C"]), B * k * k)
    _im2col_kernel[grid](x, cols, Cin, H, W, *x.stride(), cols.stride(0), KSIZE=k, **cfg)
    return cols


def col2im(dcols, dx, k):
    """dx (any strides) <- the adjoint of im2col applied to dcols [B, k*k*Cin, H*W]."""
    B, Cin, H, W = dx.shape
    cfg = COLUMNS_CONFIG
    grid = _flat_grid(triton.cdiv(H * W, cfg["BLOCK_P"]), triton.cdiv(Cin, cfg["BLOCK_C"]), B)
    _col2im_kernel[grid](dcols, dx, Cin, H, W, dcols.stride(0), *dx.stride(), KSIZE=k, **cfg)


def _epilogue_constexprs(bias, noise, activation_code, clamp, save_lin, demodulate):
    return dict(DEMOD=demodulate, HAS_BIAS=bias is not None, HAS_NOISE=noise is not None, ACT=activation_code,
                HAS_CLAMP=clamp is not None, SAVE_LIN=save_lin)


def epilogue_forward(conv, d, bias, noise, y, lin, *, demodulate, activation_code, gain, clamp, save_lin):
    """y (and lin) <- epilogue(d * conv) for conv [B, Cout, H*W], the batched GEMM's output."""
    B, Cout, H, W = y.shape
    cfg = EPILOGUE_CONFIG
    grid = _flat_grid(triton.cdiv(H * W, cfg["BLOCK_P"]), triton.cdiv(Cout, cfg["BLOCK_O"]), B)
    _epilogue_fwd_kernel[grid](
        conv, d, bias if bias is not None else y, noise if noise is not None else y, y, lin if save_lin else y,
        Cout, H, W, float(gain), float(clamp if clamp is not None else 0.0), conv.stride(0), d.stride(0),
        *_noise_strides(noise, y.shape), *y.stride(),
        **_epilogue_constexprs(bias, noise, activation_code, clamp, save_lin, demodulate), **cfg)


def conv_forward(x, wt, d, bias, noise, y, lin, *, demodulate, activation_code, gain, clamp, save_lin):
    """y (and lin) <- epilogue(d * conv(x, wt)): the implicit GEMM on per-sample weights."""
    B, Cin, H, W = x.shape
    Cout = y.shape[1]
    k = math.isqrt(wt.shape[2] // Cin)
    cfg = CONV_FWD_CONFIGS[_pixel_key(H * W)]
    grid = _flat_grid(triton.cdiv(H * W, cfg["BLOCK_P"]), triton.cdiv(Cout, cfg["BLOCK_O"]), B)
    _conv_fwd_kernel[grid](
        x, wt, d, bias if bias is not None else y, noise if noise is not None else y, y, lin if save_lin else y,
        Cin, Cout, H, W, float(gain), float(clamp if clamp is not None else 0.0),
        *x.stride(), wt.stride(0), d.stride(0), *_noise_strides(noise, y.shape), *y.stride(), KSIZE=k,
        **_epilogue_constexprs(bias, noise, activation_code, clamp, save_lin, demodulate),
        DOT_DTYPE=dot_dtype(x.dtype), DOT_PRECISION=dot_precision(x.dtype), **cfg)


def conv_dx(gz, wt, dx):
    """dx (any strides) <- conv_transpose(gz, wt) for gz [B, Cout, H*W] (best pixel-major)."""
    B, Cin, H, W = dx.shape
    Cout = gz.shape[1]
    k = math.isqrt(wt.shape[2] // Cin)
    cfg = CONV_DX_CONFIGS[_pixel_key(H * W)]
    grid = _flat_grid(triton.cdiv(H * W, cfg["BLOCK_P"]), triton.cdiv(Cin, cfg["BLOCK_I"]), B)
    _conv_dx_kernel[grid](gz, wt, dx, Cin, Cout, H, W, *gz.stride(), wt.stride(0), *dx.stride(), KSIZE=k,
                          DOT_DTYPE=dot_dtype(dx.dtype), DOT_PRECISION=dot_precision(dx.dtype), **cfg)


def conv_dweight(gz, x, gw):
    """gw [B, Cout, k*k*Cin] <- the per-sample weight gradient sum_p gz x(p + off), gz [B, Cout, H*W]."""
    B, Cin, H, W = x.shape
    Cout = gz.shape[1]
    k = math.isqrt(gw.shape[2] // Cin)
    cfg = CONV_DWEIGHT_CONFIGS[_pixel_key(H * W)]
    grid = _flat_grid(triton.cdiv(Cout, cfg["BLOCK_O"]), triton.cdiv(Cin, cfg["BLOCK_I"]), k * k * B)
    _conv_dweight_kernel[grid](gz, x, gw, Cin, Cout, H, W, *gz.stride(), *x.stride(), gw.stride(0), KSIZE=k,
                               DOT_DTYPE=dot_dtype(x.dtype), DOT_PRECISION=dot_precision(x.dtype), **cfg)


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
    _epilogue_bwd_kernel[_flat_grid(num_p, num_o, B)](
        grad_y, lin, d, bias if bias is not None else gz, noise if noise is not None else gz, gz, cpart, bpart, npart,
        B, Cout, H, W, float(gain), float(clamp if clamp is not None else 0.0), *gz.stride(), *grad_y.stride(),
        *lin.stride(),
        *_noise_strides(noise, grad_y.shape), d.stride(0),
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


def reduce_dweights(gw, bank, a, s, c, dbank, da, ds, *, demodulate, accumulate):
    """dbank (+)= sum_b a[b] (G s); da [B, N] and ds [B, Cin] (fp32) <- this group's terms, where
    G = gw - c * wt is the per-sample weight gradient with its demodulation term. B <= MAX_GROUP_B."""
    N, Cout, Cin, k, _ = bank.shape
    B = gw.shape[0]
    gb = group_size(B)
    assert B <= gb, (B, gb)
    n_pad = bank_pad(N)
    cfg = REDUCE_CONFIGS[gb]
    num_c = triton.cdiv(Cin, cfg["BLOCK_C"])
    # ~4 programs per SM of a 132-SM card; each owns a channel block and a range of output channels.
    o_split = min(Cout, max(1, triton.cdiv(512, num_c)))
    o_per = triton.cdiv(Cout, o_split)
    o_split = triton.cdiv(Cout, o_per)
    da_part = torch.empty((num_c * o_split, gb, n_pad), device=gw.device, dtype=torch.float32)
    ds_part = torch.empty((o_split, gb, Cin), device=gw.device, dtype=torch.float32)
    _reduce_dweights_kernel[(num_c * o_split,)](
        gw, bank, a, s, c, dbank, da_part, ds_part, B, Cin, Cout, N, k * k, o_per, int(accumulate),
        gw.stride(0), bank.stride(0), bank.stride(1), a.stride(0), a.stride(1), s.stride(0), s.stride(1), c.stride(0),
        DEMOD=demodulate, N_PAD=n_pad, GROUP_B=gb, DOT_DTYPE=dot_dtype(gw.dtype), DOT_PRECISION=dot_precision(gw.dtype),
        **cfg)
    da.copy_(da_part.sum(0)[:B, :N])
    ds.copy_(ds_part.sum(0)[:B])


@dataclass(frozen=True)
class WeightsPlan:
    """How the "weights" strategy runs one call: the GEMM form, and sample chunks that fit the workspace.

    gemm "bmm": torch.bmm on tap-major im2col columns (columns no larger than the weights: low resolution);
    "implicit": the Triton implicit GEMMs read x directly (high resolution, where columns would be k*k x).
    keep: the forward's weights are kept for the backward (only if all of them fit in half the workspace);
    otherwise the backward rebuilds them chunk by chunk."""
    gemm: str
    forward_chunk: int
    backward_chunk: int
    keep: bool


def weights_unsupported(bank_shape) -> str | None:
    """Why the "weights" strategy cannot take this bank, or None. Its reduction indexes a group of 16 samples'
    weight gradients, and the bank, with int32 offsets."""
    N, Cout, Cin, k, _ = bank_shape
    per_sample = Cout * Cin * k * k
    if 16 * per_sample >= 2**31 or N * per_sample >= 2**31:
        return (f"per-sample weights of {per_sample} elements (Cout*Cin*k*k) exceed the 'weights' strategy's "
                f"int32 indexing (at most {(2**31 - 1) // 16}, and N times that at most 2^31 - 1)")
    return None


def reduce_group(bank_shape) -> int:
    """Samples per launch of the reduction: at most MAX_GROUP_B, and few enough for int32 offsets."""
    _, Cout, Cin, k, _ = bank_shape
    return min(MAX_GROUP_B, (2**31 - 1) // (Cout * Cin * k * k))


def _balanced(B: int, most: int) -> int:
    """The chunk size that splits B into the fewest chunks of at most `most`, evenly."""
    most = max(1, min(B, most))
    chunks = -(-B // most)
    return -(-B // chunks)


def plan_weights(x_shape, bank_shape, element_size: int, *, needs_grad: bool, keep: bool | None = None,
                 workspace: int | None = None, gemm: str | None = None) -> WeightsPlan:
    """keep=None decides whether to keep the weights (the forward); the backward passes what was kept."""
    B, Cin, H, W = x_shape
    _, Cout, _, k, _ = bank_shape
    if workspace is None:
        from .adaptive_modconv import workspace_bytes
        workspace = workspace_bytes()
    P, R = H * W, Cin * k * k
    gemm = gemm or ("bmm" if P <= Cout else "implicit")
    weights = Cout * R * element_size                               # one sample's weights (or their gradient)
    cols = R * P * element_size if gemm == "bmm" else 0             # one sample's im2col columns
    out = Cout * P * element_size if gemm == "bmm" else 0           # the batched GEMM's output before the epilogue
    if keep is None:
        keep = needs_grad and B * weights <= workspace // 2
    left = workspace - (B * weights if keep else 0)
    per_sample = cols + out + (0 if keep else weights)
    forward_chunk = _balanced(B, left // per_sample if per_sample else B)
    # Backward, per sample: the weights (unless kept) with the columns' gradient, then the columns with the
    # weight gradient; never all four at once.
    backward_chunk = _balanced(B, left // (weights + cols))
    return WeightsPlan(gemm, forward_chunk, backward_chunk, keep)


def weights_forward(x, bank, a, s, bias, noise, *, demodulate, eps, activation_code, gain, clamp, save_lin,
                    keep_weights, gemm=None):
    """Strategy "weights": returns (y, lin, d, wt) where wt holds the per-sample weights for the backward
    when the plan keeps them (else it is empty)."""
    bank = bank.contiguous()
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = bank.shape
    plan = plan_weights(x.shape, bank.shape, x.element_size(), needs_grad=keep_weights, gemm=gemm)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    y = torch.empty((B, Cout, H, W), device=x.device, dtype=x.dtype,
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    lin = torch.empty_like(y) if save_lin else y.new_empty((0,))
    d = (torch.empty if demodulate else torch.ones)((B, Cout), device=x.device, dtype=torch.float32)
    kept = torch.empty((B, Cout, k * k * Cin), device=x.device, dtype=x.dtype) if plan.keep else None
    noise_full = noise.expand(y.shape) if noise is not None else None
    # The implicit GEMM gathers a tap's shifted pixels: channels-last keeps those rows 16-byte aligned.
    x_cl = x.contiguous(memory_format=torch.channels_last) if plan.gemm == "implicit" else x
    epilogue = dict(demodulate=demodulate, activation_code=activation_code, gain=gain, clamp=clamp, save_lin=save_lin)
    for b0 in range(0, B, plan.forward_chunk):
        sl = slice(b0, min(B, b0 + plan.forward_chunk))
        wt = kept[sl] if plan.keep else torch.empty((sl.stop - b0, Cout, k * k * Cin), device=x.device, dtype=x.dtype)
        build_weights(bank, a[sl], s[sl], wt, d[sl], demodulate=demodulate, eps=eps)
        lin_sl = lin[sl] if save_lin else lin
        noise_sl = noise_full[sl] if noise is not None else None
        if plan.gemm == "bmm":
            conv = torch.bmm(wt, im2col(x[sl], k))
            epilogue_forward(conv, d[sl], bias, noise_sl, y[sl], lin_sl, **epilogue)
        else:
            conv_forward(x_cl[sl], wt, d[sl], bias, noise_sl, y[sl], lin_sl, **epilogue)
    return y, lin, d, kept if plan.keep else y.new_empty((0,))


def weights_backward(grad_y, x, bank, a, s, bias, noise, lin, d, kept, *, demodulate, activation_code, gain, clamp,
                     gemm=None):
    """Strategy "weights": returns dx, dbank (bank dtype), da [B, N] fp32, ds [B, Cin] fp32, dbias, dnoise."""
    bank = bank.contiguous()
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = bank.shape
    plan = plan_weights(x.shape, bank.shape, x.element_size(), needs_grad=True, keep=kept.numel() > 0, gemm=gemm)
    implicit = plan.gemm == "implicit"
    gz, c, dbias, dnoise = epilogue_backward(grad_y, lin, d, bias, noise, demodulate=demodulate,
                                             activation_code=activation_code, gain=gain, clamp=clamp,
                                             pixel_major=implicit)
    x_cl = x.contiguous(memory_format=torch.channels_last) if implicit else x
    dx = torch.empty_like(x)
    da = torch.empty((B, N), device=x.device, dtype=torch.float32)
    ds = torch.empty((B, Cin), device=x.device, dtype=torch.float32)
    group = reduce_group(bank.shape)
    groups = [g0 for b0 in range(0, B, plan.backward_chunk)
              for g0 in range(b0, min(B, b0 + plan.backward_chunk), group)]
    # One reduction launch writes the bank gradient in the bank's dtype; more accumulate in fp32.
    dbank = torch.empty_like(bank) if len(groups) == 1 or bank.dtype == torch.float32 else \
        torch.empty(bank.shape, device=bank.device, dtype=torch.float32)
    first = True
    for b0 in range(0, B, plan.backward_chunk):
        sl = slice(b0, min(B, b0 + plan.backward_chunk))
        if plan.keep:
            wt = kept[sl]
        else:
            wt = torch.empty((sl.stop - b0, Cout, k * k * Cin), device=x.device, dtype=x.dtype)
            build_weights(bank, a[sl], s[sl], wt, d[sl], demodulate=False, eps=1.0)
        if plan.gemm == "bmm":
            dcols = torch.bmm(wt.transpose(1, 2), gz[sl])
            del wt
            col2im(dcols, dx[sl], k)
            del dcols
            gw = torch.bmm(gz[sl], im2col(x[sl], k).transpose(1, 2))
        else:
            conv_dx(gz[sl], wt, dx[sl])
            del wt
            gw = torch.empty((sl.stop - b0, Cout, k * k * Cin), device=x.device, dtype=x.dtype)
            conv_dweight(gz[sl], x_cl[sl], gw)
        for g0 in range(b0, sl.stop, group):
            g1 = min(sl.stop, g0 + group)
            reduce_dweights(gw[g0 - b0:g1 - b0], bank, a[g0:g1], s[g0:g1], c[g0:g1], dbank, da[g0:g1], ds[g0:g1],
                            demodulate=demodulate, accumulate=not first)
            first = False
        del gw
    return dx, dbank.to(bank.dtype), da, ds, dbias, dnoise


# ---- strategy "fused" --------------------------------------------------------------------------
def fused_unsupported(x_shape, bank_shape) -> str | None:
    """Why the "fused" strategy cannot take this call, or None: offsets inside a group of samples and
    inside the bank are int32."""
    B, Cin, H, W = x_shape
    N, Cout, _, k, _ = bank_shape
    group = MAX_FUSED_GROUP
    if group * max(Cin, Cout) * H * W >= 2**31 or N * Cout * Cin * k * k >= 2**31:
        return (f"a group of {group} samples of {max(Cin, Cout) * H * W} elements, or a bank of "
                f"{N * Cout * Cin * k * k}, exceeds the 'fused' strategy's int32 offsets")
    return None


def _fused_constexprs(dtype, N, cfg):
    n_pad = bank_pad(N)
    return dict(DOT_DTYPE=dot_dtype(dtype), DOT_PRECISION=dot_precision(dtype), N_PAD=n_pad,
                MIX_COLS=max(16, cfg["GROUP"]), **cfg)


def fused_forward(x, bank, a, s, bias, noise, *, demodulate, eps, activation_code, gain, clamp, save_lin):
    """Returns (y, lin, d). lin = d * conv(x*s, K) before noise/bias/activation (empty unless save_lin)."""
    bank = bank.contiguous()
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = bank.shape
    # A channels_last input gets a channels_last output; the kernels take any strides.
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((B, Cout, H, W), device=x.device, dtype=x.dtype, memory_format=memory_format)
    lin = torch.empty_like(y) if save_lin else y.new_empty((0,))
    d = (torch.empty if demodulate else torch.ones)((B, Cout), device=x.device, dtype=torch.float32)
    cfg = fused_configs(N, H * W)[0]
    grid = _flat_grid(triton.cdiv(B, cfg["GROUP"]), triton.cdiv(H * W, cfg["BLOCK_P"]),
                      triton.cdiv(Cout, cfg["BLOCK_O"]))
    _fused_fwd_kernel[grid](
        x, bank, a, s, d, bias if bias is not None else y, noise if noise is not None else y, y,
        lin if save_lin else y,
        B, Cin, Cout, H, W, N, float(eps), float(gain), float(clamp if clamp is not None else 0.0),
        *x.stride(), bank.stride(0), bank.stride(1),
        a.stride(0), a.stride(1), s.stride(0), s.stride(1), d.stride(0),
        *_noise_strides(noise, y.shape), *y.stride(),
        KSIZE=k, DEMOD=demodulate, HAS_BIAS=bias is not None, HAS_NOISE=noise is not None,
        ACT=activation_code, HAS_CLAMP=clamp is not None, SAVE_LIN=save_lin, **_fused_constexprs(x.dtype, N, cfg),
    )
    return y, lin, d


def fused_backward(gz, c, x, bank, a, s, *, demodulate):
    """Gradients of the conv core given gz = d * dL/dy_lin and c = d^2 sum_p dL/dy_lin * y_lin.

    Returns dx, dbank (bank dtype), da [B,N] fp32 and ds [B,Cin] fp32.
    """
    bank = bank.contiguous()
    gz = gz.contiguous()
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = bank.shape
    R = Cin * k * k
    ds = torch.zeros((B, Cin), device=x.device, dtype=torch.float32)
    # The dx kernel also produces the style gradient's sum_p dxs * x, so it runs even when x needs no grad.
    dx = torch.empty_like(x)
    _, cfg, dbank_cfg = fused_configs(N, H * W)
    grid = _flat_grid(triton.cdiv(B, cfg["GROUP"]), triton.cdiv(H * W, cfg["BLOCK_P"]),
                      triton.cdiv(Cin, cfg["BLOCK_I"]))
    _fused_dx_kernel[grid](
        gz, x, bank, a, s, dx, ds, B, Cin, Cout, H, W, N,
        gz.stride(0), gz.stride(1), *x.stride(), bank.stride(0), bank.stride(1),
        a.stride(0), a.stride(1), s.stride(0), s.stride(1), ds.stride(0), *dx.stride(),
        KSIZE=k, **_fused_constexprs(x.dtype, N, cfg),
    )
    cfg = dbank_cfg
    num_programs = triton.cdiv(Cout, cfg["BLOCK_O"]) * triton.cdiv(R, cfg["BLOCK_K"])
    dbank = torch.empty_like(bank)
    da_part = torch.empty((num_programs, B, N), device=x.device, dtype=torch.float32)
    dsr = torch.zeros((B, R), device=x.device, dtype=torch.float32) if demodulate else ds
    constexprs = _fused_constexprs(x.dtype, N, cfg)
    _fused_dbank_kernel[(num_programs,)](
        gz, x, bank, a, s, c, dbank, da_part, dsr, B, Cin, Cout, H, W, N,
        gz.stride(0), gz.stride(1), *x.stride(), bank.stride(0), bank.stride(1),
        a.stride(0), a.stride(1), s.stride(0), s.stride(1), c.stride(0), da_part.stride(0), da_part.stride(1),
        dsr.stride(0), KSIZE=k, DEMOD=demodulate, **constexprs,
    )
    if demodulate:
        ds += dsr.view(B, Cin, k * k).sum(2)
    return dx, dbank, da_part.sum(0), ds
