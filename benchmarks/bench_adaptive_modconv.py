"""Benchmark adaptive_modconv2d: forward, backward, forward+backward and peak memory.

Providers:
  ref     the naive composite every test uses as oracle (per-sample weights + grouped conv)
  peer    the formulation of lucidrains/gigagan-pytorch, written by us from its description:
          broadcast the bank against the softmax weights to [B,N,Cout,Cin,k,k], sum over N,
          modulate and demodulate in separate passes, then the grouped conv
  triton  the fused kernels
  cuda    the CUDA C++ extension, when built
  floor   a dense F.conv2d (cuDNN) of the same shape with one shared weight: the lower bound

    python -m benchmarks.bench_adaptive_modconv [--shapes lowres_8x8,...] [--providers ...]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gigagan_kernels import adaptive_modconv2d, adaptive_modconv2d_ref
from gigagan_kernels import backend

from .common import bench_main, run_suite

OP = "adaptive_modconv2d"
# GigaGAN's low-res layers (Cin = Cout = 1024, N = 8) and its high-res layer (C = 256, N = 4).
GPU_SHAPES = {
    "lowres_8x8": dict(B=32, Cin=1024, Cout=1024, H=8, W=8, N=8, k=3),
    "lowres_16x16": dict(B=32, Cin=1024, Cout=1024, H=16, W=16, N=8, k=3),
    "highres_64x64": dict(B=16, Cin=256, Cout=256, H=64, W=64, N=4, k=3),
}
CPU_SHAPES = {
    "cpu_16x16": dict(B=4, Cin=32, Cout=32, H=16, W=16, N=4, k=3),
    "cpu_torgb": dict(B=4, Cin=32, Cout=3, H=32, W=32, N=1, k=1),
    "cpu_d_predictor_4x4": dict(B=64, Cin=64, Cout=64, H=4, W=4, N=1, k=3),   # the tiny D's psi at batch 16
}
PROVIDERS = ("ref", "peer", "torch", "triton", "cuda", "floor")


def peer_modconv2d(x, weight_bank, select_logits, style, bias, *, noise, eps=1e-8):
    """lucidrains/gigagan-pytorch's way: [B,N,...] broadcast, then separate modulate / demodulate passes."""
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = weight_bank.shape
    attn = select_logits.softmax(dim=-1)
    weights = (weight_bank[None] * attn[:, :, None, None, None, None]).sum(dim=1)     # [B,Cout,Cin,k,k]
    weights = weights * style[:, None, :, None, None]
    weights = weights * torch.rsqrt(weights.pow(2).sum(dim=(2, 3, 4), keepdim=True).clamp(min=eps))
    y = F.conv2d(x.reshape(1, B * Cin, H, W), weights.reshape(B * Cout, Cin, k, k), padding=k // 2, groups=B)
    y = y.reshape(B, Cout, H, W) + noise + bias[None, :, None, None]
    return F.leaky_relu(y, 0.2) * math.sqrt(2)


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
    params = [inp[n] for n in ("x", "weight_bank", "select_logits", "style", "bias")]
    if provider == "floor":
        w = inp["dense_weight"]
        return (lambda: F.conv2d(inp["x"], w, inp["bias"], padding=w.shape[-1] // 2)), [inp["x"], w, inp["bias"]]
    if provider == "peer":
        return (lambda: peer_modconv2d(*params, noise=inp["noise"])), params
    if provider == "ref":
        return (lambda: adaptive_modconv2d_ref(*params, noise=inp["noise"], activation="lrelu")), params
    return (lambda: adaptive_modconv2d(*params, noise=inp["noise"], activation="lrelu", impl=provider)), params


def available(provider: str, device: torch.device) -> str | None:
    """None when the provider can be timed on this device, else why not."""
    if provider in ("ref", "peer", "floor", "torch"):
        return None
    if provider == "triton" and device.type == "cpu":
        return "the Triton interpreter is a correctness tool, not timed"
    return backend.unavailable_reason(provider, device, OP)


def setup(provider, shape, device, dtype):
    return forward_fn(provider, make_inputs(shape, device, dtype))


def run(device: torch.device, **kwargs):
    kwargs.setdefault("providers", PROVIDERS)
    return run_suite(OP, device, gpu_shapes=GPU_SHAPES, cpu_shapes=CPU_SHAPES, setup=setup, available=available,
                     **kwargs)


def main(argv=None):
    bench_main(run, PROVIDERS, argv, __doc__)


if __name__ == "__main__":
    main()
