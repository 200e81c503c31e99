"""Benchmark adaptive_modconv2d: forward, backward, forward+backward and peak memory.

Providers:
  ref             the naive composite every test uses as oracle (per-sample weights + grouped conv)
  ref_cl          the same on channels_last activations (what cuDNN's NHWC kernels get)
  peer            lucidrains/gigagan-pytorch's own AdaptiveConv2DMod (gigagan-pytorch 0.3.0, style = mod + 1),
                  with the epilogue its blocks apply after it (noise, bias, leaky ReLU * sqrt 2)
  torch           the plain-torch composite (its cheapest form per call)
  torch:gram      its Gram form: the activations as one GEMM a pass, d from the bank's Gram matrices (auto takes it
                  only where tuning measured it faster and its demodulation accurate on the tuned data)
  triton          the Triton kernels, strategy picked per shape; triton_weights / triton_fused force one;
                  triton_fused@<tiles> runs "fused" with the FUSED_SWEEP tiles <tiles> (stages3, o64, r16)
  auto            what a user gets by default (impl="auto")
  cuda            the CUDA C++ extension, when built
  floor           a dense F.conv2d (cuDNN) of the same shape with one shared weight: the lower bound
  floor_cl        the same on channels_last tensors
  floor_weights   bmm on tap-major im2col with precomputed per-sample weights: the most the "weights"
                  strategy can reach (its GEMMs alone)

cuDNN picks its algorithms by timing (torch.backends.cudnn.benchmark) for every provider; the timer's
warm-up runs that search.

    python -m benchmarks.bench_adaptive_modconv [--shapes lowres_8x8,...] [--providers ...] [--dtypes ...]
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from gigagan_kernels import adaptive_modconv, adaptive_modconv2d, adaptive_modconv2d_ref
from gigagan_kernels import backend
from gigagan_kernels.ops.adaptive_modconv2d import plans

from .common import bench_main, run_suite

OP = "adaptive_modconv2d"
# GigaGAN's low-res layers (Cin = Cout = 1024, N = 8) and its high-res layer (C = 256, N = 4).
GPU_SHAPES = {
    "lowres_4x4": dict(B=32, Cin=1024, Cout=1024, H=4, W=4, N=8, k=3),
    "lowres_4x4_n4": dict(B=32, Cin=1024, Cout=1024, H=4, W=4, N=4, k=3),
    "lowres_8x8": dict(B=32, Cin=1024, Cout=1024, H=8, W=8, N=8, k=3),
    "lowres_16x16": dict(B=32, Cin=1024, Cout=1024, H=16, W=16, N=8, k=3),
    "highres_64x64": dict(B=16, Cin=256, Cout=256, H=64, W=64, N=4, k=3),
}
CPU_SHAPES = {
    "cpu_16x16": dict(B=4, Cin=32, Cout=32, H=16, W=16, N=4, k=3),
    "cpu_torgb": dict(B=4, Cin=32, Cout=3, H=32, W=32, N=1, k=1),
    "cpu_d_predictor_4x4": dict(B=64, Cin=64, Cout=64, H=4, W=4, N=1, k=3),   # the tiny D's psi at batch 16
}
# The host mode (benchmarks/host.py): calls small enough that the host's cost shows, batch 1 among them, and the
# counted call of tests/test_kernels_count.py.
HOST_GPU_SHAPES = {
    "b1_4x4": dict(B=1, Cin=512, Cout=512, H=4, W=4, N=8, k=3),
    "b1_16x16": dict(B=1, Cin=512, Cout=512, H=16, W=16, N=4, k=3),
    "lowres_8x8": GPU_SHAPES["lowres_8x8"],
}
HOST_CPU_SHAPES = {
    "counted_4x4": dict(B=2, Cin=32, Cout=32, H=4, W=4, N=4, k=3),
    "counted_16x16": dict(B=2, Cin=16, Cout=16, H=16, W=16, N=4, k=3),
}
# The "fused" strategy with the tiles of ops/adaptive_modconv2d/plans.FUSED_SWEEP (timed last: a sweep, not a product).
FUSED_SWEEP_PROVIDERS = ("triton_fused@stages3", "triton_fused@o64", "triton_fused@r16")
PROVIDERS = ("ref", "ref_cl", "peer", "torch", "torch:gram", "triton", "triton_weights", "triton_fused", "auto", "cuda",
             "floor", "floor_cl", "floor_weights") + FUSED_SWEEP_PROVIDERS
PEER_PACKAGE = "gigagan-pytorch==0.3.0"


def peer_layer(weight_bank):
    """lucidrains' AdaptiveConv2DMod holding weight_bank as its weights."""
    from gigagan_pytorch import AdaptiveConv2DMod
    N, Cout, Cin, k, _ = weight_bank.shape
    layer = AdaptiveConv2DMod(Cin, Cout, k, demod=True, num_conv_kernels=N)
    layer.weights = torch.nn.Parameter(weight_bank.detach().clone(), requires_grad=weight_bank.requires_grad)
    return layer.to(weight_bank.device)


def peer_modconv2d(layer, x, select_logits, style, bias, *, noise):
    """The peer's layer, then the epilogue its generator blocks apply: + noise, + bias, lrelu * sqrt(2)."""
    # It modulates with (mod + 1); a bank of one filter takes no selection logits.
    y = layer(x, style - 1, select_logits if layer.adaptive else None)
    y = y + noise + bias[None, :, None, None]
    return F.leaky_relu(y, 0.2) * math.sqrt(2)


def floor_weights_inputs(inp):
    """Per-sample weights built once outside the timed region, tap-major as the "weights" strategy builds them."""
    w = inp["weight_bank"].detach()
    N, Cout, Cin, k, _ = w.shape
    a = torch.softmax(inp["select_logits"].detach().float(), dim=1).to(w.dtype)
    mixed = (a @ w.reshape(N, -1)).view(-1, Cout, Cin, k * k) * inp["style"].detach()[:, None, :, None]
    return mixed.transpose(2, 3).reshape(-1, Cout, k * k * Cin).contiguous().requires_grad_()


def floor_weights_conv(x, weights, k):
    """y = bmm(weights, tap-major im2col(x)): the weights strategy's forward GEMM, in plain torch."""
    B, Cin, H, W = x.shape
    cols = F.pad(x, (k // 2,) * 4).unfold(2, k, 1).unfold(3, k, 1)           # [B, Cin, H, W, k, k]
    cols = cols.permute(0, 4, 5, 1, 2, 3).reshape(B, k * k * Cin, H * W)
    return torch.bmm(weights, cols).view(B, -1, H, W)


def make_inputs(shape: dict, device, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, Cin, Cout, H, W, N, k = (shape[n] for n in ("B", "Cin", "Cout", "H", "W", "N", "k"))

    def rnd(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=g) * scale + shift).to(device=device, dtype=dtype).requires_grad_()

    return dict(x=rnd(B, Cin, H, W), weight_bank=rnd(N, Cout, Cin, k, k, scale=1 / math.sqrt(Cin * k * k)),
                select_logits=rnd(B, N), style=rnd(B, Cin, scale=0.2, shift=1.0), bias=rnd(Cout),
                noise=(torch.randn(B, 1, H, W, generator=g) * 0.1).to(device=device, dtype=dtype),
                dense_weight=rnd(Cout, Cin, k, k, scale=1 / math.sqrt(Cin * k * k)))


def forward_fn(provider: str, inp: dict):
    """A closure computing the provider's output, and the tensors to differentiate."""
    if provider.endswith("_cl"):
        inp = dict(inp, x=inp["x"].detach().to(memory_format=torch.channels_last).requires_grad_())
        provider = provider[:-3]
    params = [inp[n] for n in ("x", "weight_bank", "select_logits", "style", "bias")]
    if provider == "floor":
        w = inp["dense_weight"]
        if not inp["x"].is_contiguous():
            w = w.detach().to(memory_format=torch.channels_last).requires_grad_()
        return (lambda: F.conv2d(inp["x"], w, inp["bias"], padding=w.shape[-1] // 2)), [inp["x"], w, inp["bias"]]
    if provider == "floor_weights":
        weights = floor_weights_inputs(inp)
        k = inp["weight_bank"].shape[-1]
        return (lambda: floor_weights_conv(inp["x"], weights, k)), [inp["x"], weights]
    if provider == "peer":
        layer = peer_layer(inp["weight_bank"])
        wrt = [inp["x"], layer.weights] + params[2 if layer.adaptive else 3:]
        return (lambda: peer_modconv2d(layer, inp["x"], inp["select_logits"], inp["style"], inp["bias"],
                                       noise=inp["noise"])), wrt
    if provider == "ref":
        return (lambda: adaptive_modconv2d_ref(*params, noise=inp["noise"], activation="lrelu")), params
    if provider.startswith("triton_"):
        strategy, _, tiles = provider.split("_", 1)[1].partition("@")

        def run_strategy():
            with adaptive_modconv.use_strategy(strategy), (plans.use_fused_tiles(tiles) if tiles else
                                                           contextlib.nullcontext()):
                return adaptive_modconv2d(*params, noise=inp["noise"], activation="lrelu", impl="triton")
        return run_strategy, params
    return (lambda: adaptive_modconv2d(*params, noise=inp["noise"], activation="lrelu", impl=provider)), params


def available(provider: str, device: torch.device) -> str | None:
    """None when the provider can be timed on this device, else why not."""
    if provider in ("ref", "ref_cl", "floor", "floor_cl", "floor_weights", "torch", "torch:gram", "auto"):
        return None
    if provider == "peer":
        try:
            import gigagan_pytorch  # noqa: F401
        except ImportError as e:
            return f"{PEER_PACKAGE} is not importable ({e}); pip install --no-deps {PEER_PACKAGE} and its light deps"
        return None
    backend_name = "triton" if provider.startswith("triton") else provider
    if backend_name == "triton" and device.type == "cpu":
        return "the Triton interpreter is a correctness tool, not timed"
    return backend.unavailable_reason(backend_name, device, OP)


def setup(provider, shape, device, dtype):
    return forward_fn(provider, make_inputs(shape, device, dtype))


def host_providers() -> tuple:
    """The host mode's providers: auto, every candidate of the op, the floor."""
    import gigagan_kernels
    return ("auto",) + gigagan_kernels.candidates(OP) + ("floor",)


def dispatch_setup(provider, shape, device, dtype):
    """The op's dispatch (validation and choice, no launch) on the call the provider's closure makes, or None."""
    if provider == "floor":
        return None
    from gigagan_kernels.ops.adaptive_modconv2d import prepare
    inp = make_inputs(shape, device, dtype)
    params = [inp[n] for n in ("x", "weight_bank", "select_logits", "style", "bias")]
    return lambda: prepare(*params, noise=inp["noise"], activation="lrelu", impl=provider)


def run_host(device: torch.device, **kwargs):
    from .host import run_host_suite
    kwargs.setdefault("providers", host_providers())
    return run_host_suite(OP, device, gpu_shapes=HOST_GPU_SHAPES, cpu_shapes=HOST_CPU_SHAPES, setup=setup,
                          dispatch_setup=dispatch_setup, **kwargs)


def run(device: torch.device, **kwargs):
    kwargs.setdefault("providers", PROVIDERS)
    return run_suite(OP, device, gpu_shapes=GPU_SHAPES, cpu_shapes=CPU_SHAPES, setup=setup, available=available,
                     **kwargs)


def main(argv=None):
    bench_main(run, PROVIDERS, argv, __doc__)


if __name__ == "__main__":
    main()
