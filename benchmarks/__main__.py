"""Run the benchmark suite on the available device, append to the CSV, print the summary.

    python -m benchmarks [--quick] [--ops adaptive_modconv2d] [--providers ref,triton] [--dtypes bfloat16,float16]
                         [--csv PATH] [--no-plots] [--max-seconds S]
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
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    try:
        dtypes = parse_dtypes(args.dtypes)
    except ValueError as e:
        parser.error(str(e))
    print(f"benchmarks on {device_name(device)}; results appended to {args.csv}")
    ops = args.ops.split(",") if args.ops else list(BENCHES)
    if unknown := set(ops) - set(BENCHES):
        parser.error(f"--ops: unknown {sorted(unknown)}; choose from {list(BENCHES)}")
    modules = {op: importlib.import_module(BENCHES[op]) for op in ops}
    wanted = args.providers.split(",") if args.providers else None
    if wanted:
        known = {p for module in modules.values() for p in module.PROVIDERS}
        if unknown := set(wanted) - known:
            parser.error(f"--providers: unknown {sorted(unknown)}; choose from {sorted(known)}")
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else None
    for op, module in modules.items():
        print(f"{op}:")
        providers = tuple(p for p in module.PROVIDERS if p in wanted) if wanted else module.PROVIDERS
        module.run(device, csv_path=args.csv, quick=args.quick, providers=providers, dtypes=dtypes, deadline=deadline)
    text, paths = summary.write(args.csv, os.path.dirname(os.path.abspath(args.csv)), not args.no_plots)
    print("\n" + text)
    for p in paths:
        print(f"plot: {p}")


if __name__ == "__main__":
    main()
