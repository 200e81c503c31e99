"""The gigagan command line (also `python -m gigagan`).

Subcommands available now:
  bench    run the kernel benchmark suite on the available device and print the summary
  params   print each network's parameter count for a preset (built on the meta device)
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
    params = sub.add_parser("params", help="print each network's parameter count for a preset")
    params.add_argument("--preset", default="paper", help="tiny, small or paper (default: paper)")
    args = parser.parse_args(argv)
    if args.command == "params":
        return _params(args.preset)
    if args.command == "bench":
        from benchmarks.__main__ import main as bench_main
        forwarded = [] if args.full else ["--quick"]
        forwarded += ["--ops", args.ops] if args.ops else []
        forwarded += ["--csv", args.csv] if args.csv else []
        forwarded += ["--no-plots"] if args.no_plots else []
        bench_main(forwarded)
    return 0


def _params(preset: str) -> int:
    import warnings

    import torch

    from .config import PRESETS, get_preset
    from .model import GigaGAN
    if preset not in PRESETS:
        print(f"gigagan params: --preset must be one of {sorted(PRESETS)}, got {preset!r}", file=sys.stderr)
        return 2
    with warnings.catch_warnings(), torch.device("meta"):     # meta: no memory, no CLIP weights to miss
        warnings.simplefilter("ignore")
        counts = GigaGAN(get_preset(preset)).parameter_counts()
    paper = {"generator": 652.5e6, "discriminator": 381.4e6, "upsampler": 359.1e6}
    print(f"preset {preset!r}: trainable parameters per network")
    for name, n in counts.items():
        note = f"   (paper: {paper[name] / 1e6:.1f}M, {100 * (n / paper[name] - 1):+.1f}%)" \
            if preset == "paper" and name in paper else ""
        print(f"  {name:<18} {n:>14,d}  {n / 1e6:8.1f}M{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
