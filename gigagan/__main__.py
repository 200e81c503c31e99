"""The gigagan command line (also `python -m gigagan`).

Subcommands available now:
  bench    run the kernel benchmark suite on the available device and print the summary
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gigagan", description="GigaGAN with fused kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run the kernel benchmarks and print the summary")
    bench.add_argument("--full", action="store_true", help="full repetitions (default: quick)")
    bench.add_argument("--ops", default=None)
    bench.add_argument("--csv", default=None)
    bench.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "bench":
        from benchmarks.__main__ import main as bench_main
        forwarded = [] if args.full else ["--quick"]
        forwarded += ["--ops", args.ops] if args.ops else []
        forwarded += ["--csv", args.csv] if args.csv else []
        forwarded += ["--no-plots"] if args.no_plots else []
        bench_main(forwarded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
