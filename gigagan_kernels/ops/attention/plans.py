"""attention's launch tables: what the Triton launchers may launch, in one module that the launchers, the cost
model (gigagan_kernels/cost_model.py) and the static kernel report (benchmarks/kernel_report.py) import. It
imports no Triton."""
from __future__ import annotations

# ----------------------------------------------------------------------------------------------
# Config table, keyed by the padded head dim: the one place the dispatcher and the kernel report read.
# Sized for sm_90 before any GPU timed them: 8 warps = two warpgroups, so a 128-row tile issues wgmma at
# m64 per warpgroup; K/V tiles of 64 keys forward and 128 keys backward (FlashAttention-2's choice at d64).
# Each entry compiles without spills for sm_80 and sm_90 (python -m benchmarks.kernel_report --check).
# ----------------------------------------------------------------------------------------------
_ATTN_CFG = lambda m, n, w, st: dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=st)  # noqa: E731
FWD_CONFIGS = {
    (32, "16bit"): _ATTN_CFG(128, 64, 8, 3), (32, "fp32"): _ATTN_CFG(128, 32, 8, 3),
    # 128x64 tiles spilled 144 B (fp32, sm_80); 128x32 does not.
    (64, "16bit"): _ATTN_CFG(128, 64, 8, 3), (64, "fp32"): _ATTN_CFG(128, 32, 8, 3),
    # fp32 at d128: 128x32 spilled 392 B and 64x32 48 B on sm_80.
    (128, "16bit"): _ATTN_CFG(128, 32, 8, 2), (128, "fp32"): _ATTN_CFG(32, 32, 4, 3),
}
# The backward keeps BLOCK_N keys with their fp32 dK, dV on chip per program and walks BLOCK_M queries per step,
# so it needs its own table per architecture: the largest tiles that compile without spills (searched with
# benchmarks/kernel_report.py's compiler over 8-12 candidates per entry). Keys: (padded head dim, operand
# width, "sm90" for Hopper or "sm80" for everything else).
BWD_CONFIGS = {
    # sm_90: 128 keys per program at d32/d64 (FlashAttention-2's tile), two warpgroups on wgmma.
    (32, "16bit", "sm90"): _ATTN_CFG(64, 128, 8, 2), (32, "fp32", "sm90"): _ATTN_CFG(32, 64, 8, 1),
    (64, "16bit", "sm90"): _ATTN_CFG(32, 128, 8, 2), (64, "fp32", "sm90"): _ATTN_CFG(32, 64, 8, 1),
    # d128 l2: every wgmma-shaped tile tried (16-64 x 64-128) spilled 48-1032 B; 32x32 compiles to HMMA only.
    (128, "16bit", "sm90"): _ATTN_CFG(32, 32, 8, 2), (128, "fp32", "sm90"): _ATTN_CFG(32, 32, 4, 1),
    # sm_80: 32x128 spilled 144 B at d64 (l2); 16x128 in one stage is clean.
    (32, "16bit", "sm80"): _ATTN_CFG(32, 128, 8, 2), (32, "fp32", "sm80"): _ATTN_CFG(32, 64, 8, 1),
    (64, "16bit", "sm80"): _ATTN_CFG(16, 128, 8, 1), (64, "fp32", "sm80"): _ATTN_CFG(16, 64, 8, 1),
    (128, "16bit", "sm80"): _ATTN_CFG(16, 32, 8, 2), (128, "fp32", "sm80"): _ATTN_CFG(16, 32, 8, 1),
}
KEY_BIAS_CONFIG = dict(BLOCK_N=64, num_warps=4, num_stages=1)
# 64 rows x 128 columns spilled 24-40 B (two fp32 tiles); 16 rows do not.
DELTA_CONFIG = dict(BLOCK_M=16, num_warps=4, num_stages=1)
MAX_HEAD_DIM = 128  # the largest key of the config tables


def head_block(d: int) -> int:
    """Padded head-dim block: tl.dot needs >= 16 and a power of two; table keys are 32, 64, 128."""
    return max(32, 1 << max(0, d - 1).bit_length())
