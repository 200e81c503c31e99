"""adaptive_modconv2d's launch tables and plans: what the Triton launchers may launch and how a call is
split, in one module that the launchers, the cost model (gigagan_kernels/cost_model.py) and the static kernel
report (benchmarks/kernel_report.py) import. It imports no Triton, so the cost model runs without it.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

from ...backend import thread_override
from .common import workspace_bytes

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
# The reduction takes a step per output channel with every tap of BLOCK_J // TAPS_PAD channels (reduce_columns),
# keyed by (GROUP_B, N_PAD, operand width). The largest spill-free BLOCK_J in the static report (sm_80 and sm_90,
# triton 3.8): 16-bit (32, 16) at 128 needs 1 stage (250 registers; 2 stages spilled 8 B), (16, 16) at 256 spilled
# 112-144 B; fp32 spilled 8-16 B at 128 for groups of 32 and 64 (N_PAD 32 even at 64). Per-tap steps (64, 64 and 32
# channels of one tap, before 2026-12-06) were predicted latency-bound (benchmarks/NOTES.md).
_REDUCE = lambda j, stages: dict(BLOCK_J=j, num_warps=8, num_stages=stages)  # noqa: E731
REDUCE_CONFIGS = {
    (16, 16, "16bit"): _REDUCE(128, 2), (16, 32, "16bit"): _REDUCE(128, 1),
    (32, 16, "16bit"): _REDUCE(128, 1), (32, 32, "16bit"): _REDUCE(64, 2),
    (64, 16, "16bit"): _REDUCE(64, 1), (64, 32, "16bit"): _REDUCE(32, 1),
    (16, 16, "fp32"): _REDUCE(128, 2), (16, 32, "fp32"): _REDUCE(128, 1),
    (32, 16, "fp32"): _REDUCE(64, 2), (32, 32, "fp32"): _REDUCE(32, 2),
    (64, 16, "fp32"): _REDUCE(64, 1), (64, 32, "fp32"): _REDUCE(32, 1),
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
# The epilogue backward: one program per (sample, 16 output channels) walks the sample's pixels, so its channel sums
# are complete (B * Cout / 16 programs: 2048 at GigaGAN's low-res layers, 256 at its 64x64 layer). 8 warps: at 4
# (16 elements a thread, five 64-bit pointer tiles) the full-noise variant took 255 registers and spilled 24 B on
# sm_80; at 8, 164-190 registers and no spills (static report).
EPILOGUE_BWD_CONFIG = dict(BLOCK_O=16, BLOCK_P=128, num_warps=8, num_stages=1)
# The finishing kernel: one program per sample (and one for the bias) sums 32 partial rows a step.
FINISH_CONFIG = dict(BLOCK_J=32, BLOCK_C=128, num_warps=4, num_stages=1)

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


def next_power_of_2(n: int) -> int:
    """triton.next_power_of_2, without importing Triton."""
    return 1 << max(0, int(n) - 1).bit_length()


# ---- strategy "weights" ------------------------------------------------------------------------
MAX_GROUP_B = max(BUILD_CONFIGS)
assert {key[0] for key in REDUCE_CONFIGS} == set(BUILD_CONFIGS)


def group_size(B: int) -> int:
    """Samples that share one bank read in the build and reduce kernels (a tensor-core dot needs >= 16)."""
    return min(MAX_GROUP_B, max(16, next_power_of_2(B)))


def bank_pad(N: int) -> int:
    return max(16, next_power_of_2(N))


def pixel_key(P: int) -> str:
    return "p64" if P <= 64 else "p128"


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


def reduce_config(group: int, n_pad: int, element_size: int) -> dict:
    return REDUCE_CONFIGS[(group, n_pad, "fp32" if element_size == 4 else "16bit")]


def reduce_columns(k: int, group: int, n_pad: int, element_size: int = 2) -> tuple:
    """(TAPS_PAD, BLOCK_C) of the reduction: the k*k taps padded to a power of two, and as many channels as fill
    its BLOCK_J columns (a dot needs >= 16)."""
    taps_pad = next_power_of_2(k * k)
    return taps_pad, max(1, reduce_config(group, n_pad, element_size)["BLOCK_J"] // taps_pad, -(-16 // taps_pad))


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
