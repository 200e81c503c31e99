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

from .ops.adaptive_modconv2d.plans import bank_pad, fused_configs, group_size, plan_weights

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
    fused_l2: float             # B/s of L2 tile traffic the first "fused" kernels' GEMMs reached
    fused_dbank_step: float     # s per pixel step of the first "fused" bank-gradient kernel
    fused_dbank_sample: float   # s per sample (its acq_rel atomics) of that kernel
    group_mma: float            # FLOP/s per SM of the group kernels' batched mma.sync dots (unmeasured)
    group_l2: float             # B/s per SM of their gathered tiles from L2 (unmeasured)
    group_step: float           # s per loop step of a group kernel: latency its pipeline cannot hide (unmeasured)
    cuda_core_fma: float        # fp32 FMA/s on the CUDA cores: 132 SMs x 128 lanes x 1.98 GHz (the card's peak)
    host_launch: float = 8e-6   # host s per device kernel an eager call issues (Python, dispatcher, launch; unmeasured)
    # host s of a torch.library custom op beyond its launches: (forward, backward, a forward that records autograd
    # plus its backward), from the attention custom op's fit below (H200_ATTENTION.host["triton_v1"]).
    host_custom_op: tuple = (0.055e-3, 0.45e-3, 0.95e-3)


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
    # The group kernels' constants are assumptions until a GPU run: mma.sync at ~40% of the card's dense
    # bf16 peak per SM, ~45 GB/s per SM (6 TB/s in all) of L2 gathers, and ~600 cycles per loop step
    # (an L2 round trip, the mix, two layout changes through shared memory, the batched dot).
    group_mma=400e12 / 132, group_l2=6e12 / 132, group_step=600 / 1.755e9,
    cuda_core_fma=132 * 128 * 1.98e9,
)


@dataclass(frozen=True)
class Stage:
    name: str
    seconds: float
    bound: str          # what limits it: "hbm", "mma", "serial" or "launch"
    launches: int = 1   # device kernels it issues (each costs the host card.host_launch)


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
    return Stage(name, parts[bound] + launches * card.launch, bound if parts[bound] > 0 else "launch", launches)


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


def _torch_gram(card, s: Shape):
    """The torch composite's Gram form (torch_forms._gram_form): the activations form as one cuBLAS GEMM a pass (the
    bank's N*Cout filters times the im2col columns of every sample, the batch folded into the GEMM's N) and d from
    the bank's Gram matrices G [Cout, Cin, N, N] (fp32), contracted with the squared styles and combined in fp64.
    No per-sample weights; G costs Cout*Cin*N^2*4 bytes whatever the batch, so the form wins where N^2 is small
    beside B*k^2 (small images, large batches)."""
    e = s.element_size
    epi_f, epi_b = _epilogue_torch(card, s, e)
    gram = s.Cout * s.Cin * s.N * s.N * 4
    bank32 = s.bank * 4
    wide = s.N * s.flops
    fwd = [
        _stage(card, "x * style, unfold, batch-folded columns", hbm_bytes=(3 * s.x + 3 * s.cols) * e, launches=3),
        _stage(card, "GEMM: N*Cout filters x columns", flops=wide, rate=card.bmm,
               hbm_bytes=(s.bank + s.cols + s.N * s.y) * e),
        _stage(card, "mix over N", hbm_bytes=(s.N + 1) * s.y * e),
        _stage(card, "Gram matrices (fp32)", hbm_bytes=s.bank * e + 2 * bank32 + gram, launches=2),
        _stage(card, "s^2 G, fp64 combine, rsqrt", hbm_bytes=gram + s.Cout * s.B * s.N * s.N * 12, launches=5),
        _stage(card, "y * d", hbm_bytes=2 * s.y * e),
    ] + epi_f
    bwd = epi_b + [
        _stage(card, "y * d backward", hbm_bytes=3 * s.y * e, launches=2),
        _stage(card, "d backward through H and G", hbm_bytes=3 * gram + 3 * bank32 + s.bank * e, launches=9),
        _stage(card, "mix backward", hbm_bytes=(2 * s.N + 1) * s.y * e, launches=2),
        _stage(card, "GEMM backward (2 GEMMs)", flops=2 * wide, rate=card.bmm,
               hbm_bytes=2 * (s.bank + s.cols + s.N * s.y) * e, launches=2),
        _stage(card, "fold, x / style backward", hbm_bytes=(3 * s.cols + 4 * s.x) * e, launches=4),
    ]
    return fwd, bwd


def _batched_gemm_stages(card, s: Shape):
    """The "weights" decomposition's GEMMs on im2col columns, with the forward epilogue: (forward, backward)."""
    e = s.element_size
    gemm = dict(flops=s.flops, rate=card.bmm, hbm_bytes=(s.wts + s.cols + s.y) * e)
    return ([_stage(card, "im2col", hbm_bytes=(s.x + s.cols) * e), _stage(card, "bmm", **gemm),
             _stage(card, "epilogue (1 kernel)", hbm_bytes=3 * s.y * e)],
            [_stage(card, "bmm: columns' gradient", **gemm),
             _stage(card, "col2im + im2col", hbm_bytes=2 * (s.x + s.cols) * e, launches=2),
             _stage(card, "bmm: weight gradient", **gemm)])


def _reduce_stage(card, s: Shape, design: str = "tap-runs"):
    """The weights strategy's reduction (_reduce_dweights_kernel): HBM bytes (the weight gradient once, the bank
    and its gradient) against its serial steps. One CTA per SM (150-200 registers x 8 warps), ~512 programs, each
    a loop over its output channels: design "per-tap" (before 2026-12-06) took a step per (output channel, tap),
    a stride-9 two-byte gather of the bank and three dependent small dots each, so each step waited on one L2
    round trip (card.group_step); "tap-runs" takes a step per output channel with every tap of the channel block
    at once (the bank's 9-element tap runs contiguous, 9x the bytes in flight), so a step is the slower of that
    latency and its bytes at the SM's share of HBM (the register budget caps a step at BLOCK_J = 64-128 columns,
    taps padded to 16: 8 channels of 3x3 taps for a group of 32, plans.REDUCE_CONFIGS)."""
    from .ops.adaptive_modconv2d.plans import reduce_columns
    e = s.element_size
    gb = group_size(min(s.B, 64))
    block_c = reduce_columns(s.k, gb, bank_pad(s.N), e)[1] if design == "tap-runs" else 64
    num_c = -(-s.Cin // block_c)
    o_split = min(s.Cout, max(1, -(-512 // num_c)))
    o_per = -(-s.Cout // o_split)
    programs = num_c * -(-s.Cout // o_per)
    waves = -(-programs // card.sms) * -(-s.B // gb)
    if design == "per-tap":
        steps, step = o_per * s.k * s.k, card.group_step
    else:
        step_bytes = (s.N + gb) * block_c * s.k * s.k * e             # bank rows and the group's gradient rows
        steps, step = o_per, max(card.group_step, step_bytes / (card.hbm / card.sms))
    return _stage(card, f"reduce: dbank, dselect, dstyle ({design})", hbm_bytes=(s.wts + 2 * s.bank) * e,
                  serial=waves * steps * step)


def _finish_stage(card, s: Shape):
    """_finish_grads_kernel: the small gradients from the per-program partials (one program per sample)."""
    return _stage(card, "finish: dselect, dstyle, dbias, dnoise", hbm_bytes=4 * s.B * (s.Cin + s.P) * 16)


def _triton_weights(card, s: Shape, reduce_design: str = "tap-runs"):
    """The "weights" strategy (gigagan_kernels/ops/adaptive_modconv2d/triton_weights.py): build the per-sample
    weights once (softmax, mix on tensor cores, style, sum of squares), then tensor-core GEMMs, fused epilogues, one
    reduction and one finishing kernel. Its plan (GEMM form, whether the backward rebuilds the weights) is the
    launcher's own. Launches per stage are the kernels the path issues (tests/test_kernels_count.py counts them)."""
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
        gemm_fwd, gemm_bwd = _batched_gemm_stages(card, s)
        fwd += gemm_fwd
        bwd += gemm_bwd
    else:
        # x goes channels-last for the implicit GEMMs (the benchmark's x is contiguous NCHW): a copy per pass.
        to_cl = _stage(card, "x to channels-last", hbm_bytes=2 * s.x * e)
        fwd += [to_cl, _stage(card, "implicit GEMM + epilogue", flops=s.flops, rate=card.implicit_gemm,
                              hbm_bytes=(s.wts + s.x + 2 * s.y) * e)]
        bwd += [to_cl,
                _stage(card, "implicit GEMM: dx", flops=s.flops, rate=card.implicit_gemm,
                       hbm_bytes=(s.wts + s.x + s.y) * e),
                _stage(card, "implicit GEMM: weight gradient", flops=s.flops, rate=card.implicit_gemm,
                       hbm_bytes=(s.wts + s.x + s.y) * e)]
    bwd += [_reduce_stage(card, s, reduce_design), _finish_stage(card, s)]
    return fwd, bwd


def _cuda_weights(card, s: Shape):
    """The CUDA extension (csrc/adaptive_modconv.{cu,cpp}): the "weights" decomposition with cuBLAS batched GEMMs at
    every resolution. Its build and reduction mix on FMAs: each is the slower of its HBM bytes and its FMAs (the
    reduction's issue overhead, a warp reduce-scatter and loads per sample, taken as 25%). Bank re-reads by the
    build's groups of 8 samples come from L2 and are not counted."""
    e = s.element_size
    plan = plan_weights((s.B, s.Cin, s.H, s.W), (s.N, s.Cout, s.Cin, s.k, s.k), e, needs_grad=True, gemm="bmm")
    build = _stage(card, "build weights (FMA mix)", hbm_bytes=(s.bank + s.wts) * e, flops=s.N * s.wts,
                   rate=card.cuda_core_fma)
    gemm_fwd, gemm_bwd = _batched_gemm_stages(card, s)
    fwd = [_stage(card, "softmax", launches=1), build] + gemm_fwd
    bwd = [_stage(card, "epilogue backward (1 kernel)", hbm_bytes=3 * s.y * e + 4 * s.y)]   # + g (fp32) for dnoise
    if not plan.keep:
        bwd.append(Stage("rebuild weights", build.seconds, build.bound))
    launches = -(-s.B // 32)
    bwd += gemm_bwd
    bwd += [_stage(card, "reduce: dbank, dselect, dstyle (FMA)", hbm_bytes=(s.wts + 2 * s.bank) * e,
                   flops=1.25 * 3 * s.N * s.wts, rate=card.cuda_core_fma, launches=3 * launches),
            _stage(card, "softmax backward, partial sums", launches=4)]
    return fwd, bwd


def _triton_fused_v1(card, s: Shape):
    """The first "fused" kernels (measured 2026-11-26): every (sample, pixel tile, Cout tile) program mixed its
    bank slice per K step on CUDA cores."""
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


def _group_kernel(card, name, programs, steps, step_flops, step_l2_bytes, *, per_program=0.0, hbm_bytes=0.0):
    """A group kernel: programs of one block per SM (255 registers x 8 warps), each a serial loop whose step
    costs the larger of its dots at the per-SM mma.sync rate, its L2 gathers at the per-SM L2 rate and the
    fixed step latency; whole waves of programs over the SMs, or HBM if that is slower."""
    step = max(step_flops / card.group_mma, step_l2_bytes / card.group_l2, card.group_step)
    waves = -(-programs // card.sms)
    return _stage(card, name, serial=waves * (steps * step + per_program), hbm_bytes=hbm_bytes)


def _triton_fused(card, s: Shape):
    """The "fused" strategy (gigagan_kernels/ops/adaptive_modconv2d/triton_fused.py): programs over a group of
    samples mix the bank once per K step for the group (a dot on the bank rows), then run the per-sample GEMMs as
    one batched dot; dx the same way; the bank gradient from on-chip per-sample gradients. Tiles are the launchers'
    own config tables, padding included."""
    e = s.element_size
    n_pad = bank_pad(s.N)
    kk = s.k * s.k
    fwd_cfg, dx_cfg, c = fused_configs(s.N, s.P)

    def conv(name, cfg, channels_out, reduction, hbm_bytes):
        g, bp, bk = cfg["GROUP"], cfg["BLOCK_P"], cfg["BLOCK_K"]
        bo = cfg.get("BLOCK_O", cfg.get("BLOCK_I"))
        programs = -(-s.B // g) * -(-s.P // bp) * -(-channels_out // bo)
        mix_flops = 2 * bo * bk * n_pad * max(16, g)
        step_flops = 2 * g * bp * bo * bk + mix_flops
        step_l2 = (s.N * bo * bk + g * bp * bk) * e
        return _group_kernel(card, name, programs, -(-reduction // bk), step_flops, step_l2, hbm_bytes=hbm_bytes)

    fwd = [conv("fused forward (mix, GEMM, d, epilogue)", fwd_cfg, s.Cout, s.R, (s.bank + s.x + 3 * s.y) * e)]
    g, bo, bk, bp = c["GROUP"], c["BLOCK_O"], c["BLOCK_K"], c["BLOCK_P"]
    programs = -(-s.Cout // bo) * -(-s.R // bk)
    groups = -(-s.B // g)
    p_steps = -(-s.P // bp)
    # Per group after its pixel loop: the mix, the demodulation term, two hi/lo dots, the partial stores;
    # costed as four loop steps.
    dbank = _group_kernel(card, "bank, selection and style gradients", programs, groups * p_steps,
                          2 * g * bo * bk * bp, (g * bo * bp + g * bp * bk) * e,
                          per_program=groups * 4 * card.group_step, hbm_bytes=(2 * s.bank + s.x + s.y) * e)
    bwd = [_stage(card, "epilogue backward (1 kernel)", hbm_bytes=3 * s.y * e),
           _stage(card, "style accumulators zeroed", hbm_bytes=4 * s.B * (s.Cin + s.R)),
           conv("dx (group-mixed tiles)", dx_cfg, s.Cin, s.Cout * kk, (s.bank + 2 * s.x + s.y) * e),
           dbank, _finish_stage(card, s)]
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
    "torch_gram": _torch_gram,
    "triton_weights": _triton_weights,
    "triton_fused": _triton_fused,
    "triton_fused_v1": _triton_fused_v1,
    "cuda": _cuda_weights,
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


# The formulations that run as one torch.library custom op (a forward op, a backward op): their host floor adds the
# op's dispatch and autograd to its launches.
CUSTOM_OP_FORMULATIONS = ("triton_weights", "triton_fused", "triton_fused_v1", "cuda")


def modconv_host_seconds(formulation: str, x_shape, bank_shape, mode: str = "fwd+bwd", *, element_size: int = 2,
                         card: Card = H200) -> float:
    """The host floor of one call: its device kernels times card.host_launch, plus a custom op's own dispatch and
    autograd. Unmeasured for this op (the attention custom op's fit); it decides small shapes."""
    fwd, bwd = FORMULATIONS[formulation](card, Shape.of(x_shape, bank_shape, element_size))
    launches = {"fwd": sum(st.launches for st in fwd), "bwd": sum(st.launches for st in bwd)}
    launches["fwd+bwd"] = launches["fwd"] + launches["bwd"]
    custom = dict(zip(MODES, card.host_custom_op)) if formulation in CUSTOM_OP_FORMULATIONS else {}
    return launches[mode] * card.host_launch + custom.get(mode, 0.0)


def modconv_seconds(formulation: str, x_shape, bank_shape, mode: str = "fwd+bwd", *, element_size: int = 2,
                    card: Card = H200) -> float:
    """Predicted time of one call: the larger of its host floor and its GPU stages (the host enqueues ahead of the
    card, so the two overlap)."""
    gpu = sum(st.seconds for st in modconv_stages(formulation, x_shape, bank_shape, mode,
                                                  element_size=element_size, card=card))
    return max(gpu, modconv_host_seconds(formulation, x_shape, bank_shape, mode, element_size=element_size,
                                         card=card))


def fastest(formulations, x_shape, bank_shape, mode: str = "fwd+bwd", **kwargs) -> str:
    return min(formulations, key=lambda f: modconv_seconds(f, x_shape, bank_shape, mode, **kwargs))


# ----------------------------------------------------------------------------------------------
# attention. Notation: BH = B*H programs' worth of heads, Lq queries, Lk keys, head dims D (q, k) and Dv;
# a forward's FLOPs are 2*BH*Lq*Lk*(D + Dv) (two matmuls), a backward's 2.5x that (five: S, dP, dV, dK,
# dQ) for flash-style kernels that keep the row LSE. Kernels tile the keys, so Lk counts rounded up to a
# tile. Small calls are bound by the host (Python, autograd, launches), not the card: each formulation
# has a host floor per mode, and a call takes the larger of its host floor and its GPU stages.
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionCard:
    name: str
    hbm: float
    launch: float
    flash_fwd: tuple        # (s, FLOP/s): torch SDPA, flash backend (fit: the floor provider)
    flash_bwd: tuple
    mem_efficient_fwd: tuple    # SDPA with a mask or bias (memory-efficient backend; fit: sdpa_bias at 77 keys)
    mem_efficient_bwd: tuple
    triton_v1: tuple        # (fwd FLOP/s, bwd FLOP/s): the first Triton kernels (32-key tiles, 7-matmul backward)
    triton_fwd: float       # FLOP/s of today's Triton forward (64-key tiles, fp32 key bias): unmeasured
    triton_bwd: float       # FLOP/s of the one-pass backward incl. its dQ atomics: unmeasured
    cuda_fwd: float         # FLOP/s of the CUDA extension's mma.sync forward: unmeasured
    cuda_bwd: float         # FLOP/s of its one-pass backward (dQ atomics, 1 block of 8 warps per SM): unmeasured
    host: dict              # formulation -> (fwd s, bwd s, fwd+bwd s): the host floor of one call


# Fit to nvidia_h200_2026-11-26.csv (bf16, B16 H8 d64):
# - flash: the floor provider, 550 GFLOP forward in 1.22 ms and 1.37 TFLOP backward in 3.18 ms at 4096
#   tokens; 1024 tokens fits the same rates within 5% after a fixed cost.
# - mem_efficient: SDPA with a [B, 1, 1, 77] additive mask (sdpa_bias at cross_1024x77), mostly fixed cost;
#   its rates at long sequences are not measured (the Hopper FLOP rates below are the cutlass kernel's
#   published ballpark, ~2/3 of flash).
# - triton_v1: the first kernels ran 271 TFLOP/s forward and 1.92 TFLOP (7 matmuls) in 9.5 ms backward.
# - host: the 256-token and 77-key calls, where every provider's time is flat in the work: ~0.45-0.5 ms per
#   backward through a custom op or the reference, 0.35-0.53 through the materialised composite (two runs), 0.09
#   for SDPA's own; a forward that records
#   autograd state (fwd+bwd) costs the custom op ~0.45 ms more than one without (fwd).
# - sdpa_bias is a baseline, not a route: with L2 its bias needs a gradient and its backward left the fused
#   backends (15.9 ms at 4096 tokens, slower than the forward's rate predicts 3x); only its masked dot
#   form is modelled.
H200_ATTENTION = AttentionCard(
    name="NVIDIA H200", hbm=3.6e12, launch=5e-6,
    flash_fwd=(10e-6, 460e12), flash_bwd=(70e-6, 440e12),
    mem_efficient_fwd=(50e-6, 300e12), mem_efficient_bwd=(60e-6, 250e12),
    triton_v1=(271e12, 203e12),
    triton_fwd=380e12, triton_bwd=300e12,
    # mma.sync (HMMA) cannot reach wgmma's rate on Hopper: FlashAttention-2, the same design, publishes ~60-70% of
    # FlashAttention-3's wgmma kernels on H100. Taken as 280 / 230 TFLOP/s until the card measures them.
    cuda_fwd=280e12, cuda_bwd=230e12,
    host={
        "ref": (0.125e-3, 0.50e-3, 1.0e-3), "torch_materialised": (0.11e-3, 0.43e-3, 0.82e-3),
        "sdpa_bias": (0.045e-3, 0.09e-3, 0.17e-3), "floor": (0.012e-3, 0.085e-3, 0.10e-3),
        "triton_v1": (0.055e-3, 0.45e-3, 0.95e-3),
        # unmeasured: v1's host work plus one launch forward (key bias) and two backward (key bias, dQ cast)
        "triton": (0.06e-3, 0.45e-3, 0.98e-3),
        "cuda": (0.06e-3, 0.45e-3, 0.98e-3),     # unmeasured: the same custom-op autograd as Triton's
        # unmeasured: SDPA's own plus the augmentation ops and the autograd.Function replaying its graph; on
        # this project's CPU machine that wrapper cost 0.08 ms and the L2 augmentation 0.2 ms per fwd+bwd
        "torch": (0.07e-3, 0.20e-3, 0.30e-3),
    },
)


@dataclass(frozen=True)
class AttentionShape:
    B: int
    H: int
    Lq: int
    Lk: int
    D: int
    Dv: int
    kind: str = "l2"
    masked: bool = False
    element_size: int = 2

    @property
    def BH(self): return self.B * self.H

    def fwd_flops(self, key_tile=1, width=None):
        lk = -(-self.Lk // key_tile) * key_tile
        d = width or self.D
        dv = width or self.Dv
        return 2.0 * self.BH * self.Lq * lk * (d + dv)

    def bytes(self, *dims_per_row):
        return self.BH * sum(dims_per_row) * self.element_size


def _attn_stage(card, name, *, fixed=0.0, flops=0.0, rate=1.0, hbm_bytes=0.0, launches=1):
    parts = {"mma": flops / rate, "hbm": hbm_bytes / card.hbm}
    bound = max(parts, key=parts.get)
    return Stage(name, fixed + parts[bound] + launches * card.launch, bound if parts[bound] > 0 else "launch")


def _attn_ref(card, s: AttentionShape, materialised_passes=(19, 16)):
    """Materialised logits: the time is passes over the Lq x Lk tensors (fit: 19 forward, 16 backward for ref)."""
    logits = s.BH * s.Lq * s.Lk * s.element_size
    mask = [_attn_stage(card, "mask: two fills, a product", hbm_bytes=8 * logits, launches=5)] if s.masked else []
    return ([_attn_stage(card, "logits, softmax, P @ V (materialised)", hbm_bytes=materialised_passes[0] * logits,
                         launches=10)] + mask,
            [_attn_stage(card, "autograd through them", hbm_bytes=materialised_passes[1] * logits, launches=12)])


def _attn_torch_materialised(card, s):
    """The torch composite before SDPA (baddbmm, softmax, bmm; fit: 12 passes forward, 10 backward)."""
    return _attn_ref(card, s, (12, 10))


def _attn_floor(card, s):
    (ff, rf), (fb, rb) = card.flash_fwd, card.flash_bwd
    return ([_attn_stage(card, "SDPA flash", fixed=ff, flops=s.fwd_flops(128), rate=rf, launches=0)],
            [_attn_stage(card, "SDPA flash backward", fixed=fb, flops=2.5 * s.fwd_flops(128), rate=rb, launches=0)])


def _attn_sdpa_bias(card, s):
    """SDPA with an explicit additive bias: [B, H, Lq, Lk] for L2 (written, read, and its gradient written
    backward), [B, 1, 1, Lk] for a mask alone."""
    (ff, rf), (fb, rb) = card.mem_efficient_fwd, card.mem_efficient_bwd
    bias = s.BH * s.Lq * s.Lk * s.element_size if s.kind == "l2" else 0
    return ([_attn_stage(card, "bias", hbm_bytes=bias, launches=3),
             _attn_stage(card, "SDPA memory-efficient", fixed=ff, flops=s.fwd_flops(64), rate=rf,
                         hbm_bytes=bias, launches=0)],
            [_attn_stage(card, "SDPA memory-efficient backward", fixed=fb, flops=2.5 * s.fwd_flops(64), rate=rb,
                         hbm_bytes=2 * bias, launches=0)])


def _attn_torch(card, s, kernel=None):
    """The torch composite's SDPA form (ops/attention/torch_sdpa.py): SDPA on augmented operands for L2 (head dim
    rounded up to a multiple of 8 past D + 2, q/k/v concatenated, the output sliced) on `kernel`, by default
    flash without a mask and memory-efficient with one, as torch picks (plus the empty-row fix: two tiny ops and
    one pass over the output). FlashAttention-2 runs a head dim rounded up to a multiple of 32 (its kernels are
    built for 32, 64, 96, ...: the augmented 72 runs as 96); cuDNN's runs multiples of 8, so 72 as 72, at the flash
    rates (unmeasured: cuDNN's fused attention on Hopper is published near FlashAttention-2's)."""
    kernel = kernel or ("efficient" if s.masked else "flash")
    width = -(-max(s.D + 2, s.Dv) // 8) * 8 if s.kind == "l2" else None
    computed = width
    if kernel == "flash":
        computed = -(-(width or max(s.D, s.Dv)) // 32) * 32
    (ff, rf), (fb, rb) = (card.mem_efficient_fwd, card.mem_efficient_bwd) if kernel == "efficient" else \
        (card.flash_fwd, card.flash_bwd)
    tile = 64 if kernel == "efficient" else 128
    fwd, bwd = [], []
    if width:
        rows = (s.Lq * (s.D + width), s.Lk * (s.D + width + s.Dv + width))
        fwd.append(_attn_stage(card, "key norms, concatenations", hbm_bytes=s.bytes(*rows), launches=4))
        bwd.append(_attn_stage(card, "gradients of the concatenations and norms",
                               hbm_bytes=s.bytes(s.Lq * (s.Dv + width), *rows), launches=5))
    if s.masked:
        fwd.append(_attn_stage(card, "empty-row fix", hbm_bytes=s.bytes(2 * s.Lq * s.Dv), launches=3))
        bwd.append(_attn_stage(card, "empty-row fix backward", hbm_bytes=s.bytes(2 * s.Lq * s.Dv), launches=1))
    name = {"efficient": "SDPA memory-efficient", "flash": "SDPA flash", "cudnn": "SDPA cuDNN"}[kernel]
    fwd.append(_attn_stage(card, name, fixed=ff, flops=s.fwd_flops(tile, computed), rate=rf, launches=0))
    bwd.append(_attn_stage(card, name + " backward", fixed=fb, flops=2.5 * s.fwd_flops(tile, computed), rate=rb,
                           launches=0))
    return fwd, bwd


def _attn_triton_v1(card, s):
    rf, rb = card.triton_v1
    return ([_attn_stage(card, "forward (32-key tiles)", flops=s.fwd_flops(32), rate=rf)],
            [_attn_stage(card, "delta", hbm_bytes=s.bytes(2 * s.Lq * s.Dv)),
             _attn_stage(card, "dK/dV and dQ kernels (7 matmuls)", flops=3.5 * s.fwd_flops(32), rate=rb, launches=2)])


def _attn_one_pass(card, s, fwd_rate, bwd_rate, *, key_bias_always, lean_backward=False):
    """A flash forward on 64-key tiles after a key-bias pass; backward = delta, key bias, one pass (dQ by fp32
    atomics), dQ scaled and cast. lean_backward (Triton's since 2026-12-06): the delta kernel zeroes the dQ
    buffer and the backward derives the key bias from the key block it holds, so neither launches."""
    needs_bias = key_bias_always or s.kind == "l2" or s.masked
    key_bias = _attn_stage(card, "key bias", hbm_bytes=s.bytes(s.Lk * s.D) if needs_bias else 0,
                           launches=1 if needs_bias else 0)
    dq_bytes = s.BH * s.Lq * s.D * 4
    prep = _attn_stage(card, "delta (dQ buffer zeroed in it)" if lean_backward else "delta, dQ buffer zeroed",
                       hbm_bytes=s.bytes(2 * s.Lq * s.Dv) + dq_bytes, launches=1 if lean_backward else 2)
    return ([key_bias, _attn_stage(card, "forward (64-key tiles)", flops=s.fwd_flops(64), rate=fwd_rate)],
            [prep] + ([] if lean_backward else [key_bias]) +
            [_attn_stage(card, "one-pass backward (5 matmuls, dQ atomics)", flops=2.5 * s.fwd_flops(128),
                         rate=bwd_rate),
             _attn_stage(card, "dQ cast", hbm_bytes=dq_bytes + s.bytes(s.Lq * s.D))])


def _attn_triton(card, s):
    """ops/attention/triton_flash.py: the key bias only where it is not zero (l2 or a mask)."""
    return _attn_one_pass(card, s, card.triton_fwd, card.triton_bwd, key_bias_always=False, lean_backward=True)


def _attn_cuda(card, s):
    """csrc/attention.{cu,cpp}: mma.sync, the key bias on every call, backward blocks of 128 keys."""
    return _attn_one_pass(card, s, card.cuda_fwd, card.cuda_bwd, key_bias_always=True)


ATTENTION_FORMULATIONS = {
    "ref": _attn_ref,
    "torch_materialised": _attn_torch_materialised,
    "sdpa_bias": _attn_sdpa_bias,
    "floor": _attn_floor,
    "torch": _attn_torch,
    "torch_sdpa_flash": lambda card, s: _attn_torch(card, s, "flash"),
    "torch_sdpa_efficient": lambda card, s: _attn_torch(card, s, "efficient"),
    "torch_sdpa_cudnn": lambda card, s: _attn_torch(card, s, "cudnn"),
    "triton_v1": _attn_triton_v1,
    "triton": _attn_triton,
    "cuda": _attn_cuda,
}


# The SDPA candidates share the torch composite's host work.
HOST_FLOOR_OF = {"torch_sdpa_flash": "torch", "torch_sdpa_efficient": "torch", "torch_sdpa_cudnn": "torch"}


def attention_seconds(formulation: str, shape: AttentionShape, mode: str = "fwd+bwd",
                      card: AttentionCard = H200_ATTENTION) -> float:
    """Predicted time of one call: per pass, the larger of the host floor and the GPU stages."""
    if formulation not in ATTENTION_FORMULATIONS:
        raise ValueError(f"attention_seconds: unknown formulation {formulation!r}; "
                         f"choose from {sorted(ATTENTION_FORMULATIONS)}")
    if mode not in MODES:
        raise ValueError(f"attention_seconds: mode must be one of {MODES}, got {mode!r}")
    fwd, bwd = ATTENTION_FORMULATIONS[formulation](card, shape)
    host_fwd, host_bwd, host_both = card.host[HOST_FLOOR_OF.get(formulation, formulation)]
    gpu_fwd, gpu_bwd = sum(st.seconds for st in fwd), sum(st.seconds for st in bwd)
    return {"fwd": max(host_fwd, gpu_fwd), "bwd": max(host_bwd, gpu_bwd),
            "fwd+bwd": max(host_both, gpu_fwd + gpu_bwd)}[mode]


def attention_stages(formulation: str, shape: AttentionShape, mode: str = "fwd+bwd",
                     card: AttentionCard = H200_ATTENTION) -> list[Stage]:
    fwd, bwd = ATTENTION_FORMULATIONS[formulation](card, shape)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]
