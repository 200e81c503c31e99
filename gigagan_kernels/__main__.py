"""`python -m gigagan_kernels`: what runs here and why not, in the spirit of `python -m xformers.info`.

Versions, the device, each op's backends (usable, or the reason not), what impl="auto" picks at the benchmark
shapes, and how the CUDA extension was built (from the extension itself).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys

import torch

from . import __version__, backend

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
            rows.append((f"{op} {impl}", status))
    return rows


def auto_rows(device: torch.device) -> list[tuple[str, str]]:
    """impl="auto" at the benchmark shapes: on CUDA the cost model's order, whatever the device here."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(checkout, "benchmarks", "__init__.py")) and checkout not in sys.path:
        sys.path.append(checkout)                        # the benchmarks live in the repository, not the package
    try:
        from benchmarks import bench_adaptive_modconv, bench_attention
    except ImportError:
        return [("benchmark shapes", "unavailable: run from a checkout of the repository (its benchmarks/)")]
    import importlib
    from . import adaptive_modconv
    attention_module = importlib.import_module(".attention", __package__)    # the package's `attention` is the function
    rows = []
    for name, s in bench_adaptive_modconv.GPU_SHAPES.items():
        x, bank = (s["B"], s["Cin"], s["H"], s["W"]), (s["N"], s["Cout"], s["Cin"], s["k"], s["k"])
        order = adaptive_modconv.auto_cuda_order(x, bank)
        detail = f"triton strategy {adaptive_modconv.triton_strategy(x, bank)}" if order[0] == "triton" else \
            f"torch form {adaptive_modconv.torch_form(x, bank, 'cuda')}"
        rows.append((f"adaptive_modconv2d {name}", f"{' > '.join(order)} ({detail})"))
    for name, s in bench_attention.GPU_SHAPES.items():
        q, k = (s["B"], s["H"], s["Lq"], s["D"]), (s["B"], s["H"], s["Lk"], s["D"])
        order = attention_module.auto_cuda_order(q, k, k, s["kind"], s["masked"], torch.bfloat16)
        rows.append((f"attention {name}", " > ".join(order)))
    here = backend.resolve_impl("auto", device, "attention", torch.float32) if device.type == "cpu" else None
    if here:
        rows.append(("on this CPU", f"auto runs {here!r} (the cost model orders above are for CUDA tensors)"))
    return rows


def extension_rows() -> list[tuple[str, str]]:
    try:
        from . import _C
    except ImportError as e:
        why = ("not built: " + ("torch is a CPU-only build" if torch.version.cuda is None else
                                "no nvcc at install time, or GIGAGAN_KERNELS_BUILD_CUDA=0 (README: Install)"))
        return [("gigagan_kernels._C", f"{why} [{type(e).__name__}: {e}]")]
    info = _C.build_info()
    rows = [("gigagan_kernels._C", _C.__file__)]
    rows += [(key, str(value)) for key, value in info.items()]
    rows.append(("ops", ", ".join(f"{op}: {'yes' if backend.cuda_extension_has(op) else 'no'}" for op in OPS)))
    return rows


def report() -> str:
    device = _device()
    sections = [("Versions", versions()), ("Device", device_rows()),
                (f"Backends per op, for {device.type} tensors", backend_rows(device)),
                ("impl='auto' on CUDA at the benchmark shapes (bf16)", auto_rows(device)),
                ("CUDA extension", extension_rows())]
    lines = []
    for title, rows in sections:
        lines.append(title)
        width = max((len(k) for k, _ in rows), default=0)
        lines += [f"  {k:<{width}}  {v}" for k, v in rows]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
