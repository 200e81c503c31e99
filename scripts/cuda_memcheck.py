"""A small forward + backward of each op through the CUDA extension (impl="cuda"), for compute-sanitizer:

    compute-sanitizer --tool memcheck --error-exitcode 3 python scripts/cuda_memcheck.py

Shapes are small (the sanitizer slows kernels ~100x) but cover partial tiles, a fully masked attention row,
tied q and k, and every dtype. Exit 0 and one line per case when every call returns finite values.
"""
import sys

import torch

import gigagan_kernels as gk


def modconv(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(3, 20, 9, 7, device="cuda", generator=g).to(dtype).requires_grad_()
    bank = (torch.randn(5, 24, 20, 3, 3, device="cuda", generator=g) * 0.1).to(dtype).requires_grad_()
    logits = torch.randn(3, 5, device="cuda", generator=g).to(dtype).requires_grad_()
    style = (torch.randn(3, 20, device="cuda", generator=g) * 0.3 + 1).to(dtype).requires_grad_()
    bias = torch.randn(24, device="cuda", generator=g).to(dtype).requires_grad_()
    noise = torch.randn(3, 1, 9, 7, device="cuda", generator=g).to(dtype).requires_grad_()
    y = gk.adaptive_modconv2d(x, bank, logits, style, bias, noise=noise, activation="lrelu", clamp=256.0,
                              impl="cuda")
    grads = torch.autograd.grad(y.float().square().sum(), (x, bank, logits, style, bias, noise))
    return [y, *grads]


def attention(dtype, kind):
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(2, 3, 37, 64, device="cuda", generator=g).to(dtype).requires_grad_()
    v = torch.randn(2, 3, 37, 64, device="cuda", generator=g).to(dtype).requires_grad_()
    mask = torch.rand(2, 37, device="cuda", generator=g) > 0.3
    mask[1] = False                                       # a sample with every key masked
    out = gk.attention(q, q, v, kind=kind, key_padding_mask=mask, impl="cuda")   # tied q and k
    grads = torch.autograd.grad(out.float().square().sum(), (q, v))
    return [out, *grads]


def main():
    if not torch.cuda.is_available():
        print("cuda_memcheck: needs a CUDA device", file=sys.stderr)
        return 2
    bad = 0
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for name, run in (("adaptive_modconv2d", lambda: modconv(dtype)),
                          ("attention l2", lambda: attention(dtype, "l2")),
                          ("attention dot", lambda: attention(dtype, "dot"))):
            tensors = run()
            torch.cuda.synchronize()
            finite = all(bool(torch.isfinite(t).all()) for t in tensors)
            bad += not finite
            print(f"{name} {str(dtype).replace('torch.', '')}: {'finite' if finite else 'NON-FINITE'}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
