"""Triton kernels for sample-adaptive kernel-selection modulated convolution.

Notation (SPEC §2): a = softmax(select_logits) [B,N], s = style [B,Cin],
K[b] = sum_n a[b,n] W[n], d[b,o] = rsqrt(sum_{i,t} (K[b,o,i,t] s[b,i])^2 + eps).
Because s scales input channels and d scales output channels,

    y_lin[b,o,p] = d[b,o] * sum_{i,t} K[b,o,i,t] * (s[b,i] x[b,i,p+off(t)])

so every kernel mixes the N bank tiles with a[b] in registers inside its GEMM
loop and modulates the *activations*; no [B,Cout,Cin,k,k] tensor is ever
written. The reduction index of the implicit GEMMs is the flattened (channel,
tap) pair, which is the bank's own contiguous order, so bank tiles load
contiguously without a repack.

Kernels, in order: demodulation coefficients, forward implicit GEMM with the
fused epilogue, input gradient (transposed implicit GEMM), and the bank /
selection / style gradient. Host launchers follow, then the config table that
the dispatcher and the static kernel report share.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

ACT_LINEAR = 0
ACT_LRELU = 1


@triton.jit
def _mixed_bank_tile(Bank_ptr, A_row_ptr, stride_an, N, stride_bank_n, offsets, mask):
    """sum_n a[b,n] * bank[n][offsets] in fp32: the selected filter, mixed in registers."""
    mixed = tl.zeros(offsets.shape, dtype=tl.float32)
    for n in range(N):
        a_n = tl.load(A_row_ptr + n * stride_an)
        tile = tl.load(Bank_ptr + n * stride_bank_n + offsets, mask=mask, other=0.0)
        mixed += a_n * tile.to(tl.float32)
    return mixed


@triton.jit
def _demod_kernel(
    Bank_ptr, A_ptr, S_ptr, D_ptr,
    Cin, Cout, N, eps,
    stride_bank_n, stride_bank_o,
    stride_ab, stride_an, stride_sb, stride_sc, stride_db,
    KK: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """d[b,o] = rsqrt(sum_{i,t} (K[b,o,i,t] s[b,i])^2 + eps), without materialising K."""
    pid_co = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)  # int64 only where it multiplies a batch stride
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_mask = offs_co < Cout
    k_total = Cin * KK
    sumsq = tl.zeros((BLOCK_CO,), dtype=tl.float32)
    for k0 in range(0, k_total, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_total
        s = tl.load(S_ptr + b * stride_sb + (offs_k // KK) * stride_sc, mask=k_mask, other=0.0).to(tl.float32)
        offsets = offs_co[:, None] * stride_bank_o + offs_k[None, :]
        mixed = _mixed_bank_tile(Bank_ptr, A_ptr + b * stride_ab, stride_an, N, stride_bank_n,
                                 offsets, co_mask[:, None] & k_mask[None, :])
        modulated = mixed * s[None, :]
        sumsq += tl.sum(modulated * modulated, axis=1)
    tl.store(D_ptr + b * stride_db + offs_co, 1.0 / tl.sqrt(sumsq + eps), mask=co_mask)


@triton.jit
def _fwd_kernel(
    X_ptr, Bank_ptr, A_ptr, S_ptr, D_ptr, Bias_ptr, Noise_ptr, Y_ptr, Lin_ptr,
    B, Cin, Cout, H, W, N, gain, clamp,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_bank_n, stride_bank_o,
    stride_ab, stride_an, stride_sb, stride_sc, stride_db,
    stride_nb, stride_nc, stride_nh, stride_nw,
    stride_yb, stride_yc, stride_yh, stride_yw,
    KSIZE: tl.constexpr, DEMOD: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_NOISE: tl.constexpr,
    ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, SAVE_LIN: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y = epilogue(d * conv(x * s, K[b])): implicit GEMM, M = pixels, N = Cout, K = Cin*k*k."""
    KK: tl.constexpr = KSIZE * KSIZE
    PAD: tl.constexpr = KSIZE // 2
    P = H * W
    num_p = tl.cdiv(P, BLOCK_P)
    pid = tl.program_id(0)
    # Samples vary fastest so the programs that read one Cout slice of the bank run together (L2 reuse).
    pid_p = pid % num_p
    b = ((pid // num_p) % B).to(tl.int64)  # int64 only for batch strides; in-sample offsets fit int32
    pid_co = pid // (num_p * B)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    oh = offs_p // W
    ow = offs_p % W
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_mask = offs_co < Cout

    k_total = Cin * KK
    x_base = X_ptr + b * stride_xb
    acc = tl.zeros((BLOCK_P, BLOCK_CO), dtype=tl.float32)
    for k0 in range(0, k_total, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_total
        ci = offs_k // KK
        tap = offs_k % KK
        ih = oh[:, None] + (tap // KSIZE - PAD)[None, :]
        iw = ow[:, None] + (tap % KSIZE - PAD)[None, :]
        x_mask = p_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_tile = tl.load(x_base + ci[None, :] * stride_xc + ih * stride_xh + iw * stride_xw, mask=x_mask, other=0.0)
        s = tl.load(S_ptr + b * stride_sb + ci * stride_sc, mask=k_mask, other=0.0).to(tl.float32)
        xs = (x_tile.to(tl.float32) * s[None, :]).to(DOT_DTYPE)
        w_offsets = offs_k[:, None] + offs_co[None, :] * stride_bank_o
        w_mixed = _mixed_bank_tile(Bank_ptr, A_ptr + b * stride_ab, stride_an, N, stride_bank_n,
                                   w_offsets, k_mask[:, None] & co_mask[None, :])
        acc = tl.dot(xs, w_mixed.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)

    if DEMOD:
        d = tl.load(D_ptr + b * stride_db + offs_co, mask=co_mask, other=1.0)
        acc = acc * d[None, :]
    out_mask = p_mask[:, None] & co_mask[None, :]
    # In-sample offsets stay int32: 64-bit offset tiles here once cost 64 registers each.
    y_offsets = offs_co[None, :] * stride_yc + oh[:, None] * stride_yh + ow[:, None] * stride_yw
    if SAVE_LIN:
        tl.store(Lin_ptr + b * stride_yb + y_offsets, acc.to(Lin_ptr.dtype.element_ty), mask=out_mask)
    if HAS_NOISE:
        noise = tl.load(Noise_ptr + b * stride_nb + offs_co[None, :] * stride_nc + oh[:, None] * stride_nh
                        + ow[:, None] * stride_nw, mask=out_mask, other=0.0)
        acc += noise.to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(Bias_ptr + offs_co, mask=co_mask, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    if ACT == 1:
        acc = tl.where(acc > 0, acc, acc * 0.2)
    acc = acc * gain
    if HAS_CLAMP:
        acc = tl.minimum(tl.maximum(acc, -clamp), clamp)
    tl.store(Y_ptr + b * stride_yb + y_offsets, acc.to(Y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _dx_kernel(
    GZ_ptr, X_ptr, Bank_ptr, A_ptr, S_ptr, DX_ptr, DS_ptr,
    B, Cin, Cout, H, W, N,
    stride_gzb, stride_gzc,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_bank_n, stride_bank_o,
    stride_ab, stride_an, stride_sb, stride_sc, stride_dsb,
    stride_dxb, stride_dxc, stride_dxh, stride_dxw,
    KSIZE: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dxs = conv_transpose(gz, K[b]); dx = dxs * s; ds[b,i] += sum_p dxs * x.

    gz = d * dL/dy_lin is contiguous [B,Cout,H,W]. The reduction index is
    (o, t), and a tap that reads x at p+off(t) in the forward reads gz at
    p-off(t) here.
    """
    KK: tl.constexpr = KSIZE * KSIZE
    PAD: tl.constexpr = KSIZE // 2
    P = H * W
    num_p = tl.cdiv(P, BLOCK_P)
    pid = tl.program_id(0)
    pid_p = pid % num_p
    b = ((pid // num_p) % B).to(tl.int64)
    pid_ci = pid // (num_p * B)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    oh = offs_p // W
    ow = offs_p % W
    offs_ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    ci_mask = offs_ci < Cin

    k_total = Cout * KK
    gz_base = GZ_ptr + b * stride_gzb
    acc = tl.zeros((BLOCK_P, BLOCK_CI), dtype=tl.float32)
    for k0 in range(0, k_total, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < k_total
        co = offs_k // KK
        tap = offs_k % KK
        ih = oh[:, None] - (tap // KSIZE - PAD)[None, :]
        iw = ow[:, None] - (tap % KSIZE - PAD)[None, :]
        g_mask = p_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        g_tile = tl.load(gz_base + co[None, :] * stride_gzc + ih * W + iw, mask=g_mask, other=0.0)
        w_offsets = (co * stride_bank_o + tap)[:, None] + offs_ci[None, :] * KK
        w_mixed = _mixed_bank_tile(Bank_ptr, A_ptr + b * stride_ab, stride_an, N, stride_bank_n,
                                   w_offsets, k_mask[:, None] & ci_mask[None, :])
        acc = tl.dot(g_tile.to(DOT_DTYPE), w_mixed.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)

    out_mask = p_mask[:, None] & ci_mask[None, :]
    s = tl.load(S_ptr + b * stride_sb + offs_ci * stride_sc, mask=ci_mask, other=0.0).to(tl.float32)
    x_tile = tl.load(X_ptr + b * stride_xb + offs_ci[None, :] * stride_xc + oh[:, None] * stride_xh
                     + ow[:, None] * stride_xw, mask=out_mask, other=0.0).to(tl.float32)
    tl.atomic_add(DS_ptr + b * stride_dsb + offs_ci, tl.sum(acc * x_tile, axis=0), mask=ci_mask)
    dx = acc * s[None, :]
    tl.store(DX_ptr + b * stride_dxb + offs_ci[None, :] * stride_dxc + oh[:, None] * stride_dxh
             + ow[:, None] * stride_dxw, dx.to(DX_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _dbank_kernel(
    GZ_ptr, X_ptr, Bank_ptr, A_ptr, S_ptr, C_ptr, DBank_ptr, DA_ptr, DS_ptr,
    B, Cin, Cout, H, W, N,
    stride_gzb, stride_gzc,
    stride_xb, stride_xc, stride_xh, stride_xw,
    stride_bank_n, stride_bank_o,
    stride_ab, stride_an, stride_sb, stride_sc, stride_cb, stride_dab, stride_dsb,
    KSIZE: tl.constexpr, DEMOD: tl.constexpr, N_PAD: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Per (Cout tile, Cin tile, tap): the per-sample filter gradient G[b] exists only in registers.

    G[b,o,i]  = sum_p gz[b,o,p] xs[b,i,p+off]  -  c[b,o] s[b,i]^2 K[b,o,i]   (second term: demodulation)
    dW[n]    += a[b,n] G[b]           dA[b,n] += <W[n], G[b]>
    ds[b,i]  += -s[b,i] sum_o c[b,o] K[b,o,i]^2
    with c[b,o] = d[b,o]^2 sum_p dL/dy_lin * y_lin.
    """
    KK: tl.constexpr = KSIZE * KSIZE
    PAD: tl.constexpr = KSIZE // 2
    pid_co = tl.program_id(0)
    pid_ci = tl.program_id(1)
    tap = tl.program_id(2)
    dh = tap // KSIZE - PAD
    dw = tap % KSIZE - PAD
    P = H * W

    offs_n = tl.arange(0, N_PAD)
    n_mask = offs_n < N
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    co_mask = offs_co < Cout
    offs_ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
    ci_mask = offs_ci < Cin
    tile_mask = co_mask[:, None] & ci_mask[None, :]
    bank_offsets = (offs_n[:, None, None] * stride_bank_n + offs_co[None, :, None] * stride_bank_o
                    + offs_ci[None, None, :] * KK + tap)
    bank_mask = n_mask[:, None, None] & tile_mask[None, :, :]
    # The N bank tiles of this (Cout, Cin, tap) slice stay in registers across the whole batch.
    bank = tl.load(Bank_ptr + bank_offsets, mask=bank_mask, other=0.0)
    dbank = tl.zeros((N_PAD, BLOCK_CO, BLOCK_CI), dtype=tl.float32)

    # Per-sample base pointers advance by the batch stride: 64-bit pointer arithmetic, so B * stride
    # may exceed int32 while every in-sample offset stays int32.
    x_b = X_ptr
    gz_b = GZ_ptr
    for b in range(B):
        a = tl.load(A_ptr + b * stride_ab + offs_n * stride_an, mask=n_mask, other=0.0)
        s = tl.load(S_ptr + b * stride_sb + offs_ci * stride_sc, mask=ci_mask, other=0.0).to(tl.float32)
        g = tl.zeros((BLOCK_CO, BLOCK_CI), dtype=tl.float32)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            p_mask = offs_p < P
            ih = offs_p // W + dh
            iw = offs_p % W + dw
            x_mask = (p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[:, None] & ci_mask[None, :]
            x_tile = tl.load(x_b + offs_ci[None, :] * stride_xc + ih[:, None] * stride_xh
                             + iw[:, None] * stride_xw, mask=x_mask, other=0.0)
            xs = (x_tile.to(tl.float32) * s[None, :]).to(DOT_DTYPE)
            g_tile = tl.load(gz_b + offs_co[:, None] * stride_gzc + offs_p[None, :],
                             mask=co_mask[:, None] & p_mask[None, :], other=0.0)
            g = tl.dot(g_tile.to(DOT_DTYPE), xs, g, input_precision=DOT_PRECISION)
        if DEMOD:
            mixed = tl.sum(a[:, None, None] * bank.to(tl.float32), axis=0)
            c = tl.load(C_ptr + b * stride_cb + offs_co, mask=co_mask, other=0.0)
            c_mixed = c[:, None] * mixed
            g = g - c_mixed * (s * s)[None, :]
            tl.atomic_add(DS_ptr + b * stride_dsb + offs_ci, -s * tl.sum(c_mixed * mixed, axis=0), mask=ci_mask)
        dbank += a[:, None, None] * g[None, :, :]
        da = tl.sum(tl.sum(bank.to(tl.float32) * g[None, :, :], axis=2), axis=1)
        tl.atomic_add(DA_ptr + b * stride_dab + offs_n, da, mask=n_mask)
        x_b += stride_xb
        gz_b += stride_gzb

    tl.store(DBank_ptr + bank_offsets, dbank.to(DBank_ptr.dtype.element_ty), mask=bank_mask)


# ----------------------------------------------------------------------------------------------
# Config table: the single source of truth for what the dispatcher may launch. The static
# kernel report (benchmarks/kernel_report.py) compiles every entry for sm_80 and sm_90.
# Untuned on hardware so far: block shapes follow the register budget, see benchmarks/NOTES.md.
# ----------------------------------------------------------------------------------------------
FWD_CONFIGS = {
    # P <= 16 (4x4 layers): a 16-pixel M tile.
    "p16": dict(BLOCK_P=16, BLOCK_CO=128, BLOCK_K=32, num_warps=4, num_stages=2),
    # P <= 64 (8x8): one M tile per sample. BLOCK_K=64 spilled (504 B on sm_80), BLOCK_K=16 at CO=128 too.
    "p64": dict(BLOCK_P=64, BLOCK_CO=128, BLOCK_K=32, num_warps=8, num_stages=2),
    # larger images. 128x128 spilled 376-464 B, so Cout tiles are 64 wide.
    "p128": dict(BLOCK_P=128, BLOCK_CO=64, BLOCK_K=32, num_warps=8, num_stages=2),
}
DX_CONFIGS = {
    "p16": dict(BLOCK_P=16, BLOCK_CI=128, BLOCK_K=32, num_warps=4, num_stages=2),
    "p64": dict(BLOCK_P=64, BLOCK_CI=128, BLOCK_K=32, num_warps=8, num_stages=2),
    "p128": dict(BLOCK_P=128, BLOCK_CI=64, BLOCK_K=32, num_warps=8, num_stages=2),
}
# Keyed by N_PAD: the bank slice and its fp32 gradient both stay in registers, so the tile shrinks as
# N grows. At N_PAD*BLOCK_CO*BLOCK_CI = 8192 the fp32 variants spilled (up to 200 B on sm_90); 4096 fits.
DBANK_CONFIGS = {
    # BLOCK_P=32 for N_PAD <= 2: with 64 the fp32 (TF32) variants still spilled 48-64 B on sm_90.
    1: dict(BLOCK_CO=64, BLOCK_CI=64, BLOCK_P=32, num_warps=8, num_stages=2),
    2: dict(BLOCK_CO=32, BLOCK_CI=64, BLOCK_P=32, num_warps=8, num_stages=2),
    4: dict(BLOCK_CO=32, BLOCK_CI=32, BLOCK_P=64, num_warps=8, num_stages=2),
    8: dict(BLOCK_CO=16, BLOCK_CI=32, BLOCK_P=64, num_warps=8, num_stages=2),
    16: dict(BLOCK_CO=16, BLOCK_CI=16, BLOCK_P=64, num_warps=8, num_stages=2),
    32: dict(BLOCK_CO=16, BLOCK_CI=16, BLOCK_P=64, num_warps=8, num_stages=2),
}
DEMOD_CONFIG = dict(BLOCK_CO=32, BLOCK_K=64, num_warps=4, num_stages=2)
MAX_FILTERS = max(DBANK_CONFIGS)


def pick_pixel_config(table: dict, P: int) -> dict:
    if P <= 16:
        return table["p16"]
    if P <= 64:
        return table["p64"]
    return table["p128"]


def pick_dbank_config(N: int) -> tuple[int, dict]:
    n_pad = triton.next_power_of_2(N)
    return n_pad, DBANK_CONFIGS[n_pad]


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


def demod_coefficients(bank, a, s, eps):
    """d [B, Cout] in fp32."""
    bank = bank.contiguous()
    N, Cout, Cin, k, _ = bank.shape
    B = a.shape[0]
    d = torch.empty((B, Cout), device=bank.device, dtype=torch.float32)
    cfg = DEMOD_CONFIG
    grid = (triton.cdiv(Cout, cfg["BLOCK_CO"]), B)
    _demod_kernel[grid](
        bank, a, s, d, Cin, Cout, N, float(eps),
        bank.stride(0), bank.stride(1), a.stride(0), a.stride(1), s.stride(0), s.stride(1), d.stride(0),
        KK=k * k, **cfg,
    )
    return d


def forward(x, bank, a, s, bias, noise, *, demodulate, eps, activation_code, gain, clamp, save_lin):
    """Returns (y, lin, d). lin = d * conv(x*s, K) before noise/bias/activation (empty unless save_lin)."""
    bank = bank.contiguous()
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = bank.shape
    d = demod_coefficients(bank, a, s, eps) if demodulate else torch.ones((B, Cout), device=x.device, dtype=torch.float32)
    # A channels_last input gets a channels_last output; the kernels take any strides.
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((B, Cout, H, W), device=x.device, dtype=x.dtype, memory_format=memory_format)
    lin = torch.empty_like(y) if save_lin else y.new_empty((0,))
    cfg = pick_pixel_config(FWD_CONFIGS, H * W)
    grid = (triton.cdiv(H * W, cfg["BLOCK_P"]) * B * triton.cdiv(Cout, cfg["BLOCK_CO"]),)
    nb, nc, nh, nw = _noise_strides(noise, y.shape)
    _fwd_kernel[grid](
        x, bank, a, s, d, bias if bias is not None else y, noise if noise is not None else y, y,
        lin if save_lin else y,
        B, Cin, Cout, H, W, N, float(gain), float(clamp if clamp is not None else 0.0),
        *x.stride(), bank.stride(0), bank.stride(1),
        a.stride(0), a.stride(1), s.stride(0), s.stride(1), d.stride(0),
        nb, nc, nh, nw, *y.stride(),
        KSIZE=k, DEMOD=demodulate, HAS_BIAS=bias is not None, HAS_NOISE=noise is not None,
        ACT=activation_code, HAS_CLAMP=clamp is not None, SAVE_LIN=save_lin,
        DOT_DTYPE=dot_dtype(x.dtype), DOT_PRECISION=dot_precision(x.dtype), **cfg,
    )
    return y, lin, d


def backward(gz, c, x, bank, a, s, *, demodulate):
    """Gradients of the conv core given gz = d * dL/dy_lin and c = d^2 sum_p dL/dy_lin * y_lin.

    Returns dx, dbank (bank dtype), da [B,N] fp32 and ds [B,Cin] fp32.
    """
    bank = bank.contiguous()
    gz = gz.contiguous()
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = bank.shape
    ds = torch.zeros((B, Cin), device=x.device, dtype=torch.float32)
    da = torch.zeros((B, N), device=x.device, dtype=torch.float32)
    # The dx kernel also produces the style gradient's sum_p dxs * x, so it runs even when x needs no grad.
    dx = torch.empty_like(x)
    cfg = pick_pixel_config(DX_CONFIGS, H * W)
    grid = (triton.cdiv(H * W, cfg["BLOCK_P"]) * B * triton.cdiv(Cin, cfg["BLOCK_CI"]),)
    _dx_kernel[grid](
        gz, x, bank, a, s, dx, ds, B, Cin, Cout, H, W, N,
        gz.stride(0), gz.stride(1), *x.stride(), bank.stride(0), bank.stride(1),
        a.stride(0), a.stride(1), s.stride(0), s.stride(1), ds.stride(0), *dx.stride(),
        KSIZE=k, DOT_DTYPE=dot_dtype(x.dtype), DOT_PRECISION=dot_precision(x.dtype), **cfg,
    )
    n_pad, cfg = pick_dbank_config(N)
    dbank = torch.empty_like(bank)
    grid = (triton.cdiv(Cout, cfg["BLOCK_CO"]), triton.cdiv(Cin, cfg["BLOCK_CI"]), k * k)
    _dbank_kernel[grid](
        gz, x, bank, a, s, c, dbank, da, ds, B, Cin, Cout, H, W, N,
        gz.stride(0), gz.stride(1), *x.stride(), bank.stride(0), bank.stride(1),
        a.stride(0), a.stride(1), s.stride(0), s.stride(1), c.stride(0), da.stride(0), ds.stride(0),
        KSIZE=k, DEMOD=demodulate, N_PAD=n_pad,
        DOT_DTYPE=dot_dtype(x.dtype), DOT_PRECISION=dot_precision(x.dtype), **cfg,
    )
    return dx, dbank, da, ds


# ----------------------------------------------------------------------------------------------
# What the static kernel report compiles: every config above, per input dtype, k=3 (the hot size;
# k only changes index constants). Each entry names the argument types the launchers pass.
# ----------------------------------------------------------------------------------------------
_TL_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def report_specs():
    specs = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        t = _TL_NAMES[dtype]
        dot = dict(DOT_DTYPE=dot_dtype(dtype), DOT_PRECISION="tf32" if dtype == torch.float32 else "ieee")
        launch = lambda cfg: {k: cfg[k] for k in ("num_warps", "num_stages")}  # noqa: E731
        blocks = lambda cfg: {k: v for k, v in cfg.items() if k.startswith("BLOCK")}  # noqa: E731
        for name, cfg in FWD_CONFIGS.items():
            specs.append(dict(
                kernel=_fwd_kernel, config=name, dtype=t, tensor_cores=True, **launch(cfg),
                pointers=dict(X_ptr=t, Bank_ptr=t, A_ptr="fp32", S_ptr=t, D_ptr="fp32", Bias_ptr=t, Noise_ptr=t,
                              Y_ptr=t, Lin_ptr=t),
                floats=("gain", "clamp"),
                constexprs=dict(KSIZE=3, DEMOD=True, HAS_BIAS=True, HAS_NOISE=True, ACT=ACT_LRELU, HAS_CLAMP=True,
                                SAVE_LIN=True, **dot, **blocks(cfg))))
        for name, cfg in DX_CONFIGS.items():
            specs.append(dict(
                kernel=_dx_kernel, config=name, dtype=t, tensor_cores=True, **launch(cfg),
                pointers=dict(GZ_ptr=t, X_ptr=t, Bank_ptr=t, A_ptr="fp32", S_ptr=t, DX_ptr=t, DS_ptr="fp32"),
                floats=(), constexprs=dict(KSIZE=3, **dot, **blocks(cfg))))
        for n_pad, cfg in DBANK_CONFIGS.items():
            specs.append(dict(
                kernel=_dbank_kernel, config=f"n{n_pad}", dtype=t, tensor_cores=True, **launch(cfg),
                pointers=dict(GZ_ptr=t, X_ptr=t, Bank_ptr=t, A_ptr="fp32", S_ptr=t, C_ptr="fp32", DBank_ptr=t,
                              DA_ptr="fp32", DS_ptr="fp32"),
                floats=(), constexprs=dict(KSIZE=3, DEMOD=True, N_PAD=n_pad, **dot, **blocks(cfg))))
        specs.append(dict(
            kernel=_demod_kernel, config="default", dtype=t, tensor_cores=False, **launch(DEMOD_CONFIG),
            pointers=dict(Bank_ptr=t, A_ptr="fp32", S_ptr=t, D_ptr="fp32"), floats=("eps",),
            constexprs=dict(KK=9, **blocks(DEMOD_CONFIG))))
    return specs
