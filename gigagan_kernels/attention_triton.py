"""Flash-style Triton kernels for L2-distance and dot-product attention with a key padding mask.

L2 logits use  -s||q_i - k_j||^2 = 2s<q_i, k_j> - s||k_j||^2 - s||q_i||^2.  The last term is constant
along a row and cancels in the softmax, so the kernels run dot-product attention at scale 2s with a
per-key bias -s||k_j||^2, computed from the key tile already in registers. Softmax runs in base 2
(exp2) with fp32 statistics; only the per-row log-sum-exp is saved for the backward.

Backward (softmax gradient dS = P * (dP - delta), delta = rowsum(dO * O)):
  dot: dQ = s dS K,        dK = s dS^T Q
  l2:  dQ = 2s dS K        (the -2s q_i rowsum(dS) term vanishes: rows of dS sum to 0)
       dK = 2s (dS^T Q - k_j colsum(dS)_j)
Kernels, in order: forward, delta preprocess, dK/dV (one program per key block), dQ (one per query
block). No Lq x Lk tensor reaches global memory.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
KIND_DOT = 0
KIND_L2 = 1


@triton.jit
def _logits_base2(q, k, k_sqnorm_scaled, offs_n, Lk, Mask_row_ptr, qk_scale,
                  KIND: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Logits of one [BLOCK_M, BLOCK_N] tile in base 2 (already times log2(e)); masked keys are -inf."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if KIND == 1:
        s = s - k_sqnorm_scaled[None, :]
    valid = offs_n < Lk
    if HAS_MASK:
        keep = tl.load(Mask_row_ptr + offs_n, mask=valid, other=0)
        valid = valid & (keep != 0)
    return tl.where(valid[None, :], s, float("-inf"))


@triton.jit
def _tile(base, L, DIM, stride_l, stride_d, start, BLOCK_L: tl.constexpr, BLOCK_DIM: tl.constexpr):
    """Block pointer to rows [start, start+BLOCK_L) of an [L, DIM] matrix. Block pointers keep one base
    address per tile instead of a 64-bit address per element (per-element pointers spilled here)."""
    return tl.make_block_ptr(base, shape=(L, DIM), strides=(stride_l, stride_d), offsets=(start, 0),
                             block_shape=(BLOCK_L, BLOCK_DIM), order=(1, 0))


@triton.jit
def _attn_fwd_kernel(
    Q_ptr, K_ptr, V_ptr, Mask_ptr, O_ptr, LSE_ptr,
    H, Lq, Lk, D, DV, qk_scale, bias_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_maskb,
    stride_ob, stride_oh, stride_om, stride_od,
    KIND: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    mask_row = Mask_ptr + b * stride_maskb
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q = tl.load(_tile(Q_ptr + b * stride_qb + h * stride_qh, Lq, D, stride_qm, stride_qd, pid_m * BLOCK_M,
                      BLOCK_M, BLOCK_D), boundary_check=(0, 1), padding_option="zero")
    k_tile = _tile(K_ptr + b * stride_kb + h * stride_kh, Lk, D, stride_kn, stride_kd, 0, BLOCK_N, BLOCK_D)
    v_tile = _tile(V_ptr + b * stride_vb + h * stride_vh, Lk, DV, stride_vn, stride_vd, 0, BLOCK_N, BLOCK_DV)

    # Running max starts finite so that a fully masked row never computes (-inf) - (-inf).
    m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    for n0 in range(0, Lk, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = tl.load(k_tile, boundary_check=(0, 1), padding_option="zero")
        k_sq = tl.sum(k.to(tl.float32) * k.to(tl.float32), axis=1) * bias_scale
        s = _logits_base2(q, k, k_sq, offs_n, Lk, mask_row, qk_scale, KIND, HAS_MASK, DOT_PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_tile, boundary_check=(0, 1), padding_option="zero")
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
        k_tile = tl.advance(k_tile, (BLOCK_N, 0))
        v_tile = tl.advance(v_tile, (BLOCK_N, 0))

    has_keys = l_i > 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    # LSE (base 2) = +inf for a row with no visible key: its probabilities recompute as exactly 0.
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("inf"))
    tl.store(LSE_ptr + pid_bh.to(tl.int64) * Lq + offs_m, lse, mask=offs_m < Lq)
    tl.store(_tile(O_ptr + b * stride_ob + h * stride_oh, Lq, DV, stride_om, stride_od, pid_m * BLOCK_M,
                   BLOCK_M, BLOCK_DV), out.to(O_ptr.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _attn_bwd_delta_kernel(
    O_ptr, DO_ptr, Delta_ptr, H, Lq, DV,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """delta[i] = sum_d dO[i,d] * O[i,d]."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o = tl.load(_tile(O_ptr + b * stride_ob + h * stride_oh, Lq, DV, stride_om, stride_od, pid_m * BLOCK_M,
                      BLOCK_M, BLOCK_DV), boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    do = tl.load(_tile(DO_ptr + b * stride_dob + h * stride_doh, Lq, DV, stride_dom, stride_dod, pid_m * BLOCK_M,
                       BLOCK_M, BLOCK_DV), boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    tl.store(Delta_ptr + pid_bh.to(tl.int64) * Lq + offs_m, tl.sum(o * do, axis=1), mask=offs_m < Lq)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q_ptr, K_ptr, V_ptr, Mask_ptr, DO_ptr, LSE_ptr, Delta_ptr, DK_ptr, DV_ptr,
    H, Lq, Lk, D, DV, qk_scale, bias_scale, grad_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_maskb,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    KIND: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One program per key block: loop over query blocks, accumulate dK and dV in registers."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    row_base = pid_bh.to(tl.int64) * Lq
    mask_row = Mask_ptr + b * stride_maskb
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    k = tl.load(_tile(K_ptr + b * stride_kb + h * stride_kh, Lk, D, stride_kn, stride_kd, n0, BLOCK_N, BLOCK_D),
                boundary_check=(0, 1), padding_option="zero")
    v = tl.load(_tile(V_ptr + b * stride_vb + h * stride_vh, Lk, DV, stride_vn, stride_vd, n0, BLOCK_N, BLOCK_DV),
                boundary_check=(0, 1), padding_option="zero")
    k_sq = tl.sum(k.to(tl.float32) * k.to(tl.float32), axis=1) * bias_scale
    q_tile = _tile(Q_ptr + b * stride_qb + h * stride_qh, Lq, D, stride_qm, stride_qd, 0, BLOCK_M, BLOCK_D)
    do_tile = _tile(DO_ptr + b * stride_dob + h * stride_doh, Lq, DV, stride_dom, stride_dod, 0, BLOCK_M, BLOCK_DV)

    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    ds_colsum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, Lq, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_mask = offs_m < Lq
        q = tl.load(q_tile, boundary_check=(0, 1), padding_option="zero")
        do = tl.load(do_tile, boundary_check=(0, 1), padding_option="zero")
        lse = tl.load(LSE_ptr + row_base + offs_m, mask=m_mask, other=float("inf"))
        delta = tl.load(Delta_ptr + row_base + offs_m, mask=m_mask, other=0.0)
        s = _logits_base2(q, k, k_sq, offs_n, Lk, mask_row, qk_scale, KIND, HAS_MASK, DOT_PRECISION)
        p = tl.exp2(s - lse[:, None])                                         # [M, N]
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
        if KIND == 1:
            ds_colsum += tl.sum(ds, axis=0)
        q_tile = tl.advance(q_tile, (BLOCK_M, 0))
        do_tile = tl.advance(do_tile, (BLOCK_M, 0))

    if KIND == 1:
        dk = dk - k.to(tl.float32) * ds_colsum[:, None]
    dk = dk * grad_scale
    tl.store(_tile(DK_ptr + b * stride_dkb + h * stride_dkh, Lk, D, stride_dkn, stride_dkd, n0, BLOCK_N, BLOCK_D),
             dk.to(DK_ptr.dtype.element_ty), boundary_check=(0, 1))
    tl.store(_tile(DV_ptr + b * stride_dvb + h * stride_dvh, Lk, DV, stride_dvn, stride_dvd, n0, BLOCK_N, BLOCK_DV),
             dv.to(DV_ptr.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _attn_bwd_dq_kernel(
    Q_ptr, K_ptr, V_ptr, Mask_ptr, DO_ptr, LSE_ptr, Delta_ptr, DQ_ptr,
    H, Lq, Lk, D, DV, qk_scale, bias_scale, grad_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_maskb,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    KIND: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One program per query block: loop over key blocks, accumulate dQ in registers."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    row_base = pid_bh.to(tl.int64) * Lq
    mask_row = Mask_ptr + b * stride_maskb
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    m_mask = offs_m < Lq
    q = tl.load(_tile(Q_ptr + b * stride_qb + h * stride_qh, Lq, D, stride_qm, stride_qd, m0, BLOCK_M, BLOCK_D),
                boundary_check=(0, 1), padding_option="zero")
    do = tl.load(_tile(DO_ptr + b * stride_dob + h * stride_doh, Lq, DV, stride_dom, stride_dod, m0, BLOCK_M,
                       BLOCK_DV), boundary_check=(0, 1), padding_option="zero")
    lse = tl.load(LSE_ptr + row_base + offs_m, mask=m_mask, other=float("inf"))
    delta = tl.load(Delta_ptr + row_base + offs_m, mask=m_mask, other=0.0)
    k_tile = _tile(K_ptr + b * stride_kb + h * stride_kh, Lk, D, stride_kn, stride_kd, 0, BLOCK_N, BLOCK_D)
    v_tile = _tile(V_ptr + b * stride_vb + h * stride_vh, Lk, DV, stride_vn, stride_vd, 0, BLOCK_N, BLOCK_DV)

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, Lk, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = tl.load(k_tile, boundary_check=(0, 1), padding_option="zero")
        v = tl.load(v_tile, boundary_check=(0, 1), padding_option="zero")
        k_sq = tl.sum(k.to(tl.float32) * k.to(tl.float32), axis=1) * bias_scale
        s = _logits_base2(q, k, k_sq, offs_n, Lk, mask_row, qk_scale, KIND, HAS_MASK, DOT_PRECISION)
        p = tl.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
        k_tile = tl.advance(k_tile, (BLOCK_N, 0))
        v_tile = tl.advance(v_tile, (BLOCK_N, 0))
    dq = dq * grad_scale
    tl.store(_tile(DQ_ptr + b * stride_dqb + h * stride_dqh, Lq, D, stride_dqm, stride_dqd, m0, BLOCK_M, BLOCK_D),
             dq.to(DQ_ptr.dtype.element_ty), boundary_check=(0, 1))


# ----------------------------------------------------------------------------------------------
# Config table, keyed by the padded head dim: the one place the dispatcher and the kernel report read.
# Untuned on hardware so far; block shapes chosen for the register budget (see benchmarks/NOTES.md).
# ----------------------------------------------------------------------------------------------
# Keys: (padded head dim, operand width). fp32 operands (TF32 dots) need smaller tiles than fp16/bf16.
# Every entry compiles without spills for sm_80 and sm_90 (python -m benchmarks.kernel_report).
_ATTN_CFG = lambda m, n, w, st: dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=st)  # noqa: E731
FWD_CONFIGS = {
    (32, "16bit"): _ATTN_CFG(128, 32, 8, 3), (32, "fp32"): _ATTN_CFG(128, 32, 8, 3),
    # 128x64 tiles spilled 144 B (fp32, sm_80); 128x32 does not.
    (64, "16bit"): _ATTN_CFG(128, 32, 8, 3), (64, "fp32"): _ATTN_CFG(128, 32, 8, 3),
    # fp32 at d128: 128x32 spilled 392 B and 64x32 48 B on sm_80.
    (128, "16bit"): _ATTN_CFG(128, 32, 8, 3), (128, "fp32"): _ATTN_CFG(32, 32, 4, 3),
}
BWD_DKDV_CONFIGS = {
    # 32x64 (BLOCK_M x BLOCK_N) spilled 120 B at d64 on sm_80.
    (32, "16bit"): _ATTN_CFG(32, 32, 4, 2), (32, "fp32"): _ATTN_CFG(32, 32, 4, 2),
    (64, "16bit"): _ATTN_CFG(32, 32, 4, 2), (64, "fp32"): _ATTN_CFG(32, 32, 4, 2),
    (128, "16bit"): _ATTN_CFG(32, 32, 8, 2), (128, "fp32"): _ATTN_CFG(16, 32, 4, 2),
}
BWD_DQ_CONFIGS = {
    (32, "16bit"): _ATTN_CFG(32, 32, 4, 2), (32, "fp32"): _ATTN_CFG(32, 32, 4, 2),
    # 64x32 spilled 128 B in fp32 on sm_80.
    (64, "16bit"): _ATTN_CFG(64, 32, 4, 2), (64, "fp32"): _ATTN_CFG(32, 32, 4, 2),
    # fp32 d128: 16x32 in two stages spilled 8 B (dot kind, sm_80); one stage of 32x16 with 8 warps is clean.
    (128, "16bit"): _ATTN_CFG(32, 16, 4, 2), (128, "fp32"): _ATTN_CFG(32, 16, 8, 1),
}
# 64 rows x 128 columns spilled 24-40 B (two fp32 tiles); 16 rows do not.
DELTA_CONFIG = dict(BLOCK_M=16, num_warps=4, num_stages=1)
MAX_HEAD_DIM = 128  # the largest key of the config tables


def head_block(d: int) -> int:
    """Padded head-dim block: tl.dot needs >= 16 and a power of two; table keys are 32, 64, 128."""
    return max(32, triton.next_power_of_2(d))


def _config(table, d_block, dtype):
    return table[(d_block, "fp32" if dtype == torch.float32 else "16bit")]


def _dot_precision(dtype):
    if dtype == torch.float32:
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return "ieee"


def _scales(kind, scale):
    """(qk_scale, bias_scale, grad_scale) in the kernels' base-2 units."""
    if kind == KIND_L2:
        return 2.0 * scale * LOG2E, scale * LOG2E, 2.0 * scale
    return scale * LOG2E, 0.0, scale


def _mask_arg(mask, q):
    if mask is None:
        return q, 0  # never read: HAS_MASK=False
    return mask, mask.stride(0)


def forward(q, k, v, kind, scale, mask):
    """Returns (out, lse) with lse [B, H, Lq] fp32 in base 2."""
    B, H, Lq, D = q.shape
    Lk, DV = k.shape[2], v.shape[3]
    out = torch.empty((B, H, Lq, DV), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    bd, bdv = head_block(D), head_block(DV)
    cfg = _config(FWD_CONFIGS, max(bd, bdv), q.dtype)
    qk_scale, bias_scale, _ = _scales(kind, scale)
    mask_t, stride_mask = _mask_arg(mask, q)
    grid = (triton.cdiv(Lq, cfg["BLOCK_M"]), B * H)
    _attn_fwd_kernel[grid](
        q, k, v, mask_t, out, lse, H, Lq, Lk, D, DV, qk_scale, bias_scale,
        *q.stride(), *k.stride(), *v.stride(), stride_mask, *out.stride(),
        KIND=kind, HAS_MASK=mask is not None, DOT_PRECISION=_dot_precision(q.dtype),
        BLOCK_D=bd, BLOCK_DV=bdv, **cfg,
    )
    return out, lse


def backward(do, q, k, v, out, lse, kind, scale, mask):
    B, H, Lq, D = q.shape
    Lk, DV = k.shape[2], v.shape[3]
    bd, bdv = head_block(D), head_block(DV)
    delta = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(Lq, DELTA_CONFIG["BLOCK_M"]), B * H)
    _attn_bwd_delta_kernel[grid](out, do, delta, H, Lq, DV, *out.stride(), *do.stride(), BLOCK_DV=bdv, **DELTA_CONFIG)
    qk_scale, bias_scale, grad_scale = _scales(kind, scale)
    mask_t, stride_mask = _mask_arg(mask, q)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = dict(KIND=kind, HAS_MASK=mask is not None, DOT_PRECISION=_dot_precision(q.dtype), BLOCK_D=bd,
                  BLOCK_DV=bdv)
    cfg = _config(BWD_DKDV_CONFIGS, max(bd, bdv), q.dtype)
    _attn_bwd_dkdv_kernel[(triton.cdiv(Lk, cfg["BLOCK_N"]), B * H)](
        q, k, v, mask_t, do, lse, delta, dk, dv, H, Lq, Lk, D, DV, qk_scale, bias_scale, grad_scale,
        *q.stride(), *k.stride(), *v.stride(), stride_mask, *do.stride(), *dk.stride(), *dv.stride(),
        **common, **cfg)
    cfg = _config(BWD_DQ_CONFIGS, max(bd, bdv), q.dtype)
    _attn_bwd_dq_kernel[(triton.cdiv(Lq, cfg["BLOCK_M"]), B * H)](
        q, k, v, mask_t, do, lse, delta, dq, H, Lq, Lk, D, DV, qk_scale, bias_scale, grad_scale,
        *q.stride(), *k.stride(), *v.stride(), stride_mask, *do.stride(), *dq.stride(), **common, **cfg)
    return dq, dk, dv


_TL_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def report_specs():
    """Every config above, per dtype and kind, for the static kernel report."""
    specs = []
    tables = ((_attn_fwd_kernel, FWD_CONFIGS, dict(O_ptr=None, LSE_ptr="fp32")),
              (_attn_bwd_dkdv_kernel, BWD_DKDV_CONFIGS, dict(DO_ptr=None, LSE_ptr="fp32", Delta_ptr="fp32",
                                                             DK_ptr=None, DV_ptr=None)),
              (_attn_bwd_dq_kernel, BWD_DQ_CONFIGS, dict(DO_ptr=None, LSE_ptr="fp32", Delta_ptr="fp32",
                                                         DQ_ptr=None)))
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        t = _TL_NAMES[dtype]
        width = "fp32" if dtype == torch.float32 else "16bit"
        for kind in (KIND_L2, KIND_DOT):
            for fn, table, extra in tables:
                for (bd, w), cfg in table.items():
                    if w != width:
                        continue
                    pointers = dict(Q_ptr=t, K_ptr=t, V_ptr=t, Mask_ptr="i8")
                    pointers.update({name: ty or t for name, ty in extra.items()})
                    specs.append(dict(
                        kernel=fn, config=f"d{bd}-{'l2' if kind else 'dot'}", dtype=t, tensor_cores=True,
                        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], pointers=pointers,
                        floats=("qk_scale", "bias_scale", "grad_scale"),
                        constexprs=dict(KIND=kind, HAS_MASK=True, DOT_PRECISION="tf32" if width == "fp32" else "ieee",
                                        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=bd, BLOCK_DV=bd)))
        specs.append(dict(
            kernel=_attn_bwd_delta_kernel, config="d128", dtype=t, tensor_cores=False,
            num_warps=DELTA_CONFIG["num_warps"], num_stages=DELTA_CONFIG["num_stages"],
            pointers=dict(O_ptr=t, DO_ptr=t, Delta_ptr="fp32"), floats=(),
            constexprs=dict(BLOCK_M=DELTA_CONFIG["BLOCK_M"], BLOCK_DV=128)))
    return specs
