"""Strategy "fused" of the Triton backend: no per-sample weights in memory.

A program serves a group of samples and, per K step, mixes the bank tiles once for the whole group with a
tensor-core dot, then runs the per-sample GEMMs as one batched dot on the mixed tiles (d from the same pass);
dx the same way; the bank, selection and style gradients from per-sample gradient tiles that never leave the
chip.

Layout: kernels, then the host launchers. The launch tables are in plans.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .plans import bank_pad, fused_configs
from .triton_common import (Partials, apply_epilogue, dot_dtype, dot_precision, epilogue_backward, finish_grads,
                            flat_grid, noise_strides, softmax_rows)


# ----------------------------------------------------------------------------------------------
# Strategy "fused": no per-sample weights in memory. A program serves a group of samples: per K step
# it reads the N bank tiles once, mixes them for the whole group with one tensor-core dot (the bank
# rows are the dot's M, so wgmma on sm_90), and runs the per-sample GEMMs as one batched dot on the
# mixed tiles. Offsets inside a group are int32 from one int64 base per group (the launchers check
# they fit).
# ----------------------------------------------------------------------------------------------
@triton.jit
def _group_selection(Logits_ptr, group_start, B, N, stride_lb, stride_ln,
                     GROUP: tl.constexpr, MIX_COLS: tl.constexpr, N_PAD: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """The mix's right operand [N_PAD, MIX_COLS]: column j holds a[group_start + j % GROUP, :], a = softmax of the
    logits (computed here: no softmax kernel runs). A tensor-core dot needs >= 16 columns; a group of 8 fills the
    second 8 with the 16-bit residual a - hi(a), so the mix keeps ~16 bits of a; further columns are zero."""
    SPLIT: tl.constexpr = MIX_COLS // GROUP
    offs_split = tl.arange(0, SPLIT)
    offs_g = group_start + tl.arange(0, GROUP)
    a_rows = softmax_rows(Logits_ptr, offs_g.to(tl.int64), offs_g < B, stride_lb, stride_ln, N, N_PAD)   # [G, N_PAD]
    a = tl.broadcast_to(tl.trans(a_rows)[:, None, :], (N_PAD, SPLIT, GROUP))                # [N_PAD, SPLIT, G]
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
    X_ptr, Bank_ptr, Logits_ptr, S_ptr, D_ptr, Bias_ptr, Noise_ptr, Y_ptr, Lin_ptr,
    B, Cin, Cout, H, W, N, eps, gain, clamp,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_bank_n, stride_bank_o,
    stride_lb, stride_ln, stride_sb, stride_sc, stride_db,
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
    a_t = _group_selection(Logits_ptr, group_start, B, N, stride_lb, stride_ln, GROUP, MIX_COLS, N_PAD, DOT_DTYPE)
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
    acc = apply_epilogue(acc, noise, bias, gain, clamp, HAS_NOISE, HAS_BIAS, ACT, HAS_CLAMP)
    tl.store(Y_ptr + y_group + y_offsets, acc.to(Y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _fused_dx_kernel(
    GZ_ptr, X_ptr, Bank_ptr, Logits_ptr, S_ptr, DX_ptr, DS_ptr,
    B, Cin, Cout, H, W, N,
    stride_gzb, stride_gzc,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_bank_n, stride_bank_o,
    stride_lb, stride_ln, stride_sb, stride_sc, stride_dsb,
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
    a_t = _group_selection(Logits_ptr, group_start, B, N, stride_lb, stride_ln, GROUP, MIX_COLS, N_PAD, DOT_DTYPE)
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
    GZ_ptr, X_ptr, Bank_ptr, Logits_ptr, S_ptr, C_ptr, DBank_ptr, DAPart_ptr, DSR_ptr,
    B, Cin, Cout, H, W, N,
    stride_gzb, stride_gzc,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_bank_n, stride_bank_o,
    stride_lb, stride_ln, stride_sb, stride_sc, stride_cb, stride_dap, stride_dab, stride_dsrb,
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
        a = softmax_rows(Logits_ptr, group_start + offs_gl, g_mask, stride_lb, stride_ln, N, N_PAD)  # [G, N_PAD]
        if DEMOD:
            a_t = _group_selection(Logits_ptr, group_start, B, N, stride_lb, stride_ln, GROUP, MIX_COLS, N_PAD,
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
# Host launchers. Inputs are validated by the caller (the op's public function).
# ----------------------------------------------------------------------------------------------
def _fused_constexprs(dtype, N, cfg):
    n_pad = bank_pad(N)
    return dict(DOT_DTYPE=dot_dtype(dtype), DOT_PRECISION=dot_precision(dtype), N_PAD=n_pad,
                MIX_COLS=max(16, cfg["GROUP"]), **cfg)


def fused_forward(x, bank, logits, s, bias, noise, *, demodulate, eps, activation_code, gain, clamp, save_lin):
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
    grid = flat_grid(triton.cdiv(B, cfg["GROUP"]), triton.cdiv(H * W, cfg["BLOCK_P"]),
                     triton.cdiv(Cout, cfg["BLOCK_O"]))
    _fused_fwd_kernel[grid](
        x, bank, logits, s, d, bias if bias is not None else y, noise if noise is not None else y, y,
        lin if save_lin else y,
        B, Cin, Cout, H, W, N, float(eps), float(gain), float(clamp if clamp is not None else 0.0),
        *x.stride(), bank.stride(0), bank.stride(1),
        logits.stride(0), logits.stride(1), s.stride(0), s.stride(1), d.stride(0),
        *noise_strides(noise, y.shape), *y.stride(),
        KSIZE=k, DEMOD=demodulate, HAS_BIAS=bias is not None, HAS_NOISE=noise is not None,
        ACT=activation_code, HAS_CLAMP=clamp is not None, SAVE_LIN=save_lin, **_fused_constexprs(x.dtype, N, cfg),
    )
    return y, lin, d


def fused_backward(grad_y, x, bank, logits, s, bias, noise, lin, d, *, demodulate, activation_code, gain, clamp):
    """Strategy "fused": returns dx, dbank, dlogits, ds, dbias and dnoise (empty when absent), each in its input's
    dtype."""
    bank = bank.contiguous()
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = bank.shape
    R = Cin * k * k
    n_pad = bank_pad(N)
    epi = epilogue_backward(grad_y, lin, d, bias, noise, demodulate=demodulate, activation_code=activation_code,
                            gain=gain, clamp=clamp)
    gz, c = epi.gz, epi.c
    # The style gradient's two atomic accumulators (sum_p dxs * x, and the demodulation's per-tap terms) share
    # one zero fill.
    accumulators = torch.zeros(B * (Cin + (R if demodulate else 0)), device=x.device, dtype=torch.float32)
    ds_acc = accumulators[:B * Cin].view(B, Cin)
    dsr = accumulators[B * Cin:].view(B, R) if demodulate else ds_acc
    # The dx kernel also produces the style gradient's sum_p dxs * x, so it runs even when x needs no grad.
    dx = torch.empty_like(x)
    _, cfg, dbank_cfg = fused_configs(N, H * W)
    grid = flat_grid(triton.cdiv(B, cfg["GROUP"]), triton.cdiv(H * W, cfg["BLOCK_P"]),
                     triton.cdiv(Cin, cfg["BLOCK_I"]))
    _fused_dx_kernel[grid](
        gz, x, bank, logits, s, dx, ds_acc, B, Cin, Cout, H, W, N,
        gz.stride(0), gz.stride(1), *x.stride(), bank.stride(0), bank.stride(1),
        logits.stride(0), logits.stride(1), s.stride(0), s.stride(1), ds_acc.stride(0), *dx.stride(),
        KSIZE=k, **_fused_constexprs(x.dtype, N, cfg),
    )
    cfg = dbank_cfg
    num_programs = triton.cdiv(Cout, cfg["BLOCK_O"]) * triton.cdiv(R, cfg["BLOCK_K"])
    dbank = torch.empty_like(bank)
    da_part = torch.empty((num_programs, B, n_pad), device=x.device, dtype=torch.float32)
    constexprs = _fused_constexprs(x.dtype, N, cfg)
    _fused_dbank_kernel[(num_programs,)](
        gz, x, bank, logits, s, c, dbank, da_part, dsr, B, Cin, Cout, H, W, N,
        gz.stride(0), gz.stride(1), *x.stride(), bank.stride(0), bank.stride(1),
        logits.stride(0), logits.stride(1), s.stride(0), s.stride(1), c.stride(0), da_part.stride(0),
        da_part.stride(1), dsr.stride(0), KSIZE=k, DEMOD=demodulate, **constexprs,
    )
    partials = Partials(da=da_part, ds=ds_acc.view(1, B, Cin), dsr=dsr if demodulate else None,
                        taps=k * k if demodulate else 0)
    dlogits, ds, dbias, dnoise = finish_grads(logits, s, bias, epi, partials)
    return dx, dbank, dlogits, ds, dbias, dnoise
