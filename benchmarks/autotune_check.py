"""Does auto pick the fastest candidate here? After auto's first call has tuned a shape, time auto and every runnable
candidate side by side in one process (interleaved rounds, medians of forward + backward) and compare.

    python -m benchmarks.autotune_check                    # the CPU benchmark shapes and 12 seeded random shapes
    python -m benchmarks.autotune_check --random 30 --seed 1 --rounds 15

The target (issue "auto that measures"): on CPU auto is within 1.15x of the fastest runnable candidate at every
shape; exit 1 otherwise. Random shapes: B 1-8, channels 8-128, images 2-32 px, N 1-8 filters; attention lengths
16-128. Decisions go to a fresh temporary cache, so every shape is tuned here.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

import torch

TARGET = 1.15


def modconv_case(B, Cin, Cout, H, W, N, k, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(B, Cin, H, W, generator=g), torch.randn(N, Cout, Cin, k, k, generator=g),
               torch.randn(B, N, generator=g), torch.randn(B, Cin, generator=g) + 1, torch.randn(Cout, generator=g)]
    for t in tensors:
        t.requires_grad_()
    noise = torch.randn(B, 1, H, W, generator=g)

    def run(impl):
        from gigagan_kernels import adaptive_modconv2d
        return adaptive_modconv2d(*tensors, noise=noise, activation="lrelu", impl=impl)
    return f"adaptive_modconv2d B{B} {Cin}->{Cout} {H}x{W} N{N} k{k}", "adaptive_modconv2d", run, tensors


def attention_case(B, H, Lq, Lk, D, kind, masked, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Lq, D, generator=g).requires_grad_()
    k = q if kind == "l2" and Lq == Lk else torch.randn(B, H, Lk, D, generator=g).requires_grad_()
    v = torch.randn(B, H, Lk, D, generator=g).requires_grad_()
    mask = torch.rand(B, Lk, generator=g) > 0.2 if masked else None

    def run(impl):
        from gigagan_kernels import attention
        return attention(q, k, v, kind=kind, key_padding_mask=mask, impl=impl)
    tensors = [q, v] if k is q else [q, k, v]
    return (f"attention B{B} H{H} {Lq}x{Lk} d{D} {kind}{' masked' if masked else ''}", "attention", run, tensors)


def cases(random_count: int, seed: int):
    from . import bench_adaptive_modconv, bench_attention
    out = []
    for i, s in enumerate(bench_adaptive_modconv.CPU_SHAPES.values()):
        out.append(modconv_case(s["B"], s["Cin"], s["Cout"], s["H"], s["W"], s["N"], s["k"], seed=i))
    for i, s in enumerate(bench_attention.CPU_SHAPES.values()):
        out.append(attention_case(s["B"], s["H"], s["Lq"], s["Lk"], s["D"], s["kind"], s["masked"], seed=i))
    rng = random.Random(seed)
    for i in range(random_count):
        if i % 3 == 2:
            L = rng.randint(16, 128)
            kind = rng.choice(["l2", "dot"])
            Lk = L if kind == "l2" else rng.randint(16, 128)
            out.append(attention_case(rng.randint(1, 8), rng.choice([1, 2, 4]), L, Lk, rng.choice([16, 32, 64]), kind,
                                      kind == "dot" and rng.random() < 0.5, seed=100 + i))
        else:
            size = rng.randint(2, 32)
            out.append(modconv_case(rng.randint(1, 8), rng.randint(8, 128), rng.randint(8, 128), size, size,
                                    rng.randint(1, 8), rng.choice([1, 3, 3]), seed=100 + i))
    return out


def side_by_side(run, tensors, names, rounds: int) -> dict:
    """Seconds of forward + backward per name, timed in interleaved rounds (drift hits every name alike) in a
    rotating order: the minimum over the rounds, since the other processes of a shared machine only ever add
    time, and the median."""
    times = {name: [] for name in names}
    for _ in range(2):                                        # warm-up (auto has tuned already)
        for name in names:
            torch.autograd.grad(run(name).sum(), tensors)
    for r in range(rounds):
        # Each round starts one name later: a call after a memory-hungry one pays its page faults, so every name
        # follows every other alike.
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            out = run(name)
            torch.autograd.grad(out, tensors, torch.ones_like(out))
            times[name].append(time.perf_counter() - t0)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random", type=int, default=12, help="seeded random shapes besides the benchmark shapes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    os.environ["GIGAGAN_KERNELS_AUTOTUNE"] = "on"
    os.environ["GIGAGAN_KERNELS_CACHE_DIR"] = tempfile.mkdtemp(prefix="gigagan-autotune-check-")
    from gigagan_kernels import autotune, dispatcher
    from gigagan_kernels.backend import triton_interpret
    if triton_interpret():
        parser.error("TRITON_INTERPRET is set: the interpreter keeps auto's untuned rule; unset it")
    device = "cpu"
    print(f"autotune check on {autotune.device_descriptor(torch.device(device))}, torch {torch.__version__}; "
          f"load average at the start {os.getloadavg()[0]:.1f}\n")
    print(f"Times: the minimum of {args.rounds} interleaved rounds of forward + backward (the median in brackets).\n")
    print("| shape | auto picked | auto ms | fastest | fastest ms | auto / fastest | every candidate, ms (median) |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for label, op, run, tensors in cases(args.random, args.seed):
        out = run("auto")                                     # the first call tunes
        torch.autograd.grad(out, tensors, torch.ones_like(out))
        record = [r for r in autotune.autotune_report() if r["op"] == op][-1]
        entry = dispatcher.REGISTRY[op]
        runnable = [n for n in entry.names if isinstance(record["candidates"].get(n), float)]
        measured = side_by_side(run, tensors, runnable + ["auto"], args.rounds)
        best = {name: m[0] for name, m in measured.items()}
        fastest = min(runnable, key=best.get)
        ratio = best["auto"] / best[fastest]
        worst = max(worst, ratio)
        every = ", ".join(f"{n} {best[n] * 1e3:.2f} ({measured[n][1] * 1e3:.2f})" for n in runnable)
        print(f"| {label} | {record['choice']} | {best['auto'] * 1e3:.2f} | {fastest} | {best[fastest] * 1e3:.2f} | "
              f"{ratio:.2f}{' MISS' if ratio > TARGET else ''} | {every} |")
        autotune.clear()                                       # the next case's record is the only one
    print(f"\nworst auto / fastest: {worst:.2f} (target <= {TARGET})")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
