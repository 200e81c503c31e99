"""Benchmark attention: forward, backward, forward+backward and peak memory.

Providers:
  ref        materialised logits (the oracle every test uses): the naive baseline
  sdpa_bias  what a user would write with torch alone: SDPA with the L2 identity as an explicit additive
             bias -scale*||k||^2 (and the mask folded in), which forces a materialised bias tensor
  torch      our SDPA composite: L2 as dot attention on augmented vectors, the mask as SDPA's bool mask
  torch:sdpa-flash, torch:sdpa-cudnn
             the composite on one SDPA kernel: FlashAttention-2 runs L2's augmented head dim 72 as 96, cuDNN as 72
  triton     the fused flash-style kernels
  cuda       the CUDA C++ extension, when built
  auto       what a user gets by default: the cost model's pick per call between torch and triton
  floor      torch SDPA dot-product attention (flash backend where available) of the same shape, no mask

    python -m benchmarks.bench_attention [--shapes self_4096,...] [--providers ...]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gigagan_kernels import attention, attention_ref
from gigagan_kernels import backend

from .common import bench_main, run_suite

OP = "attention"
# Self-attention at 16^2, 32^2 and 64^2 tokens (B=16, 8 heads x 64), and cross-attention to 77 text tokens.
GPU_SHAPES = {
    "self_256": dict(B=16, H=8, Lq=256, Lk=256, D=64, kind="l2", masked=False),
    "self_1024": dict(B=16, H=8, Lq=1024, Lk=1024, D=64, kind="l2", masked=False),
    "self_4096": dict(B=16, H=8, Lq=4096, Lk=4096, D=64, kind="l2", masked=False),
    "cross_1024x77": dict(B=16, H=8, Lq=1024, Lk=77, D=64, kind="dot", masked=True),
    # L2 with a key padding mask (e.g. a batch of variable-size images): SDPA cannot use its flash backend.
    "self_4096_masked": dict(B=16, H=8, Lq=4096, Lk=4096, D=64, kind="l2", masked=True),
}
CPU_SHAPES = {
    "cpu_self_256": dict(B=2, H=4, Lq=256, Lk=256, D=32, kind="l2", masked=False),
    "cpu_cross_256x77": dict(B=2, H=4, Lq=256, Lk=77, D=32, kind="dot", masked=True),
}
PROVIDERS = ("ref", "sdpa_bias", "torch", "torch:sdpa-flash", "torch:sdpa-cudnn", "triton", "cuda", "auto", "floor")
# The host mode (benchmarks/host.py): batch-1 attention, where the host's cost shows.
HOST_GPU_SHAPES = {
    "b1_self_256": dict(B=1, H=8, Lq=256, Lk=256, D=64, kind="l2", masked=False),
    "b1_cross_256x77": dict(B=1, H=8, Lq=256, Lk=77, D=64, kind="dot", masked=True),
}
HOST_CPU_SHAPES = {
    "cpu_self_64": dict(B=2, H=2, Lq=64, Lk=64, D=32, kind="l2", masked=False),
    "cpu_cross_64x77": dict(B=2, H=2, Lq=64, Lk=77, D=32, kind="dot", masked=True),
}


def make_inputs(shape, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, H, Lq, Lk, D = (shape[n] for n in ("B", "H", "Lq", "Lk", "D"))
    rnd = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype).requires_grad_()  # noqa: E731
    mask = None
    if shape["masked"]:
        lengths = torch.randint(1, Lk + 1, (B,), generator=g)       # captions of different lengths
        mask = (torch.arange(Lk)[None, :] < lengths[:, None]).to(device)
    return dict(q=rnd(B, H, Lq, D), k=rnd(B, H, Lk, D), v=rnd(B, H, Lk, D), mask=mask)


def sdpa_with_l2_bias(q, k, v, *, kind, mask):
    """L2 attention through SDPA: dot product at scale 2s plus the per-key bias -s||k||^2."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    bias = None
    if kind == "l2":
        bias = (-scale * k.float().square().sum(-1))[:, :, None, :].to(q.dtype)       # [B, H, 1, Lk]
        bias = bias.expand(-1, -1, q.shape[2], -1)
    if mask is not None:
        neg = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        bias = neg[:, None, None, :] if bias is None else bias + neg[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale * (2 if kind == "l2" else 1))


def forward_fn(provider, inp, shape):
    q, k, v, mask = inp["q"], inp["k"], inp["v"], inp["mask"]
    kind = shape["kind"]
    if provider == "floor":
        return lambda: F.scaled_dot_product_attention(q, k, v)
    if provider == "sdpa_bias":
        return lambda: sdpa_with_l2_bias(q, k, v, kind=kind, mask=mask)
    if provider == "ref":
        return lambda: attention_ref(q, k, v, kind=kind, key_padding_mask=mask)
    return lambda: attention(q, k, v, kind=kind, key_padding_mask=mask, impl=provider)


def available(provider, device):
    if provider in ("ref", "sdpa_bias", "floor", "torch", "auto"):
        return None
    if provider.startswith("torch:sdpa-"):
        return None if device.type == "cuda" else "SDPA's GPU kernels (on CPU the torch provider runs its flash)"
    if provider == "triton" and device.type == "cpu":
        return "the Triton interpreter is a correctness tool, not timed"
    return backend.unavailable_reason(provider, device, OP)


def setup(provider, shape, device, dtype):
    inp = make_inputs(shape, device, dtype)
    return forward_fn(provider, inp, shape), [inp["q"], inp["k"], inp["v"]]


def host_providers() -> tuple:
    """The host mode's providers: auto, every candidate of the op, the floor."""
    import gigagan_kernels
    return ("auto",) + gigagan_kernels.candidates(OP) + ("floor",)


def dispatch_setup(provider, shape, device, dtype):
    """The op's dispatch (validation and choice, no launch) on the call the provider's closure makes, or None."""
    if provider in ("floor", "sdpa_bias"):
        return None
    from gigagan_kernels.ops.attention import prepare
    inp = make_inputs(shape, device, dtype)
    return lambda: prepare(inp["q"], inp["k"], inp["v"], kind=shape["kind"], key_padding_mask=inp["mask"],
                           impl=provider)


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
