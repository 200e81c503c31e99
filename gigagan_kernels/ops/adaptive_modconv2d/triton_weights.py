"""Strategy "weights" of the Triton backend: per-sample weights built once per call by one kernel, then
tensor-core GEMMs, fused epilogues and one reduction.

Notation: a = softmax(select_logits) [B,N], s = style [B,Cin], K[b] = sum_n a[b,n] W[n],
d[b,o] = rsqrt(sum_{i,t} (K[b,o,i,t] s[b,i])^2 + eps). Since d scales output channels,
y_lin[b,o,p] = d[b,o] * conv(x[b], K[b] * s[b])[o,p], and demodulation is an output scale either way.

One kernel builds every sample's mixed, modulated weights once (the mix is a tensor-core dot over a group of
samples; d comes out of the same pass), then tensor-core GEMMs on them (torch.bmm on im2col columns at low
resolution, implicit GEMMs at high resolution), fused epilogues, and one reduction from the per-sample weight
gradient to the bank, selection and style gradients. Samples run in chunks under a workspace budget
(plans.plan_weights).

Layout: kernels, then the host launchers. The launch tables are in plans.py.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .plans import (BUILD_CONFIGS, COLUMNS_CONFIG, CONV_DWEIGHT_CONFIGS, CONV_DX_CONFIGS, CONV_FWD_CONFIGS,
                    EPILOGUE_CONFIG, MAX_GROUP_B, bank_pad, group_size, pixel_key, plan_weights, reduce_columns,
                    reduce_config, reduce_group)
from .triton_common import (Partials, apply_epilogue, dot_dtype, dot_precision, epilogue_backward, finish_grads,
                            flat_grid, noise_strides, softmax_rows)


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
    Bank_ptr, Logits_ptr, S_ptr, Wt_ptr, D_ptr,
    B, Cin, Cout, N, eps,
    stride_bank_n, stride_bank_o, stride_lb, stride_ln, stride_sb, stride_sc, stride_wb, stride_db,
    KK: tl.constexpr, DEMOD: tl.constexpr, N_PAD: tl.constexpr, GROUP_B: tl.constexpr, BLOCK_C: tl.constexpr,
    SPLIT_A: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program per (output channel o, group of GROUP_B samples): the bank row W[:, o] is read once
    for the whole group and mixed for it by one tensor-core dot per tap, [GROUP_B, N] x [N, BLOCK_C].
    d[b, o] = rsqrt(sum_r Wt[b, o, r]^2 + eps) accumulates in the same pass, from the unrounded fp32 values.
    a = softmax(select_logits) comes from the logits here (no softmax kernel runs).
    SPLIT_A: the softmax weights enter the 16-bit dot as hi + lo parts, so the mix keeps ~16 bits of a."""
    o = tl.program_id(0).to(tl.int64)
    offs_b = tl.program_id(1) * GROUP_B + tl.arange(0, GROUP_B)
    b_mask = offs_b < B
    offs_n = tl.arange(0, N_PAD)
    n_mask = offs_n < N
    a = softmax_rows(Logits_ptr, offs_b, b_mask, stride_lb, stride_ln, N, N_PAD)
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
    acc = apply_epilogue(acc, noise, bias, gain, clamp, HAS_NOISE, HAS_BIAS, ACT, HAS_CLAMP)
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
    acc = apply_epilogue(acc, noise, bias, gain, clamp, HAS_NOISE, HAS_BIAS, ACT, HAS_CLAMP)
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
def _reduce_dweights_kernel(
    GW_ptr, Bank_ptr, Logits_ptr, S_ptr, C_ptr, DBank_ptr, DAPart_ptr, DSPart_ptr,
    B, B_TOTAL, Cin, Cout, N, O_PER_PROGRAM, accumulate,
    stride_gwb, stride_bank_n, stride_bank_o, stride_lb, stride_ln, stride_sb, stride_sc, stride_cb,
    TAPS: tl.constexpr, TAPS_PAD: tl.constexpr, DEMOD: tl.constexpr, N_PAD: tl.constexpr,
    GROUP_B: tl.constexpr, BLOCK_C: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """From the per-sample weight gradient gw = dL/dWt (without demodulation) to the op's gradients. A program owns
    one block of BLOCK_C input channels and a range of O_PER_PROGRAM output channels, and takes one step per output
    channel o with every tap at once: columns j = (channel c, tap t), t fastest, which is the bank's own order, so
    each (o, c) "tap run" of TAPS bank elements loads contiguously ([BLOCK_C, TAPS_PAD] per filter, the padded taps
    masked) and the gradient's TAPS tap rows of BLOCK_C channels come in the same step. For every sample b of the
    group (all B <= GROUP_B), per step:
      Wmix = a @ W[:, o]                       (the mixed filter, recomputed by a tensor-core dot)
      G    = gw - c[b, o] * Wmix * s           (the demodulation term; c = d^2 sum_p g lin)
      dbank[n, o, c, t]  = sum_b a[b, n] G s   (tensor-core dot over the group)
      da[b, n]          += <W[n, o], G s>      (tensor-core dot, partial per program)
      ds[b, c]          += sum_t G Wmix        (partial per program)
    a = softmax(logits) is recomputed here. Logits_ptr, S_ptr and C_ptr start at this group's first sample; its
    da and ds partials go to rows [pid, ., :] of [programs, B_TOTAL, .] buffers at that sample (the launcher offsets
    the pointers), which _finish_grads_kernel sums."""
    num_c = tl.cdiv(Cin, BLOCK_C)
    pid = tl.program_id(0)
    pid_c = pid % num_c
    pid_os = pid // num_c
    offs_b = tl.arange(0, GROUP_B)
    b_mask = offs_b < B
    offs_n = tl.arange(0, N_PAD)
    n_mask = offs_n < N
    offs_j = tl.arange(0, BLOCK_C * TAPS_PAD)
    col_c = pid_c * BLOCK_C + offs_j // TAPS_PAD
    col_t = offs_j % TAPS_PAD
    j_mask = (col_c < Cin) & (col_t < TAPS)
    bj_mask = b_mask[:, None] & j_mask[None, :]
    nj_mask = n_mask[:, None] & j_mask[None, :]
    a = softmax_rows(Logits_ptr, offs_b, b_mask, stride_lb, stride_ln, N, N_PAD).to(DOT_DTYPE)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    bc_mask = b_mask[:, None] & (offs_c < Cin)[None, :]
    s_c = tl.load(S_ptr + offs_b[:, None] * stride_sb + offs_c[None, :] * stride_sc, mask=bc_mask,
                  other=0.0).to(tl.float32)                                                 # [GROUP_B, BLOCK_C]
    R = Cin * TAPS
    # Loop-invariant int32 offsets (a group's gradient and the bank stay under 2^31 elements, checked on the host);
    # the scalar part moves with o. The bank gradient has the bank's layout; gw is tap-major (r = t * Cin + c).
    bank_offsets = offs_n[:, None] * stride_bank_n + (col_c * TAPS + col_t)[None, :]
    gw_offsets = offs_b[:, None] * stride_gwb + (col_t * Cin + col_c)[None, :]
    ds_acc = tl.zeros((GROUP_B, BLOCK_C), dtype=tl.float32)
    da_acc = tl.zeros((GROUP_B, N_PAD), dtype=tl.float32)
    o_start = pid_os * O_PER_PROGRAM
    o_end = tl.minimum(o_start + O_PER_PROGRAM, Cout)
    for o in range(o_start, o_end):
        bank = tl.load(Bank_ptr + o * stride_bank_o + bank_offsets, mask=nj_mask, other=0.0).to(DOT_DTYPE)
        wmix = tl.dot(a, bank, input_precision=DOT_PRECISION)
        g = tl.load(GW_ptr + o * R + gw_offsets, mask=bj_mask, other=0.0).to(tl.float32)
        # s per column: each channel's s repeated over its taps (a broadcast, not a loop-carried tile).
        s = tl.reshape(tl.broadcast_to(s_c[:, :, None], (GROUP_B, BLOCK_C, TAPS_PAD)), (GROUP_B, BLOCK_C * TAPS_PAD))
        if DEMOD:
            c_o = tl.load(C_ptr + offs_b * stride_cb + o, mask=b_mask, other=0.0)
            g = g - c_o[:, None] * wmix * s
        ds_acc += tl.sum(tl.reshape(g * wmix, (GROUP_B, BLOCK_C, TAPS_PAD)), axis=2)
        dwmix = (g * s).to(DOT_DTYPE)
        dbank = tl.dot(tl.trans(a), dwmix, input_precision=DOT_PRECISION)
        da_acc = tl.dot(dwmix, tl.trans(bank), da_acc, input_precision=DOT_PRECISION)
        # accumulate is a run-time flag: the (predicated-off) load also anchors dbank's store layout; without
        # it the compiler rebuilt the offsets in the MMA layout and ran out of registers.
        dbank_ptrs = DBank_ptr + o * stride_bank_o + bank_offsets
        dbank += tl.load(dbank_ptrs, mask=nj_mask & (accumulate != 0), other=0.0)
        tl.store(dbank_ptrs, dbank.to(DBank_ptr.dtype.element_ty), mask=nj_mask)
    tl.store(DSPart_ptr + (pid_os.to(tl.int64) * B_TOTAL + offs_b)[:, None] * Cin + offs_c[None, :], ds_acc,
             mask=bc_mask)
    tl.store(DAPart_ptr + (pid.to(tl.int64) * B_TOTAL + offs_b)[:, None] * N_PAD + offs_n[None, :], da_acc,
             mask=b_mask[:, None])


# ----------------------------------------------------------------------------------------------
# Host launchers. Inputs are validated by the caller (the op's public function); here we only
# normalise layouts the kernels assume: a contiguous bank and contiguous gz.
# ----------------------------------------------------------------------------------------------
def build_weights(bank, logits, s, wt, d, *, demodulate, eps):
    """wt [B, Cout, k*k*Cin] (tap-major, contiguous) <- s * (softmax(logits) @ bank); d [B, Cout] <- rsqrt(sum wt^2
    + eps)."""
    N, Cout, Cin, k, _ = bank.shape
    B = logits.shape[0]
    for b0 in range(0, B, MAX_GROUP_B):
        b1 = min(B, b0 + MAX_GROUP_B)
        gb = group_size(b1 - b0)
        cfg = BUILD_CONFIGS[gb]
        dd = d[b0:b1] if demodulate else wt
        _build_weights_kernel[(Cout, triton.cdiv(b1 - b0, gb))](
            bank, logits[b0:b1], s[b0:b1], wt[b0:b1], dd, b1 - b0, Cin, Cout, N, float(eps),
            bank.stride(0), bank.stride(1), logits.stride(0), logits.stride(1), s.stride(0), s.stride(1), wt.stride(0),
            dd.stride(0), KK=k * k, DEMOD=demodulate, N_PAD=bank_pad(N), GROUP_B=gb,
            SPLIT_A=wt.dtype != torch.float32, DOT_DTYPE=dot_dtype(wt.dtype), DOT_PRECISION=dot_precision(wt.dtype),
            **cfg)


def im2col(x, k):
    """Tap-major columns [B, k*k*Cin, H*W] of x (any strides)."""
    B, Cin, H, W = x.shape
    cols = torch.empty((B, k * k * Cin, H * W), device=x.device, dtype=x.dtype)
    cfg = COLUMNS_CONFIG
    grid = flat_grid(triton.cdiv(H * W, cfg["BLOCK_P"]), triton.cdiv(Cin, cfg["BLOCK_C"]), B * k * k)
    _im2col_kernel[grid](x, cols, Cin, H, W, *x.stride(), cols.stride(0), KSIZE=k, **cfg)
    return cols


def col2im(dcols, dx, k):
    """dx (any strides) <- the adjoint of im2col applied to dcols [B, k*k*Cin, H*W]."""
    B, Cin, H, W = dx.shape
    cfg = COLUMNS_CONFIG
    grid = flat_grid(triton.cdiv(H * W, cfg["BLOCK_P"]), triton.cdiv(Cin, cfg["BLOCK_C"]), B)
    _col2im_kernel[grid](dcols, dx, Cin, H, W, dcols.stride(0), *dx.stride(), KSIZE=k, **cfg)


def _epilogue_constexprs(bias, noise, activation_code, clamp, save_lin, demodulate):
    return dict(DEMOD=demodulate, HAS_BIAS=bias is not None, HAS_NOISE=noise is not None, ACT=activation_code,
                HAS_CLAMP=clamp is not None, SAVE_LIN=save_lin)


def epilogue_forward(conv, d, bias, noise, y, lin, *, demodulate, activation_code, gain, clamp, save_lin):
    """y (and lin) <- epilogue(d * conv) for conv [B, Cout, H*W], the batched GEMM's output."""
    B, Cout, H, W = y.shape
    cfg = EPILOGUE_CONFIG
    grid = flat_grid(triton.cdiv(H * W, cfg["BLOCK_P"]), triton.cdiv(Cout, cfg["BLOCK_O"]), B)
    _epilogue_fwd_kernel[grid](
        conv, d, bias if bias is not None else y, noise if noise is not None else y, y, lin if save_lin else y,
        Cout, H, W, float(gain), float(clamp if clamp is not None else 0.0), conv.stride(0), d.stride(0),
        *noise_strides(noise, y.shape), *y.stride(),
        **_epilogue_constexprs(bias, noise, activation_code, clamp, save_lin, demodulate), **cfg)


def conv_forward(x, wt, d, bias, noise, y, lin, *, demodulate, activation_code, gain, clamp, save_lin):
    """y (and lin) <- epilogue(d * conv(x, wt)): the implicit GEMM on per-sample weights."""
    B, Cin, H, W = x.shape
    Cout = y.shape[1]
    k = math.isqrt(wt.shape[2] // Cin)
    cfg = CONV_FWD_CONFIGS[pixel_key(H * W)]
    grid = flat_grid(triton.cdiv(H * W, cfg["BLOCK_P"]), triton.cdiv(Cout, cfg["BLOCK_O"]), B)
    _conv_fwd_kernel[grid](
        x, wt, d, bias if bias is not None else y, noise if noise is not None else y, y, lin if save_lin else y,
        Cin, Cout, H, W, float(gain), float(clamp if clamp is not None else 0.0),
        *x.stride(), wt.stride(0), d.stride(0), *noise_strides(noise, y.shape), *y.stride(), KSIZE=k,
        **_epilogue_constexprs(bias, noise, activation_code, clamp, save_lin, demodulate),
        DOT_DTYPE=dot_dtype(x.dtype), DOT_PRECISION=dot_precision(x.dtype), **cfg)


def conv_dx(gz, wt, dx):
    """dx (any strides) <- conv_transpose(gz, wt) for gz [B, Cout, H*W] (best pixel-major)."""
    B, Cin, H, W = dx.shape
    Cout = gz.shape[1]
    k = math.isqrt(wt.shape[2] // Cin)
    cfg = CONV_DX_CONFIGS[pixel_key(H * W)]
    grid = flat_grid(triton.cdiv(H * W, cfg["BLOCK_P"]), triton.cdiv(Cin, cfg["BLOCK_I"]), B)
    _conv_dx_kernel[grid](gz, wt, dx, Cin, Cout, H, W, *gz.stride(), wt.stride(0), *dx.stride(), KSIZE=k,
                          DOT_DTYPE=dot_dtype(dx.dtype), DOT_PRECISION=dot_precision(dx.dtype), **cfg)


def conv_dweight(gz, x, gw):
    """gw [B, Cout, k*k*Cin] <- the per-sample weight gradient sum_p gz x(p + off), gz [B, Cout, H*W]."""
    B, Cin, H, W = x.shape
    Cout = gz.shape[1]
    k = math.isqrt(gw.shape[2] // Cin)
    cfg = CONV_DWEIGHT_CONFIGS[pixel_key(H * W)]
    grid = flat_grid(triton.cdiv(Cout, cfg["BLOCK_O"]), triton.cdiv(Cin, cfg["BLOCK_I"]), k * k * B)
    _conv_dweight_kernel[grid](gz, x, gw, Cin, Cout, H, W, *gz.stride(), *x.stride(), gw.stride(0), KSIZE=k,
                               DOT_DTYPE=dot_dtype(x.dtype), DOT_PRECISION=dot_precision(x.dtype), **cfg)


def reduce_layout(bank_shape, B: int, element_size: int) -> tuple:
    """(group size, constexprs, programs, output-channel splits, output channels per program) of the reduction for
    a batch of B: one layout for every launch of a call, so that their da and ds partials fill the same rows."""
    N, Cout, Cin, k, _ = bank_shape
    gb = group_size(min(B, reduce_group(bank_shape)))
    taps_pad, block_c = reduce_columns(k, gb, bank_pad(N), element_size)
    num_c = triton.cdiv(Cin, block_c)
    # ~4 programs per SM of a 132-SM card; each owns a channel block and a range of output channels.
    o_split = min(Cout, max(1, triton.cdiv(512, num_c)))
    o_per = triton.cdiv(Cout, o_split)
    o_split = triton.cdiv(Cout, o_per)
    cfg = dict(reduce_config(gb, bank_pad(N), element_size), TAPS=k * k, TAPS_PAD=taps_pad, BLOCK_C=block_c)
    del cfg["BLOCK_J"]
    return gb, cfg, num_c * o_split, o_split, o_per


def reduce_dweights(gw, bank, logits, s, c, dbank, partials: Partials, b0: int, *, demodulate, accumulate):
    """dbank (+)= sum_b a[b] (G s) over samples [b0, b0 + len(gw)), and their da and ds partials into `partials`,
    where G = gw - c * wt is the per-sample weight gradient with its demodulation term."""
    N, Cout, Cin, k, _ = bank.shape
    B = gw.shape[0]
    B_total = partials.da.shape[1]
    gb, cfg, programs, o_split, o_per = reduce_layout(bank.shape, B_total, gw.element_size())
    assert B <= gb, (B, gb)
    b1 = b0 + B
    _reduce_dweights_kernel[(programs,)](
        gw, bank, logits[b0:b1], s[b0:b1], c[b0:b1], dbank, partials.da[:, b0:], partials.ds[:, b0:], B, B_total,
        Cin, Cout, N, o_per, int(accumulate),
        gw.stride(0), bank.stride(0), bank.stride(1), logits.stride(0), logits.stride(1), s.stride(0), s.stride(1),
        c.stride(0), DEMOD=demodulate, N_PAD=bank_pad(N), GROUP_B=gb, DOT_DTYPE=dot_dtype(gw.dtype),
        DOT_PRECISION=dot_precision(gw.dtype), **cfg)


def weights_forward(x, bank, logits, s, bias, noise, *, demodulate, eps, activation_code, gain, clamp, save_lin,
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
        build_weights(bank, logits[sl], s[sl], wt, d[sl], demodulate=demodulate, eps=eps)
        lin_sl = lin[sl] if save_lin else lin
        noise_sl = noise_full[sl] if noise is not None else None
        if plan.gemm == "bmm":
            conv = torch.bmm(wt, im2col(x[sl], k))
            epilogue_forward(conv, d[sl], bias, noise_sl, y[sl], lin_sl, **epilogue)
        else:
            conv_forward(x_cl[sl], wt, d[sl], bias, noise_sl, y[sl], lin_sl, **epilogue)
    return y, lin, d, kept if plan.keep else y.new_empty((0,))


def weights_backward(grad_y, x, bank, logits, s, bias, noise, lin, d, kept, *, demodulate, activation_code, gain,
                     clamp, gemm=None):
    """Strategy "weights": returns dx, dbank, dlogits, ds, dbias and dnoise (empty when absent), each in its input's
    dtype."""
    bank = bank.contiguous()
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = bank.shape
    plan = plan_weights(x.shape, bank.shape, x.element_size(), needs_grad=True, keep=kept.numel() > 0, gemm=gemm)
    implicit = plan.gemm == "implicit"
    epi = epilogue_backward(grad_y, lin, d, bias, noise, demodulate=demodulate, activation_code=activation_code,
                            gain=gain, clamp=clamp, pixel_major=implicit)
    gz, c = epi.gz, epi.c
    x_cl = x.contiguous(memory_format=torch.channels_last) if implicit else x
    dx = torch.empty_like(x)
    _, _, programs, o_split, _ = reduce_layout(bank.shape, B, x.element_size())
    partials = Partials(da=torch.empty((programs, B, bank_pad(N)), device=x.device, dtype=torch.float32),
                        ds=torch.empty((o_split, B, Cin), device=x.device, dtype=torch.float32))
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
            build_weights(bank, logits[sl], s[sl], wt, d[sl], demodulate=False, eps=1.0)
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
            reduce_dweights(gw[g0 - b0:g1 - b0], bank, logits, s, c, dbank, partials, g0, demodulate=demodulate,
                            accumulate=not first)
            first = False
        del gw
    dlogits, ds, dbias, dnoise = finish_grads(logits, s, bias, epi, partials)
    return dx, dbank.to(bank.dtype), dlogits, ds, dbias, dnoise
