"""Predicted GPU time of adaptive_modconv2d's formulations, from the work each stage does.

Each formulation is a list of stages (kernels or torch ops). A stage's time is the slowest of its
tensor-core FLOPs at the rate of the kernel class that runs them, its HBM bytes at the streaming
rate, and its serial steps, plus a launch overhead; the stages run one after another. The card's
rates are constants fit to the committed H200 measurements
(benchmarks/results/nvidia_h200_2026-11-26.csv); `python -m benchmarks.cost_model` prints every
prediction beside the latest measurement and `--check` fails when a measured formulation is missed
by more than 30%. Rates for kernels no GPU has timed yet are marked "unmeasured" below.

The dispatcher uses the model for three choices: impl="auto" on CUDA (the torch composite or
Triton), Triton's strategy ("weights" or "fused"), and the torch composite's form (modulated
activations or per-sample weights).

Notation, per call: B samples, Cin -> Cout channels, N filters of k x k, P = H*W pixels,
R = Cin*k*k the reduction length, wts = B*Cout*R per-sample weight elements, F = 2*B*Cout*R*P the
convolution's FLOPs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

MODES = ("fwd", "bwd", "fwd+bwd")


@dataclass(frozen=True)
class Card:
    name: str
    sms: int
    hbm: float                  # B/s that a torch elementwise pass or a streaming kernel reaches
    launch: float               # s per kernel launch in a sequence of dependent kernels
    bmm: float                  # FLOP/s, cuBLAS batched GEMM (unmeasured: the 8192^3 bf16 GEMM ran 790 TFLOP/s)
    implicit_gemm: float        # FLOP/s, our Triton implicit GEMMs on per-sample weights (unmeasured)
    dense_conv_fwd: tuple       # (s, FLOP/s): cuDNN dense convolution with one shared weight (the floor)
    dense_conv_bwd: tuple
    wide_conv_fwd: float        # FLOP/s, cuDNN with N*Cout output channels, NCHW, heuristic algorithm
    wide_conv_bwd: float
    grouped_conv_fwd: tuple     # (s per group, s per weight element, FLOP/s): cuDNN's B-group convolution
    grouped_conv_bwd: tuple
    fused_l2: float             # B/s of L2 tile traffic the "fused" strategy's GEMM kernels reached
    fused_dbank_step: float     # s per pixel step of the "fused" bank-gradient kernel
    fused_dbank_sample: float   # s per sample (its acq_rel atomics) of that kernel


# Fit to nvidia_h200_2026-11-26.csv (bf16; see benchmarks/NOTES.md "The cost model" for the fit):
# - hbm: a device copy moved 4.3 TB/s (device docs); torch's chains of elementwise passes reach ~3.6.
# - dense_conv: the floor provider, 38.7-155 GFLOP forward in 0.14-0.30 ms (280-510 TFLOP/s), backward
#   2F in 0.29-0.66 ms: a fixed cost plus a rate fits all three shapes within 20%.
# - wide_conv: the old torch composite's activation form (N*Cout = 8192 outputs), 310 GFLOP at 8x8 in
#   ~2.6 ms forward: cuDNN's heuristic NCHW algorithm, not the card.
# - grouped_conv: ref's per-sample-weight convolution. Forward 2.9 / 3.5 / 0.58 ms at 8x8 / 16x16 / 64x64
#   after its elementwise passes, solved for a per-group, per-weight-element and per-FLOP cost. Its
#   backward took ~0.21 ms per group at all three shapes, whatever the FLOPs (B launches of cuDNN's
#   grouped dgrad and wgrad), so it is modelled per group alone.
# - fused_*: the first Triton kernels. Their GEMMs move ~1.5 TB/s of L2 tile traffic (each program
#   re-reads and re-mixes its bank slice); the bank-gradient kernel runs ~1.1 us per pixel step and
#   ~3.1 us per sample's atomics, serially per program.
H200 = Card(
    name="NVIDIA H200", sms=132, hbm=3.6e12, launch=5e-6,
    bmm=550e12, implicit_gemm=350e12,
    dense_conv_fwd=(60e-6, 520e12), dense_conv_bwd=(160e-6, 600e12),
    wide_conv_fwd=120e12, wide_conv_bwd=560e12,
    grouped_conv_fwd=(9.9e-6, 8.1e-12, 224e12), grouped_conv_bwd=(210e-6, 0.0, math.inf),
    fused_l2=1.6e12, fused_dbank_step=1.1e-6, fused_dbank_sample=3.1e-6,
)


@dataclass(frozen=True)
class Stage:
    name: str
    seconds: float
    bound: str          # what limits it: "hbm", "mma", "serial" or "launch"


@dataclass(frozen=True)
class Shape:
    B: int
    Cin: int
    Cout: int
    H: int
    W: int
    N: int
    k: int
    element_size: int = 2

    @classmethod
    def of(cls, x_shape, bank_shape, element_size: int = 2) -> "Shape":
        B, Cin, H, W = (int(v) for v in x_shape)
        N, Cout, _, k, _ = (int(v) for v in bank_shape)
        return cls(B, Cin, Cout, H, W, N, k, element_size)

    @property
    def P(self): return self.H * self.W
    @property
    def R(self): return self.Cin * self.k * self.k
    @property
    def wts(self): return self.B * self.Cout * self.R
    @property
    def bank(self): return self.N * self.Cout * self.R
    @property
    def x(self): return self.B * self.Cin * self.P
    @property
    def y(self): return self.B * self.Cout * self.P
    @property
    def cols(self): return self.B * self.R * self.P
    @property
    def flops(self): return 2 * self.B * self.Cout * self.R * self.P


def _stage(card, name, *, hbm_bytes=0.0, flops=0.0, rate=1.0, serial=0.0, launches=1):
    parts = {"hbm": hbm_bytes / card.hbm, "mma": flops / rate, "serial": serial}
    bound = max(parts, key=parts.get)
    return Stage(name, parts[bound] + launches * card.launch, bound if parts[bound] > 0 else "launch")


def _grouped(card, name, s: Shape, constants, flops):
    per_group, per_weight, rate = constants
    return Stage(name, s.B * per_group + s.wts * per_weight + flops / rate + card.launch, "serial")


# ----------------------------------------------------------------------------------------------
# Formulations. Each returns (forward stages, backward stages) for the benchmark's call: bias,
# pixel noise and lrelu in the epilogue, demodulation on, all inputs requiring grad.
# ----------------------------------------------------------------------------------------------
def _epilogue_torch(card, s, e):
    # + noise, + bias, leaky_relu, * gain: four passes that read and write y.
    fwd = [_stage(card, "epilogue (4 torch passes)", hbm_bytes=8 * s.y * e, launches=4)]
    # their autograd: gain, lrelu mask, dbias and dnoise reductions.
    bwd = [_stage(card, "epilogue backward (torch)", hbm_bytes=12 * s.y * e, launches=6)]
    return fwd, bwd


def _ref(card, s: Shape):
    e = s.element_size
    epi_f, epi_b = _epilogue_torch(card, s, e)
    fwd = [
        _stage(card, "mix: einsum a x bank", hbm_bytes=(s.bank + s.wts) * e),
        # modulate, square, sum, rsqrt scale: 7 passes over the per-sample weights
        _stage(card, "modulate + demodulate (torch)", hbm_bytes=7 * s.wts * e, launches=5),
        _grouped(card, "grouped conv (groups=B)", s, card.grouped_conv_fwd, s.flops),
    ] + epi_f
    bwd = epi_b + [
        _grouped(card, "grouped conv backward", s, card.grouped_conv_bwd, 2 * s.flops),
        # autograd through scale, square, modulate and the mix: ~15 passes over the weights
        _stage(card, "weight chain backward (torch)", hbm_bytes=15 * s.wts * e, launches=10),
    ]
    return fwd, bwd


def _peer(card, s: Shape):
    """lucidrains/gigagan-pytorch's AdaptiveConv2DMod: the ref's steps, but the mix materialises the bank times
    the selection weights, [B, N, Cout, Cin, k, k], and reduces it over N (a strided reduction, counted twice).
    Rough (not part of --check): the first H200 run timed a rewrite of it, 8.4-12.8 ms forward at low res."""
    fwd, bwd = _ref(card, s)
    e = s.element_size
    extra_fwd = _stage(card, "mix: [B, N, ...] product, sum over N", hbm_bytes=4 * s.N * s.wts * e, launches=2)
    extra_bwd = _stage(card, "mix backward through [B, N, ...]", hbm_bytes=8 * s.N * s.wts * e, launches=4)
    return [extra_fwd] + fwd[1:], bwd + [extra_bwd]


def _torch_activations(card, s: Shape):
    """conv(x * s, all N filters) as one cuDNN convolution, mixed over N and scaled by d; d needs the mixed
    filters' norms (a [B, Cout, Cin, k, k] temporary)."""
    e = s.element_size
    epi_f, epi_b = _epilogue_torch(card, s, e)
    wide = s.N * s.flops
    fwd = [
        _stage(card, "x * style", hbm_bytes=2 * s.x * e),
        _stage(card, "conv with N*Cout filters (cuDNN)", flops=wide, rate=card.wide_conv_fwd),
        _stage(card, "mix over N", hbm_bytes=(s.N + 1) * s.y * e),
        _stage(card, "d: mixed filters, squared, summed", hbm_bytes=(s.bank + 4 * s.wts) * e, launches=3),
        _stage(card, "y * d", hbm_bytes=2 * s.y * e),
    ] + epi_f
    bwd = epi_b + [
        _stage(card, "conv backward", flops=2 * wide, rate=card.wide_conv_bwd),
        _stage(card, "mix / d / style backward", hbm_bytes=(2 * s.N + 8) * s.y * e + 6 * s.x * e, launches=8),
        _stage(card, "d backward through the mixed filters", hbm_bytes=(s.bank + 16 * s.wts) * e, launches=8),
    ]
    return fwd, bwd


def _torch_weights(card, s: Shape):
    """The composite's per-sample-weight form: Wmix = a @ bank (one matmul), y = d * bmm(Wmix, unfold(x * s))."""
    e = s.element_size
    epi_f, epi_b = _epilogue_torch(card, s, e)
    fwd = [
        _stage(card, "mix: a @ bank", hbm_bytes=(s.bank + s.wts) * e),
        _stage(card, "d: norms of the mixed filters", hbm_bytes=s.wts * e),
        _stage(card, "x * style, unfold", hbm_bytes=(3 * s.x + s.cols) * e, launches=2),
        _stage(card, "bmm", flops=s.flops, rate=card.bmm, hbm_bytes=(s.wts + s.cols + s.y) * e),
        _stage(card, "y * d", hbm_bytes=2 * s.y * e),
    ] + epi_f
    bwd = epi_b + [
        _stage(card, "bmm backward (2 GEMMs)", flops=2 * s.flops, rate=card.bmm,
               hbm_bytes=2 * (s.wts + s.cols + s.y) * e, launches=2),
        _stage(card, "fold, x / style backward", hbm_bytes=(2 * s.cols + 4 * s.x) * e, launches=3),
        _stage(card, "d backward", hbm_bytes=5 * s.wts * e, launches=3),
        _stage(card, "mix backward (2 GEMMs)", hbm_bytes=(2 * s.wts + 2 * s.bank) * e, launches=2),
    ]
    return fwd, bwd


def _triton_weights(card, s: Shape):
    """The "weights" strategy (gigagan_kernels/adaptive_modconv_triton.py): build the per-sample weights once
    (mix on tensor cores, style, sum of squares), then tensor-core GEMMs, fused epilogues and one reduction.
    Its plan (GEMM form, whether the backward rebuilds the weights) is the launcher's own."""
    from .adaptive_modconv_triton import group_size, plan_weights
    e = s.element_size
    plan = plan_weights((s.B, s.Cin, s.H, s.W), (s.N, s.Cout, s.Cin, s.k, s.k), e, needs_grad=True)
    bank_reads = -(-s.B // group_size(s.B))
    build = _stage(card, "build weights", hbm_bytes=(bank_reads * s.bank + s.wts) * e)
    bmm = plan.gemm == "bmm"
    fwd = [build]
    bwd = [_stage(card, "epilogue backward (1 kernel)", hbm_bytes=3 * s.y * e)]
    if not plan.keep:
        bwd.append(Stage("rebuild weights", build.seconds, build.bound))
    if bmm:
        fwd += [_stage(card, "im2col", hbm_bytes=(s.x + s.cols) * e),
                _stage(card, "bmm", flops=s.flops, rate=card.bmm, hbm_bytes=(s.wts + s.cols + s.y) * e),
                _stage(card, "epilogue (1 kernel)", hbm_bytes=3 * s.y * e)]
        bwd += [_stage(card, "bmm: columns' gradient", flops=s.flops, rate=card.bmm,
                       hbm_bytes=(s.wts + s.cols + s.y) * e),
                _stage(card, "col2im + im2col", hbm_bytes=2 * (s.x + s.cols) * e, launches=2),
                _stage(card, "bmm: weight gradient", flops=s.flops, rate=card.bmm, hbm_bytes=(s.wts + s.cols + s.y) * e)]
    else:
        fwd += [_stage(card, "implicit GEMM + epilogue", flops=s.flops, rate=card.implicit_gemm,
                       hbm_bytes=(s.wts + s.x + 2 * s.y) * e)]
        bwd += [_stage(card, "implicit GEMM: dx", flops=s.flops, rate=card.implicit_gemm,
                       hbm_bytes=(s.wts + s.x + s.y) * e),
                _stage(card, "implicit GEMM: weight gradient", flops=s.flops, rate=card.implicit_gemm,
                       hbm_bytes=(s.wts + s.x + s.y) * e)]
    bwd += [_stage(card, "reduce: dbank, dselect, dstyle", hbm_bytes=(s.wts + 2 * s.bank) * e)]
    return fwd, bwd


def _triton_fused(card, s: Shape):
    """The "fused" strategy: every (sample, pixel tile, Cout tile) program mixes its bank slice per K step."""
    e = s.element_size
    BK = 32
    p_tile, o_tile = (16, 128) if s.P <= 16 else (64, 128) if s.P <= 64 else (128, 64)
    tiles = -(-s.P // p_tile) * s.B * -(-s.Cout // o_tile)
    steps = -(-s.R // BK)
    l2 = tiles * steps * (s.N * BK * o_tile + p_tile * BK) * e
    fwd = [_stage(card, "demodulation", hbm_bytes=s.bank * e),
           _stage(card, "fused forward", serial=l2 / card.fused_l2)]
    n_pad = 1 << max(0, math.ceil(math.log2(s.N)))
    co, ci, bp = {1: (64, 64, 32), 2: (32, 64, 32), 4: (32, 32, 64), 8: (16, 32, 64)}.get(n_pad, (16, 16, 64))
    programs = -(-s.Cout // co) * -(-s.Cin // ci) * s.k * s.k
    per_program = s.B * (-(-s.P // bp) * card.fused_dbank_step + card.fused_dbank_sample)
    dx_tiles = -(-s.P // p_tile) * s.B * -(-s.Cin // o_tile)
    dx_l2 = dx_tiles * -(-s.Cout * s.k * s.k // BK) * (s.N * BK * o_tile + p_tile * BK) * e
    bwd = [_stage(card, "epilogue backward (torch, 12 fp32 passes)", hbm_bytes=12 * s.y * 4, launches=12),
           _stage(card, "dx (fused)", serial=dx_l2 / card.fused_l2),
           _stage(card, "bank gradient (serial per program)", serial=-(-programs // card.sms) * per_program)]
    return fwd, bwd


def _floor(card, s: Shape):
    (fixed_f, rate_f), (fixed_b, rate_b) = card.dense_conv_fwd, card.dense_conv_bwd
    return ([Stage("dense conv", fixed_f + s.flops / rate_f, "mma")],
            [Stage("dense conv backward", fixed_b + 2 * s.flops / rate_b, "mma")])


def _floor_weights(card, s: Shape):
    """bmm on im2col with precomputed per-sample weights: what the weights strategy can at best reach
    forward (its GEMM alone), and backward (two GEMMs)."""
    e = s.element_size
    fwd = [_stage(card, "im2col", hbm_bytes=(s.x + s.cols) * e),
           _stage(card, "bmm", flops=s.flops, rate=card.bmm, hbm_bytes=(s.wts + s.cols + s.y) * e)]
    bwd = [_stage(card, "bmm backward (2 GEMMs)", flops=2 * s.flops, rate=card.bmm,
                  hbm_bytes=2 * (s.wts + s.cols + s.y) * e, launches=2),
           _stage(card, "fold", hbm_bytes=(s.cols + s.x) * e)]
    return fwd, bwd


FORMULATIONS = {
    "ref": _ref,
    "peer": _peer,
    "torch_activations": _torch_activations,
    "torch_weights": _torch_weights,
    "triton_weights": _triton_weights,
    "triton_fused": _triton_fused,
    "floor": _floor,
    "floor_weights": _floor_weights,
}


def modconv_stages(formulation: str, x_shape, bank_shape, mode: str = "fwd+bwd", *, element_size: int = 2,
                   card: Card = H200) -> list[Stage]:
    if formulation not in FORMULATIONS:
        raise ValueError(f"modconv_stages: unknown formulation {formulation!r}; choose from {sorted(FORMULATIONS)}")
    if mode not in MODES:
        raise ValueError(f"modconv_stages: mode must be one of {MODES}, got {mode!r}")
    fwd, bwd = FORMULATIONS[formulation](card, Shape.of(x_shape, bank_shape, element_size))
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def modconv_seconds(formulation: str, x_shape, bank_shape, mode: str = "fwd+bwd", *, element_size: int = 2,
                    card: Card = H200) -> float:
    return sum(st.seconds for st in modconv_stages(formulation, x_shape, bank_shape, mode,
                                                   element_size=element_size, card=card))


def fastest(formulations, x_shape, bank_shape, mode: str = "fwd+bwd", **kwargs) -> str:
    return min(formulations, key=lambda f: modconv_seconds(f, x_shape, bank_shape, mode, **kwargs))
