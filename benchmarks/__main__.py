"""Run the benchmark suite on the available device, append to the CSV, print the summary.

    python -m benchmarks [--quick] [--ops adaptive_modconv2d] [--providers ref,triton] [--dtypes bfloat16,float16]
                         [--csv PATH] [--no-plots] [--max-seconds S] [--host]

--host runs the host mode instead (benchmarks/host.py): per op, shape and candidate, device kernels and host
synchronisations per call, CPU microseconds per call and per dispatch, on a GPU the time to enqueue.
"""
from __future__ import annotations

import argparse
import importlib
import os
import time

import torch

from . import summary
from .common import DEFAULT_CSV, DTYPES, device_name, parse_dtypes

BENCHES = {"adaptive_modconv2d": "benchmarks.bench_adaptive_modconv", "attention": "benchmarks.bench_attention",
           "e2e": "benchmarks.bench_e2e"}
HOST_OPS = ("adaptive_modconv2d", "attention")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", default=None, help="comma-separated subset of " + ", ".join(BENCHES))
    parser.add_argument("--providers", default=None, help="comma-separated subset of each op's providers "
                        "(ref, triton, cuda, ...); a name an op does not have is ignored for that op")
    parser.add_argument("--dtypes", default=None, help="comma-separated subset of " + ", ".join(DTYPES)
                        + " for the op benchmarks (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--csv", default=DEFAULT_CSV)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="a time budget: cases not started by then are skipped, and listed as skipped")
    parser.add_argument("--host", action="store_true", help="the host mode: kernels, syncs and host time per call "
                        "(ops only)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    try:
        dtypes = parse_dtypes(args.dtypes)
    except ValueError as e:
        parser.error(str(e))
    print(f"benchmarks on {device_name(device)}; results appended to {args.csv}")
    ops = args.ops.split(",") if args.ops else [op for op in BENCHES if not args.host or op in HOST_OPS]
    if unknown := set(ops) - set(HOST_OPS if args.host else BENCHES):
        parser.error(f"--ops: unknown {sorted(unknown)}; choose from {list(HOST_OPS if args.host else BENCHES)}")
    modules = {op: importlib.import_module(BENCHES[op]) for op in ops}
    all_providers = {op: module.host_providers() if args.host else module.PROVIDERS for op, module in modules.items()}
    wanted = args.providers.split(",") if args.providers else None
    if wanted:
        # Known to any op of the mode, not only those selected: one provider list serves every --ops subset.
        known = set()
        for op in (HOST_OPS if args.host else BENCHES):
            module = importlib.import_module(BENCHES[op])
            known.update(module.host_providers() if args.host else module.PROVIDERS)
        if unknown := set(wanted) - known:
            parser.error(f"--providers: unknown {sorted(unknown)}; choose from {sorted(known)}")
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else None
    for op, module in modules.items():
        print(f"{op}:")
        providers = tuple(p for p in all_providers[op] if p in wanted) if wanted else all_providers[op]
        run = module.run_host if args.host else module.run
        run(device, csv_path=args.csv, quick=args.quick, providers=providers, dtypes=dtypes, deadline=deadline)
    text, paths = summary.write(args.csv, os.path.dirname(os.path.abspath(args.csv)), not args.no_plots)
    print("\n" + text)
    for p in paths:
        print(f"plot: {p}")


if __name__ == "__main__":
    main()
