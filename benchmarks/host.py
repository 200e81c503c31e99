"""The harness's host mode: what each call costs the host, per op, shape and candidate.

Per mode (fwd, fwd+bwd) it records
  kernels         device kernels one call issues (gigagan_kernels.testing.count_kernels: Triton launches and the
                  aten ops that launch one); on CUDA also device_kernels, what the card ran (C++ ops included)
  syncs           host synchronisations in one call (must be 0 on every path auto can pick)
  host_cpu_us     CPU time per call (process time: Python, dispatch, autograd, launches; on a CPU device the
                  computation too)
  enqueue_us      CUDA only: wall time per call without synchronising, i.e. how long the host takes to enqueue it
  host_peak_mem_mb  CUDA only: max_memory_allocated above the inputs during one call
and per provider that goes through an op's dispatcher
  dispatch_us     CPU time of the op's dispatch on a call already seen, validation included (op.prepare)

    python -m benchmarks --host [--ops adaptive_modconv2d,attention] [--providers auto,triton:weights]

Providers are "auto", every candidate of the op (gigagan_kernels.candidates(op)), and the floor. Under
TRITON_INTERPRET=1 on a CPU the Triton candidates are counted (kernels, syncs) but not timed: the interpreter's
time says nothing about a GPU's host.
"""
from __future__ import annotations

import time

import torch

from gigagan_kernels import backend
from gigagan_kernels.testing import count_kernels

from .common import DEFAULT_CSV, mode_call, open_results, suite_cases

HOST_METRICS = ("kernels", "device_kernels", "syncs", "host_cpu_us", "enqueue_us", "dispatch_us", "host_peak_mem_mb")
MODES = ("fwd", "fwd+bwd")


def interpreted(provider: str, device: torch.device) -> bool:
    """A provider that runs through the Triton interpreter here (auto picks it there): counted, not timed."""
    return device.type == "cpu" and (provider.startswith("triton") or provider == "auto") and backend.triton_interpret()


def available(provider: str, device: torch.device, op: str) -> str | None:
    """None when the candidate (or "auto", "floor") can run here, else why not."""
    if provider in ("auto", "floor", "ref") or provider.startswith("torch"):
        return None
    return backend.unavailable_reason(provider.split(":")[0], device, op)


def _cpu_us_per_call(fn, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e6


def _enqueue_us_per_call(fn, calls: int, device) -> float:
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize(device)
    return elapsed / calls * 1e6


def dispatch_us(dispatch, repeats: int = 5, calls: int = 2000) -> float:
    """CPU microseconds of one dispatch on a seen call (the best of `repeats` runs of `calls`)."""
    dispatch()
    return min(_cpu_us_per_call(dispatch, calls) for _ in range(repeats))


def host_case(op, shape_name, shape, provider, fwd, wrt, device, dtype, writer, *, dispatch=None, quick=False,
              log=print) -> dict:
    """Record the host rows of one provider on one shape (see the module docstring); returns them by metric."""
    calls = 5 if quick else 20
    timed = not interpreted(provider, device)
    out = {}
    for mode in MODES:
        fn = mode_call(fwd, wrt, mode)
        fn()                                                  # warm-up: compiles, and auto's first-call choice
        with count_kernels(device if device.type == "cuda" else None) as count:
            fn()
        rows = {"kernels": (count.total, "count"), "syncs": (len(count.syncs), "count")}
        if count.device_kernels is not None:
            rows["device_kernels"] = (count.device_kernels, "count")
        if timed:
            rows["host_cpu_us"] = (min(_cpu_us_per_call(fn, calls) for _ in range(3)), "us")
            if device.type == "cuda":
                rows["enqueue_us"] = (min(_enqueue_us_per_call(fn, calls, device) for _ in range(3)), "us")
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                fn()
                torch.cuda.synchronize(device)
                rows["host_peak_mem_mb"] = ((torch.cuda.max_memory_allocated(device) - before) / 2**20, "MiB")
        for metric, (value, unit) in rows.items():
            writer.add(op, shape_name, shape, provider, mode, dtype, metric, value, unit)
        out[mode] = {metric: value for metric, (value, _) in rows.items()}
    if dispatch is not None and timed:
        us = dispatch_us(dispatch, repeats=3 if quick else 5, calls=500 if quick else 2000)
        writer.add(op, shape_name, shape, provider, "dispatch", dtype, "dispatch_us", us, "us")
        out["dispatch"] = {"dispatch_us": us}
    log(f"  {op} {shape_name} {provider} {str(dtype).replace('torch.', '')} (host): " + "; ".join(
        f"{mode} " + ", ".join(f"{m} {v:.4g}" for m, v in values.items()) for mode, values in out.items()))
    return out


def run_host_suite(op, device, *, gpu_shapes, cpu_shapes, providers, setup, dispatch_setup, shapes=None,
                   dtypes=None, csv_path=None, quick=False, log=print, deadline=None):
    """The host rows of every (dtype, shape, provider) of one op into the CSV. setup as run_suite's;
    dispatch_setup(provider, shape, device, dtype) -> a closure running the op's dispatch on the same call, or None
    for a provider that does not go through it."""
    dtypes = dtypes or [torch.bfloat16 if device.type == "cuda" else torch.float32]
    writer = open_results(op, device, csv_path or DEFAULT_CSV)
    for dtype, shape_name, shape, provider in suite_cases(
            op, device, gpu_shapes=gpu_shapes, cpu_shapes=cpu_shapes, providers=providers,
            available=lambda provider, device: available(provider, device, op), shapes=shapes, dtypes=dtypes,
            deadline=deadline, log=log):
        try:
            fwd, wrt = setup(provider, shape, device, dtype)
            host_case(op, shape_name, shape, provider, fwd, wrt, device, dtype, writer,
                      dispatch=dispatch_setup(provider, shape, device, dtype), quick=quick, log=log)
        except backend.BackendUnavailableError as e:        # a candidate that refuses this call
            log(f"  {op} {shape_name} {provider}: skipped ({str(e).splitlines()[0]})")
        except torch.OutOfMemoryError:
            log(f"  {op} {shape_name} {provider}: out of memory")
            torch.cuda.empty_cache()
        writer.flush()
    writer.flush()


def markdown(rows) -> str:
    """One host table per device, op and dtype, from the latest host rows (summary.py calls this)."""
    from collections import defaultdict
    cells = defaultdict(dict)      # (device, op, dtype) -> (shape, provider) -> (mode, metric) -> value
    shas = defaultdict(set)
    for r in rows:
        if r["metric"] in HOST_METRICS:
            cells[(r["device"], r["op"], r["dtype"])].setdefault((r["shape"], r["provider"]), {})[
                (r["mode"], r["metric"])] = float(r["value"])
            shas[(r["device"], r["op"])].add(r["git_sha"])
    columns = (("kernels", "fwd", "kernels fwd"), ("kernels", "fwd+bwd", "kernels fwd+bwd"),
               ("device_kernels", "fwd+bwd", "on the card fwd+bwd"), ("syncs", "fwd+bwd", "syncs"),
               ("host_cpu_us", "fwd", "CPU us fwd"), ("host_cpu_us", "fwd+bwd", "CPU us fwd+bwd"),
               ("enqueue_us", "fwd+bwd", "enqueue us fwd+bwd"), ("dispatch_us", "dispatch", "dispatch us"),
               ("host_peak_mem_mb", "fwd+bwd", "peak MiB fwd+bwd"))
    out = []
    for (device, op, dtype), table in sorted(cells.items()):
        used = [c for c in columns if any((c[1], c[0]) in v for v in table.values())]
        out.append(f"### host: {op} on {device}, {dtype} (git {', '.join(sorted(shas[(device, op)]))})\n")
        out.append("| shape | provider | " + " | ".join(c[2] for c in used) + " |")
        out.append("|" + "---|" * (len(used) + 2))
        for (shape, provider), values in sorted(table.items()):
            def fmt(metric, mode):
                v = values.get((mode, metric))
                return "-" if v is None else (f"{v:.0f}" if metric in ("kernels", "device_kernels", "syncs")
                                              else f"{v:.1f}")
            out.append(f"| {shape} | {provider} | " + " | ".join(fmt(m, mode) for m, mode, _ in used) + " |")
        out.append("")
    return "\n".join(out)
