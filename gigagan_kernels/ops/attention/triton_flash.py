"""Backend "triton": flash-style Triton kernels for L2-distance and dot-product attention with a key padding mask.

L2 logits use  -s||q_i - k_j||^2 = 2s<q_i, k_j> - s||k_j||^2 - s||q_i||^2.  The last term is constant
along a row and cancels in the softmax, so the kernels run dot-product attention at scale 2s with a
per-key bias -s||k_j||^2. A first small kernel writes that bias once per call, in fp32, with the key
padding mask folded in as -inf: the attention kernels then read one fp32 number per key instead of
re-reducing each key tile (which on sm_90 would pull K out of shared memory into registers beside the
wgmma). Softmax runs in base 2 (exp2) with fp32 statistics; only the per-row log-sum-exp is saved.

Backward (softmax gradient dS = P * (dP - delta), delta = rowsum(dO * O)), in one pass over the keys:
  dot: dQ = s dS K,        dK = s dS^T Q
  l2:  dQ = 2s dS K        (the -2s q_i rowsum(dS) term vanishes: rows of dS sum to 0)
       dK = 2s (dS^T Q - k_j colsum(dS)_j)
One program per key block keeps K, V and its dK, dV on chip and walks the query blocks, so S and dP
are computed once (5 matmuls, FlashAttention-2's count); each step's dQ contribution is added into an
fp32 buffer with relaxed atomics (no fence per call). No Lq x Lk tensor reaches global memory.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .plans import BWD_CONFIGS, DELTA_CONFIG, FWD_CONFIGS, KEY_BIAS_CONFIG, head_block

LOG2E = 1.4426950408889634
KIND_DOT = 0
KIND_L2 = 1


@triton.jit
def _tile(base, L, DIM, stride_l, stride_d, start, BLOCK_L: tl.constexpr, BLOCK_DIM: tl.constexpr):
    """Block pointer to rows [start, start+BLOCK_L) of an [L, DIM] matrix. Block pointers keep one base
    address per tile instead of a 64-bit address per element (per-element pointers spilled here)."""
    return tl.make_block_ptr(base, shape=(L, DIM), strides=(stride_l, stride_d), offsets=(start, 0),
                             block_shape=(BLOCK_L, BLOCK_DIM), order=(1, 0))


@triton.jit
def _key_bias_kernel(
    K_ptr, Mask_ptr, Bias_ptr, H, Lk, D, bias_scale,
    stride_kb, stride_kh, stride_kn, stride_kd, stride_maskb,
    KIND: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """bias[bh, j] = -bias_scale * ||k_j||^2 (l2) or 0 (dot), and -inf where the mask drops key j."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if KIND == 1:
        k = tl.load(_tile(K_ptr + b * stride_kb + h * stride_kh, Lk, D, stride_kn, stride_kd, pid_n * BLOCK_N,
                          BLOCK_N, BLOCK_D), boundary_check=(0, 1), padding_option="zero").to(tl.float32)
        bias = -bias_scale * tl.sum(k * k, axis=1)
    if HAS_MASK:
        keep = tl.load(Mask_ptr + b * stride_maskb + offs_n, mask=offs_n < Lk, other=0)
        bias = tl.where(keep != 0, bias, float("-inf"))
    tl.store(Bias_ptr + pid_bh.to(tl.int64) * Lk + offs_n, bias, mask=offs_n < Lk)


@triton.jit
def _logits_base2(q, k, Bias_row_ptr, offs_n, Lk, qk_scale, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Logits of one [BLOCK_M, BLOCK_N] tile in base 2 (already times log2(e)); masked and padded keys are -inf."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if HAS_BIAS:
        return s + tl.load(Bias_row_ptr + offs_n, mask=offs_n < Lk, other=float("-inf"))[None, :]
    return tl.where((offs_n < Lk)[None, :], s, float("-inf"))


@triton.jit
def _attn_fwd_kernel(
    Q_ptr, K_ptr, V_ptr, Bias_ptr, O_ptr, LSE_ptr,
    H, Lq, Lk, D, DV, qk_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    bias_row = Bias_ptr + pid_bh.to(tl.int64) * Lk
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
        s = _logits_base2(q, k, bias_row, offs_n, Lk, qk_scale, HAS_BIAS, DOT_PRECISION)
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
    O_ptr, DO_ptr, Delta_ptr, DQacc_ptr, H, Lq, DV,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """delta[i] = sum_d dO[i,d] * O[i,d]; and the same rows of the dQ accumulator [B*H, Lq, BLOCK_D] zeroed for the
    backward's atomics (no zero-fill kernel)."""
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
    offs_d = tl.arange(0, BLOCK_D)
    tl.store(DQacc_ptr + (pid_bh.to(tl.int64) * Lq + offs_m)[:, None] * BLOCK_D + offs_d[None, :],
             tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32), mask=(offs_m < Lq)[:, None])


@triton.jit
def _attn_bwd_kernel(
    Q_ptr, K_ptr, V_ptr, Mask_ptr, DO_ptr, LSE_ptr, Delta_ptr, DQacc_ptr, DK_ptr, DV_ptr,
    H, Lq, Lk, D, DV, qk_scale, bias_scale, grad_scale, stride_maskb,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    KIND: tl.constexpr, HAS_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One program per key block: walk the query blocks once; dK and dV stay in registers, dQ goes out as
    relaxed fp32 atomics into DQacc ([B*H, Lq, BLOCK_D], contiguous, zeroed by the delta kernel). The per-key
    bias is the forward's (_key_bias_kernel's formula), computed here from the key block this program holds.

    Tiles are computed transposed (keys x queries), so four of the five dots have the BLOCK_N keys as their
    M dimension (wgmma's m64 per warpgroup) and the per-key bias is one register vector for the program."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    row_base = pid_bh.to(tl.int64) * Lq
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    k = tl.load(_tile(K_ptr + b * stride_kb + h * stride_kh, Lk, D, stride_kn, stride_kd, n0, BLOCK_N, BLOCK_D),
                boundary_check=(0, 1), padding_option="zero")
    v = tl.load(_tile(V_ptr + b * stride_vb + h * stride_vh, Lk, DV, stride_vn, stride_vd, n0, BLOCK_N, BLOCK_DV),
                boundary_check=(0, 1), padding_option="zero")
    bias = tl.where(offs_n < Lk, 0.0, float("-inf"))
    if KIND == 1:
        k32 = k.to(tl.float32)
        bias += -bias_scale * tl.sum(k32 * k32, axis=1)
    if HAS_MASK:
        keep = tl.load(Mask_ptr + b * stride_maskb + offs_n, mask=offs_n < Lk, other=0)
        bias = tl.where(keep != 0, bias, float("-inf"))
    # q^T as a [BLOCK_D, BLOCK_M] tile of the [D, Lq] view.
    qT_tile = tl.make_block_ptr(Q_ptr + b * stride_qb + h * stride_qh, shape=(D, Lq), strides=(stride_qd, stride_qm),
                                offsets=(0, 0), block_shape=(BLOCK_D, BLOCK_M), order=(0, 1))
    do_tile = _tile(DO_ptr + b * stride_dob + h * stride_doh, Lq, DV, stride_dom, stride_dod, 0, BLOCK_M, BLOCK_DV)
    # dQ rows are BLOCK_D wide (padded), so the atomics need no column mask.
    dq_offsets = tl.arange(0, BLOCK_M)[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]

    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), dtype=tl.float32)
    ds_rowsum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, Lq, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_mask = offs_m < Lq
        qT = tl.load(qT_tile, boundary_check=(0, 1), padding_option="zero")
        do = tl.load(do_tile, boundary_check=(0, 1), padding_option="zero")
        lse = tl.load(LSE_ptr + row_base + offs_m, mask=m_mask, other=float("inf"))
        delta = tl.load(Delta_ptr + row_base + offs_m, mask=m_mask, other=0.0)
        sT = tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale + bias[:, None]       # [N, M], base 2
        pT = tl.exp2(sT - lse[None, :])
        dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :]) * grad_scale                       # the logits' gradient, scaled
        dsT_in = dsT.to(qT.dtype)
        dk += tl.dot(dsT_in, tl.trans(qT), input_precision=DOT_PRECISION)
        if KIND == 1:
            ds_rowsum += tl.sum(dsT, axis=1)
        dq = tl.dot(tl.trans(dsT_in), k, input_precision=DOT_PRECISION)      # [M, D]: this key block's share
        tl.atomic_add(DQacc_ptr + (row_base + m0) * BLOCK_D + dq_offsets, dq, mask=m_mask[:, None], sem="relaxed")
        qT_tile = tl.advance(qT_tile, (0, BLOCK_M))
        do_tile = tl.advance(do_tile, (BLOCK_M, 0))

    if KIND == 1:
        dk = dk - k.to(tl.float32) * ds_rowsum[:, None]
    tl.store(_tile(DK_ptr + b * stride_dkb + h * stride_dkh, Lk, D, stride_dkn, stride_dkd, n0, BLOCK_N, BLOCK_D),
             dk.to(DK_ptr.dtype.element_ty), boundary_check=(0, 1))
    tl.store(_tile(DV_ptr + b * stride_dvb + h * stride_dvh, Lk, DV, stride_dvn, stride_dvd, n0, BLOCK_N, BLOCK_DV),
             dv.to(DV_ptr.dtype.element_ty), boundary_check=(0, 1))


def _width(dtype):
    return "fp32" if dtype == torch.float32 else "16bit"


def _arch(device):
    """The backward table's architecture key: "sm90" on Hopper, else "sm80" (the interpreter included)."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9:
        return "sm90"
    return "sm80"


def _dot_precision(dtype):
    if dtype == torch.float32:
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return "ieee"


def _scales(kind, scale):
    """(qk_scale, bias_scale, grad_scale) in the kernels' base-2 units."""
    if kind == KIND_L2:
        return 2.0 * scale * LOG2E, scale * LOG2E, 2.0 * scale
    return scale * LOG2E, 0.0, scale


def key_bias(k, kind, scale, mask):
    """The fp32 per-key bias [B*H, Lk] (base 2) the attention kernels add to the logits, or None when there
    is nothing to add (dot logits, no mask)."""
    if kind == KIND_DOT and mask is None:
        return None
    B, H, Lk, D = k.shape
    bias = torch.empty((B * H, Lk), device=k.device, dtype=torch.float32)
    mask_t, stride_mask = (k, 0) if mask is None else (mask, mask.stride(0))
    grid = (triton.cdiv(Lk, KEY_BIAS_CONFIG["BLOCK_N"]), B * H)
    _key_bias_kernel[grid](k, mask_t, bias, H, Lk, D, _scales(kind, scale)[1], *k.stride(), stride_mask,
                           KIND=kind, HAS_MASK=mask is not None, BLOCK_D=head_block(D), **KEY_BIAS_CONFIG)
    return bias


def forward(q, k, v, kind, scale, mask):
    """Returns (out, lse) with lse [B, H, Lq] fp32 in base 2."""
    B, H, Lq, D = q.shape
    Lk, DV = k.shape[2], v.shape[3]
    out = torch.empty((B, H, Lq, DV), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    bd, bdv = head_block(D), head_block(DV)
    cfg = FWD_CONFIGS[(max(bd, bdv), _width(q.dtype))]
    qk_scale = _scales(kind, scale)[0]
    bias = key_bias(k, kind, scale, mask)
    grid = (triton.cdiv(Lq, cfg["BLOCK_M"]), B * H)
    _attn_fwd_kernel[grid](
        q, k, v, q if bias is None else bias, out, lse, H, Lq, Lk, D, DV, qk_scale,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        HAS_BIAS=bias is not None, DOT_PRECISION=_dot_precision(q.dtype), BLOCK_D=bd, BLOCK_DV=bdv, **cfg,
    )
    return out, lse


def backward(do, q, k, v, out, lse, kind, scale, mask):
    B, H, Lq, D = q.shape
    Lk, DV = k.shape[2], v.shape[3]
    bd, bdv = head_block(D), head_block(DV)
    delta = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    dq_acc = torch.empty((B, H, Lq, bd), device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(Lq, DELTA_CONFIG["BLOCK_M"]), B * H)
    _attn_bwd_delta_kernel[grid](out, do, delta, dq_acc, H, Lq, DV, *out.stride(), *do.stride(), BLOCK_DV=bdv,
                                 BLOCK_D=bd, **DELTA_CONFIG)
    qk_scale, bias_scale, grad_scale = _scales(kind, scale)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    cfg = BWD_CONFIGS[(max(bd, bdv), _width(q.dtype), _arch(q.device))]
    mask_t, stride_mask = (q, 0) if mask is None else (mask, mask.stride(0))
    _attn_bwd_kernel[(triton.cdiv(Lk, cfg["BLOCK_N"]), B * H)](
        q, k, v, mask_t, do, lse, delta, dq_acc, dk, dv, H, Lq, Lk, D, DV, qk_scale, bias_scale, grad_scale,
        stride_mask, *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
        KIND=kind, HAS_MASK=mask is not None, DOT_PRECISION=_dot_precision(q.dtype), BLOCK_D=bd, BLOCK_DV=bdv,
        **cfg)
    if q.dtype == torch.float32 and D == bd and q.is_contiguous():
        return dq_acc, dk, dv
    # dQ in q's dtype and layout (what the op's fake kernel promises: empty_like(q)), cast in the copy.
    return torch.empty_like(q).copy_(dq_acc[..., :D]), dk, dv
