"""Device kernels and host synchronisations of one forward + backward of each op's paths, at the call issue 29
counts (B = 2, N = 4, k = 3, C = 32 on 4x4 and C = 16 on 16x16; bias, pixel noise, leaky ReLU, clamp; every input
a leaf that needs its gradient; the output's gradient made before the count), with
gigagan_kernels.testing.count_kernels. "auto" is counted on its second call (its first chooses, on a GPU by
timing). On a GPU it runs the CUDA paths too and reports the card's own count (what the CUDA extension's C++ ops
launch inside themselves); on a CPU, with TRITON_INTERPRET=1, the Triton paths through the interpreter.

    python scripts/count_kernels.py [--dtype float32] [--check]

--check exits 1 if a path synchronises with the host, or the Triton "weights" path issues more than 12 kernels.
"""
from __future__ import annotations

import argparse
import math
import sys

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    import gigagan_kernels as gk
    from gigagan_kernels.dispatcher import REGISTRY
    from gigagan_kernels.testing import count_kernels
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    failures = []
    for C, H in ((32, 4), (16, 16)):
        g = torch.Generator().manual_seed(0)

        def leaf(*shape, scale=1.0, shift=0.0):
            return (torch.randn(*shape, generator=g) * scale + shift).to(device, dtype).requires_grad_()

        for impl in ("auto",) + tuple(REGISTRY["adaptive_modconv2d"].names):
            t = [leaf(2, C, H, H), leaf(4, C, C, 3, 3, scale=1 / math.sqrt(9 * C)), leaf(2, 4),
                 leaf(2, C, scale=0.2, shift=1.0), leaf(C)]
            noise = torch.randn(2, 1, H, H, generator=g).to(device, dtype)
            grad = torch.randn(2, C, H, H, generator=g).to(device, dtype)      # made outside the counted call

            def call():
                gk.adaptive_modconv2d(*t, noise=noise, activation="lrelu", clamp=256.0, impl=impl).backward(grad)
            try:
                if impl == "auto":
                    call()                                  # auto's first call chooses (and on a GPU, times)
                    for x in t:
                        x.grad = None
                with count_kernels(device) as count:
                    call()
            except gk.BackendUnavailableError as e:
                print(f"adaptive_modconv2d C={C} {H}x{H} {impl}: skipped ({str(e).splitlines()[0][:120]})")
                continue
            print(f"adaptive_modconv2d C={C} {H}x{H} {impl}: {count.describe()}; syncs {count.syncs}")
            if count.syncs:
                failures.append(f"{impl} synchronises: {count.syncs}")
            if impl == "triton:weights" and count.total > 12:
                failures.append(f"triton:weights issues {count.total} kernels at C={C} {H}x{H} (at most 12)")
    for kind, masked in (("l2", False), ("dot", True)):
        g = torch.Generator().manual_seed(1)
        mask = (torch.rand(2, 40, generator=g) > 0.3).to(device) if masked else None
        for impl in ("auto",) + tuple(REGISTRY["attention"].names):
            q, k, v = (torch.randn(2, 2, 40, 64, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
            grad = torch.randn(2, 2, 40, 64, generator=g).to(device, dtype)

            def call():
                gk.attention(q, k, v, kind=kind, key_padding_mask=mask, impl=impl).backward(grad)
            try:
                if impl == "auto":
                    call()
                    for x in (q, k, v):
                        x.grad = None
                with count_kernels(device) as count:
                    call()
            except gk.BackendUnavailableError as e:
                print(f"attention {kind}{' masked' if masked else ''} {impl}: skipped "
                      f"({str(e).splitlines()[0][:120]})")
                continue
            print(f"attention {kind}{' masked' if masked else ''} {impl}: {count.describe()}; syncs {count.syncs}")
            if count.syncs:
                failures.append(f"attention {impl} synchronises: {count.syncs}")
    for failure in failures:
        print("FAIL", failure, file=sys.stderr)
    return 1 if args.check and failures else 0


if __name__ == "__main__":
    sys.exit(main())
