"""`python -m gigagan_kernels`: what runs here and why not, in the spirit of `python -m xformers.info`.

Versions, the device, each op's backends (usable, or the reason not), what impl="auto" picks at the benchmark
shapes, and how the CUDA extension was built (from the extension itself). It compiles nothing.

    python -m gigagan_kernels               the report
    python -m gigagan_kernels --version     the version
    python -m gigagan_kernels build-cuda    compile the CUDA extension now, ahead of its first use (CI, GPU jobs)
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import sys

import torch

from . import __version__, backend, cuda_extension

OPS = ("adaptive_modconv2d", "attention")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def versions() -> list[tuple[str, str]]:
    rows = [("gigagan_kernels", __version__), ("python", platform.python_version()),
            ("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none: CPU-only'})"),
            ("triton", _version("triton")), ("numpy", _version("numpy"))]
    from importlib import import_module
    extras = import_module("gigagan.extras").PACKAGES if importlib.util.find_spec("gigagan") else {}
    for module, (package, extra) in extras.items():
        rows.append((f"{package} [{extra}]", _version(package)))
    return rows


def device_rows() -> list[tuple[str, str]]:
    rows = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", f"{p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
                                      f"{p.multi_processor_count} SMs"))
    else:
        rows.append(("cuda", "no CUDA device visible"))
    rows.append(("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "unset")))
    rows.append((backend.ENV_VAR, os.environ.get(backend.ENV_VAR, "unset")))
    return rows


def backend_rows(device: torch.device) -> list[tuple[str, str]]:
    rows = []
    for op in OPS:
        for impl in backend.IMPLS:
            for dtype in (torch.bfloat16, torch.float32):
                reason = backend.unavailable_reason(impl, device, op, dtype)
                if reason is None:
                    status = "available"
                    break
            else:
                status = "unavailable: " + reason
            if impl == "cuda":
                status += " (opt-in, unmeasured)"         # until a GPU run measures the v2 kernels
            rows.append((f"{op} {impl}", status))
    return rows


def _prediction_label(formulation: str, measured: dict) -> str:
    """"measured on <file>: <ms>" when a committed row timed today's code of this formulation, else "predicted";
    the CUDA extension stays "opt-in, unmeasured" until a row measures it."""
    if formulation in measured:
        ms, csv_name = measured[formulation]
        return f"measured ({csv_name}: {ms:.3f} ms)"
    return "opt-in, unmeasured" if formulation == "cuda" else "predicted"


def auto_rows(device: torch.device) -> list[tuple[str, str]]:
    """What impl="auto" would run on CUDA at the benchmark shapes (bf16) without timing: the cost model's pick among
    the candidates it models, per mode, labelled measured (by which committed file) or predicted. With
    GIGAGAN_KERNELS_AUTOTUNE on (the default) auto times its candidates on the user's card instead, and the model
    only prunes and breaks ties."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(checkout, "benchmarks", "__init__.py")) and checkout not in sys.path:
        sys.path.append(checkout)                        # the benchmarks live in the repository, not the package
    try:
        from benchmarks import bench_adaptive_modconv, bench_attention
        from benchmarks import cost_model as check
        from benchmarks.common import RESULTS_DIR
    except ImportError:
        return [("benchmark shapes", "unavailable: run from a checkout of the repository (its benchmarks/)")]
    import glob
    from . import cost_model
    paths = sorted(p for p in glob.glob(os.path.join(RESULTS_DIR, "*.csv"))
                   if not os.path.basename(p).startswith(("cpu", "results")))
    measured: dict = {}
    for row in check.compare(paths) + check.attention_compare(paths):
        shape, _, mode, formulation, _, ms, csv_name = row
        if ms is not None:
            measured.setdefault((shape, mode), {})[formulation] = (ms, csv_name)
    modconv_candidates = {"ref": "ref", "torch:activations": "torch_activations", "torch:bmm": "torch_weights",
                          "triton:weights": "triton_weights", "triton:fused": "triton_fused", "cuda:weights": "cuda"}
    rows = []
    for name, s in bench_adaptive_modconv.GPU_SHAPES.items():
        x, bank = (s["B"], s["Cin"], s["H"], s["W"]), (s["N"], s["Cout"], s["Cin"], s["k"], s["k"])
        for mode in ("fwd", "fwd+bwd"):
            seconds = {c: cost_model.modconv_seconds(f, x, bank, mode) for c, f in modconv_candidates.items()
                       if c != "cuda:weights"}                  # opt-in: ranked last until measured
            pick = min(seconds, key=seconds.get)
            label = _prediction_label(modconv_candidates[pick], measured.get((name, mode), {}))
            rows.append((f"adaptive_modconv2d {name} {mode}", f"{pick} {seconds[pick] * 1e3:.3f} ms ({label})"))
    attention_candidates = {"ref": "ref", "torch:materialised": "torch_materialised",
                            "torch:sdpa-flash": "torch_sdpa_flash", "torch:sdpa-efficient": "torch_sdpa_efficient",
                            "triton": "triton"}
    for name, s in bench_attention.GPU_SHAPES.items():
        shape = check.attention_shape(s)
        for mode in ("fwd", "fwd+bwd"):
            seconds = {c: cost_model.attention_seconds(f, shape, mode) for c, f in attention_candidates.items()
                       if not (c == "torch:sdpa-flash" and s["masked"])}      # flash takes no mask
            pick = min(seconds, key=seconds.get)
            label = _prediction_label(attention_candidates[pick], measured.get((name, mode), {}))
            rows.append((f"attention {name} {mode}", f"{pick} {seconds[pick] * 1e3:.3f} ms ({label})"))
    from . import autotune
    rows.append(("autotune", f"{'on' if autotune.enabled() else 'off'} ({autotune.ENV_VAR}); decisions in "
                             f"{autotune.TABLE.path()} (python -m gigagan_kernels autotune --show)"))
    return rows


def extension_rows() -> list[tuple[str, str]]:
    module = cuda_extension.load()
    if module is None:
        return [("gigagan_kernels._C", cuda_extension.unavailable_reason())]
    info = module.build_info()
    rows = [("gigagan_kernels._C", module.__file__)]
    record = cuda_extension.build_record(os.path.dirname(module.__file__)) or {}
    if "seconds" in record:
        rows.append(("compiled", f"{record.get('built', '?')} in {record['seconds']:.0f} s"))
    rows += [(key, str(value)) for key, value in info.items()]
    rows.append(("ops", ", ".join(f"{op}: {'yes' if backend.cuda_extension_has(op) else 'no'}" for op in OPS)))
    return rows


def report() -> str:
    device = _device()
    sections = [("Versions", versions()), ("Device", device_rows()),
                (f"Backends per op, for {device.type} tensors", backend_rows(device)),
                ("impl='auto' on CUDA at the benchmark shapes (bf16), untimed: the cost model's pick",
                 auto_rows(device)),
                ("CUDA extension", extension_rows())]
    lines = []
    for title, rows in sections:
        lines.append(title)
        width = max((len(k) for k, _ in rows), default=0)
        lines += [f"  {k:<{width}}  {v}" for k, v in rows]
        lines.append("")
    return "\n".join(lines)


def build_cuda(args) -> int:
    """Compile the extension unless this version is built (then say so); one line on stderr when it cannot be."""
    built = cuda_extension.built_library()
    if built is not None:
        print(f"gigagan_kernels build-cuda: up to date: {built}")
        return 0
    if args.skip_without_toolchain and cuda_extension.toolchain_problem() is not None:
        print(f"gigagan_kernels build-cuda: skipped: {cuda_extension.toolchain_problem()}", file=sys.stderr)
        return 0
    try:
        library = cuda_extension.build(verbose=args.verbose)
    except (cuda_extension.CudaExtensionUnavailable, RuntimeError) as e:   # RuntimeError: the compiler's errors
        print(f"gigagan_kernels build-cuda: {e}", file=sys.stderr)
        return 1
    print(f"gigagan_kernels build-cuda: built {library}")
    return 0


def autotune_command(args) -> int:
    """Show, clear, export or import auto's decisions (gigagan_kernels/autotune.py)."""
    from . import autotune
    if args.clear:
        autotune.clear()
        print(f"cleared the decisions in this process and {autotune.TABLE.path()}")
    elif args.export:
        count = autotune.export_decisions(args.export)
        print(f"exported {count} decisions to {args.export}")
    elif args.import_file:
        try:
            count = autotune.import_decisions(args.import_file)
        except (OSError, ValueError) as e:
            print(f"python -m gigagan_kernels autotune: --import {args.import_file}: {e}", file=sys.stderr)
            return 1
        print(f"imported {count} decisions into {autotune.TABLE.path()}")
    else:
        records = autotune.autotune_report()
        print(f"{len(records)} decisions in {autotune.TABLE.path()}")
        for r in records:
            print(f"\n{r['op']}: {r['choice']} ({r['source']}, {r.get('device', '?')}, {r.get('timestamp', '?')})")
            print(f"  key: {r['key']}")
            for name, value in r.get("candidates", {}).items():
                print(f"  {name:<22} {autotune.format_seconds(value)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gigagan_kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"gigagan_kernels {__version__}")
    commands = parser.add_subparsers(dest="command")
    build = commands.add_parser("build-cuda", help="compile the CUDA extension now (nothing when already built)")
    build.add_argument("--verbose", action="store_true", help="print the compiler's commands and output")
    build.add_argument("--skip-without-toolchain", action="store_true",
                       help="exit 0, saying why, where there is no nvcc or torch is a CPU-only build")
    tune = commands.add_parser("autotune", help="show, clear, export or import auto's measured decisions")
    action = tune.add_mutually_exclusive_group()
    action.add_argument("--show", action="store_true", help="list the decisions (the default)")
    action.add_argument("--clear", action="store_true", help="forget every decision, here and on disk")
    action.add_argument("--export", metavar="FILE", help="write the decisions to FILE (JSON)")
    action.add_argument("--import", dest="import_file", metavar="FILE",
                        help="merge the decisions of an exported FILE into this machine's cache")
    args = parser.parse_args(argv)
    if args.command == "build-cuda":
        return build_cuda(args)
    if args.command == "autotune":
        return autotune_command(args)
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
