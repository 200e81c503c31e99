"""Static kernel report: AOT-compile every Triton config the dispatcher can pick, for sm_80 and sm_90,
and read registers, shared memory, spills and tensor-core instructions from the cubin; then read the same
from every kernel of the built CUDA extension (gigagan_kernels._C, compiled by `python -m gigagan_kernels
build-cuda` for sm_80 and sm_90). Needs no GPU.

    python -m benchmarks.kernel_report            # print the table
    python -m benchmarks.kernel_report --check    # also exit 1 on a compile error, a spill, or a
                                                  # GEMM config without tensor-core instructions
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile

TARGETS = (80, 90)
# Shared memory a block may use (the opt-in maximum): a config over it fails to launch.
SHARED_MEMORY_LIMIT = {"sm_80": 166912, "sm_90": 232448}


def _tool(name: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def all_specs():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("the kernel report compiles real kernels: run it without TRITON_INTERPRET=1")
    from . import kernel_specs
    return ([("adaptive_modconv2d", s) for s in kernel_specs.adaptive_modconv_specs()]
            + [("attention", s) for s in kernel_specs.attention_specs()])


def _signature(spec):
    fn = spec["kernel"]
    sig = {}
    for name in fn.arg_names:
        if name in spec["constexprs"] or name in spec.get("ones", ()):
            sig[name] = "constexpr"
        elif name in spec["pointers"]:
            sig[name] = "*" + spec["pointers"][name]
        elif name in spec["floats"]:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _source(spec):
    """What Triton's JIT sees at a real launch: every pointer 16-byte aligned (fresh torch allocations), the
    integers a spec lists under "divisible" multiples of 16 and those under "ones" equal to 1 (the JIT
    specialises both; that is what lets a load vectorise and pipeline)."""
    from triton.compiler import ASTSource
    fn = spec["kernel"]
    aligned = set(spec["pointers"]) | set(spec.get("divisible", ()))
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if name in aligned}
    constexprs = {**spec["constexprs"], **{name: 1 for name in spec.get("ones", ())}}
    return ASTSource(fn=fn, signature=_signature(spec), constexprs=constexprs, attrs=attrs)


def _read_cubin(cubin: bytes):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        res = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", res)
    if not m:
        raise RuntimeError(f"cannot read cuobjdump -res-usage output: {res[:200]!r}")
    regs, stack, _shared, local = (int(g) for g in m.groups())
    # Spilled registers live in the stack frame (STL/LDL in SASS); LOCAL counts other local arrays.
    spill_instructions = len(re.findall(r"\b(?:STL|LDL)\b", sass))
    mma = {op: len(re.findall(rf"\b{op}\b", sass)) for op in ("HMMA", "HGMMA")}
    return regs, stack + local, spill_instructions, mma


def compile_one(job):
    """Compile one (op, spec, target); returns a row dict. Runs in a worker process."""
    _op, idx, cc = job
    op_name, spec = all_specs()[idx]
    import triton
    from triton.backends.compiler import GPUTarget

    row = dict(op=op_name, kernel=spec["kernel"].__name__, config=spec["config"], dtype=spec["dtype"],
               target=f"sm_{cc}", warps=spec["num_warps"], stages=spec["num_stages"], regs=None, shared=None,
               spill=None, spill_ops=None, hmma=None, hgmma=None, error="", tensor_cores=spec["tensor_cores"])
    try:
        k = triton.compile(_source(spec), target=GPUTarget("cuda", cc, 32),
                           options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})
        regs, stack, spill_instructions, mma = _read_cubin(k.asm["cubin"])
        row.update(regs=regs, shared=k.metadata.shared, spill=stack, spill_ops=spill_instructions,
                   hmma=mma["HMMA"], hgmma=mma["HGMMA"])
    except Exception as e:  # a compile error is a finding, reported in the table
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return row


def problems(row) -> list[str]:
    out = []
    if row["error"]:
        out.append("compile error")
        return out
    if row["spill"] or row["spill_ops"]:
        out.append(f"spills {row['spill']} B ({row['spill_ops']} STL/LDL)")
    limit = SHARED_MEMORY_LIMIT.get(row.get("target"))
    if limit is not None and row.get("shared") is not None and row["shared"] > limit:
        out.append(f"{row['shared']} B of shared memory, over {row['target']}'s {limit} B per block")
    if row["tensor_cores"] and not (row["hmma"] or row["hgmma"]):
        out.append("no tensor-core instructions")
    return out


def build_report(jobs: int | None = None, kernels: tuple = ()):
    specs = all_specs()
    # A spec may name its targets: a config table kept per architecture compiles only for its own.
    work = [(op, i, cc) for i, (op, spec) in enumerate(specs) for cc in spec.get("targets", TARGETS)
            if not kernels or spec["kernel"].__name__ in kernels]
    jobs = jobs or max(1, min(os.cpu_count() or 1, 8))
    # spawn, not fork: forking a process that has torch (and its thread pools) loaded is unsafe.
    with futures.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(compile_one, work))
    return rows + (cuda_extension_rows() if not kernels else [])


# ----------------------------------------------------------------------------------------------
# The CUDA extension: every kernel in the built library, per target, read with cuobjdump.
# ----------------------------------------------------------------------------------------------
# Kernels whose work is a GEMM and must run on tensor cores. The modconv's GEMMs are cuBLAS / cuDNN calls from
# csrc/adaptive_modconv.cpp; its kernels are the memory-bound passes around them (FMAs, no MMA).
_CUDA_GEMM_KERNELS = ("attention_forward_kernel", "attention_backward_kernel")
_CUDA_DTYPES = {"float": "fp32", "__half": "fp16", "__nv_bfloat16": "bf16"}


def cuda_extension_path() -> str | None:
    from gigagan_kernels import cuda_extension
    return cuda_extension.built_library()


def _demangle(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return out.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return list(names)


def _describe(demangled: str):
    """(kernel, config, dtype) from e.g. 'void gigagan::(anonymous namespace)::k<__half, Tile<16, 128>>(...)'."""
    m = re.search(r"(\w+_kernel)(?:<(.*)>)?\(", demangled)
    if not m:
        return demangled[:60], "", ""
    kernel, args = m.group(1), (m.group(2) or "")
    parts = [a.strip() for a in re.split(r",\s*(?![^<]*>)", args)] if args else []
    dtype = _CUDA_DTYPES.get(parts[0], "") if parts else ""
    config = re.sub(r"gigagan::|\(anonymous namespace\)::|\s", "", ",".join(parts[1:]))
    return kernel, config, dtype


def cuda_extension_rows(path: str | None = None):
    path = path or cuda_extension_path()
    if path is None:
        return []
    usage = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
    sass = subprocess.run([_tool("cuobjdump"), "-sass", path], capture_output=True, text=True).stdout
    found, arch, source = [], None, ""
    for line in usage.splitlines():
        if m := re.match(r"arch = (sm_\d+)", line.strip()):
            arch = m.group(1)
        elif m := re.match(r"identifier = (.*)", line.strip()):
            source = os.path.basename(m.group(1))
        elif m := re.match(r"Function (\S+):", line.strip()):
            found.append(dict(mangled=m.group(1), target=arch, source=source))
        elif m := re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", line):
            regs, stack, shared, local = (int(g) for g in m.groups())
            found[-1].update(regs=regs, shared=shared, spill=stack + local)
    # SASS per (target, function): tensor-core and local-memory (spill) instructions.
    counts, key = {}, None
    for line in sass.splitlines():
        if m := re.search(r"code for (sm_\d+)", line):
            arch = m.group(1)
        elif m := re.search(r"Function : (\S+)", line):
            key = (arch, m.group(1))
            counts[key] = dict(hmma=0, hgmma=0, spill_ops=0)
        elif key is not None:
            c = counts[key]
            c["hmma"] += len(re.findall(r"\bHMMA\b", line))
            c["hgmma"] += len(re.findall(r"\bHGMMA\b", line))
            c["spill_ops"] += len(re.findall(r"\b(?:STL|LDL)\b", line))
    rows = []
    for f, demangled in zip(found, _demangle([f["mangled"] for f in found])):
        kernel, config, dtype = _describe(demangled)
        c = counts.get((f["target"], f["mangled"]), dict(hmma=None, hgmma=None, spill_ops=None))
        rows.append(dict(op="cuda:" + f["source"].removesuffix(".cu"), kernel=kernel, config=config, dtype=dtype,
                         target=f["target"], warps="-", stages="-", regs=f.get("regs"), shared=f.get("shared"),
                         spill=f.get("spill"), spill_ops=c["spill_ops"], hmma=c["hmma"], hgmma=c["hgmma"],
                         error="" if "regs" in f else "no resource usage", tensor_cores=kernel in _CUDA_GEMM_KERNELS))
    return sorted(rows, key=lambda r: (r["op"], r["kernel"], r["dtype"], r["config"], r["target"]))


def format_table(rows) -> str:
    head = ("op", "kernel", "config", "dtype", "target", "warps", "stages", "regs", "smem B", "stack B", "HMMA",
            "HGMMA", "status")
    lines = [head]
    for r in rows:
        status = ", ".join(problems(r)) or "ok"
        if r["error"]:
            status += f" ({r['error']})"
        lines.append((r["op"], r["kernel"], r["config"], r["dtype"], r["target"], str(r["warps"]), str(r["stages"]),
                      str(r["regs"]), str(r["shared"]), str(r["spill"]), str(r["hmma"]), str(r["hgmma"]), status))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    fmt = lambda line: "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"  # noqa: E731
    sep = "|-" + "-|-".join("-" * w for w in widths) + "-|"
    return "\n".join([fmt(lines[0]), sep] + [fmt(line) for line in lines[1:]])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 on a compile error, spill or missing MMA")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile processes")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--kernels", default="", help="comma-separated Triton kernel names: compile only these "
                        "(while working on them; the committed table is the full report)")
    args = parser.parse_args(argv)
    # AOT compilation needs real JIT functions (triton.jit makes interpreter objects under
    # TRITON_INTERPRET=1); the kernels are imported after this, here and in the workers, which
    # inherit the environment.
    os.environ.pop("TRITON_INTERPRET", None)
    rows = build_report(args.jobs, tuple(filter(None, args.kernels.split(","))))
    table = format_table(rows)
    print(table)
    if cuda_extension_path() is None:
        print("\nCUDA extension gigagan_kernels._C not built (python -m gigagan_kernels build-cuda): its kernels are "
              "not in this report")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    bad = [r for r in rows if problems(r)]
    print(f"\n{len(rows)} compiles, {len(bad)} with problems")
    if args.check and bad:
        for r in bad:
            print(f"FAIL {r['kernel']} {r['config']} {r['dtype']} {r['target']}: {', '.join(problems(r))} {r['error']}",
                  file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
