"""Shared benchmark machinery: timing, peak memory, the long-format results CSV and its metadata."""
from __future__ import annotations

import csv
import datetime
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEFAULT_CSV = os.path.join(RESULTS_DIR, "results.csv")
CSV_COLUMNS = ("timestamp", "git_sha", "device", "torch", "triton", "op", "shape", "params", "provider", "mode",
               "dtype", "metric", "value", "unit")
MODES = ("fwd", "bwd", "fwd+bwd")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)"


def _git(*args, cwd, env=None) -> str:
    out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=20, env=env, cwd=cwd)
    if out.returncode:
        raise OSError(out.stderr.strip())
    return out.stdout.strip()


def git_sha(repo: str | None = None) -> str:
    """The tree that runs: HEAD's short hash when the working tree matches it, else HEAD plus the working
    tree's own git tree hash ("2a1348e+tree.1f0c9e2d4b"), which `git log --format='%h %T'` maps to the commit
    that later holds it. (A lent GPU machine gets a copy of the working tree, whose HEAD may be older.)"""
    import tempfile
    repo = repo or os.path.dirname(os.path.abspath(__file__))
    try:
        head = _git("rev-parse", "--short", "HEAD", cwd=repo)
        top = _git("rev-parse", "--show-toplevel", cwd=repo)
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, GIT_INDEX_FILE=os.path.join(tmp, "index"))
            _git("read-tree", "HEAD", cwd=top, env=env)
            _git("add", "-A", ".", cwd=top, env=env)
            tree = _git("write-tree", cwd=top, env=env)
        return head if tree == _git("rev-parse", "HEAD^{tree}", cwd=top) else f"{head}+tree.{tree[:10]}"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> tuple[str, str]:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return torch.__version__, triton_version


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float


# A row whose spread (p80 - p20) exceeds this share of its median is marked noisy, and no speed-up is drawn from it.
NOISY_SPREAD = 0.2


def time_fn(fn, device: torch.device, *, warmup_ms: float = 25, rep_ms: float = 100, cpu_reps: int = 5) -> Timing:
    """Median / p20 / p80 of fn() in ms: triton.testing.do_bench on GPU (warm-up, CUDA events, an L2 flush between
    runs); on CPU torch.utils.benchmark's blocked_autorange after a warm-up call, over at least cpu_reps blocks."""
    if device.type == "cuda":
        import triton.testing
        med, p20, p80 = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return Timing(med, p20, p80)
    import torch.utils.benchmark as benchmark
    fn()  # warm-up (and, for impl="auto", the first call's tuning)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    samples = []
    deadline = time.perf_counter() + 4 * rep_ms / 1e3
    while len(samples) < cpu_reps or (time.perf_counter() < deadline and len(samples) < 4 * cpu_reps):
        samples += [s * 1e3 for s in timer.blocked_autorange(min_run_time=rep_ms / 1e3 / cpu_reps).times]
    q = statistics.quantiles(samples, n=10, method="inclusive") if len(samples) > 1 else samples * 9
    return Timing(statistics.median(samples), q[1], q[7])


def is_noisy(t: Timing) -> bool:
    return t.median_ms > 0 and (t.p80_ms - t.p20_ms) / t.median_ms > NOISY_SPREAD


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def peak_memory_mb(fn, device: torch.device) -> float | None:
    """Peak bytes allocated while fn runs, above what was allocated before (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


@dataclass
class ResultWriter:
    """Appends rows to the long-format CSV; every row carries device, versions, git sha and timestamp."""
    path: str
    device: torch.device
    rows: list = field(default_factory=list)

    def __post_init__(self):
        self.meta = dict(timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                         git_sha=git_sha(), device=device_name(self.device))
        self.meta["torch"], self.meta["triton"] = versions()

    def add(self, op, shape, params, provider, mode, dtype, metric, value, unit):
        row = dict(self.meta, op=op, shape=shape, params=json.dumps(params, sort_keys=True), provider=provider,
                   mode=mode, dtype=str(dtype).replace("torch.", ""), metric=metric, value=f"{value:.6g}", unit=unit)
        self.rows.append(row)

    def flush(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerows(self.rows)
        self.rows = []


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def record(writer: ResultWriter, op, shape_name, params, provider, mode, dtype, t: Timing, mem, *,
           noisy: bool = False) -> None:
    """The rows of one timed case: median, p20, p80, on CUDA peak memory, and a "noisy" flag (value 1) when the
    spread is wide or the case contradicts another (fwd+bwd below fwd)."""
    for metric, value in (("median_ms", t.median_ms), ("p20_ms", t.p20_ms), ("p80_ms", t.p80_ms)):
        writer.add(op, shape_name, params, provider, mode, dtype, metric, value, "ms")
    if mem is not None:
        writer.add(op, shape_name, params, provider, mode, dtype, "peak_mem_mb", mem, "MiB")
    if noisy or is_noisy(t):
        writer.add(op, shape_name, params, provider, mode, dtype, "noisy", 1, "flag")


def mode_call(fwd, wrt, mode: str):
    """The call a "fwd" or "fwd+bwd" row measures: the forward without autograd, or forward + backward against a
    fixed random gradient."""
    if mode == "fwd":
        def call():
            with torch.no_grad():
                return fwd()
        return call
    grad = torch.randn_like(fwd())
    return lambda: torch.autograd.grad(fwd(), wrt, grad)


def bench_case(op, shape_name, shape, provider, fwd, wrt, device, dtype, modes, writer: ResultWriter, *,
               quick=False):
    """Time fwd / bwd / fwd+bwd of one provider on one shape and record median, p20, p80 and peak memory."""
    rep = dict(rep_ms=30 if quick else 100, warmup_ms=10 if quick else 25, cpu_reps=3 if quick else 5)
    out = {}
    for mode in modes:
        if mode == "fwd":
            fn = fwd
        elif mode == "bwd":
            y = fwd()
            grad = torch.randn_like(y)
            fn = lambda: torch.autograd.grad(y, wrt, grad, retain_graph=True)  # noqa: E731
        else:
            grad = torch.randn_like(fwd())
            fn = lambda: torch.autograd.grad(fwd(), wrt, grad)  # noqa: E731
        with torch.no_grad() if mode == "fwd" else torch.enable_grad():
            t = time_fn(fn, device, **rep)
            mem = peak_memory_mb(fn, device)
        below_fwd = mode == "fwd+bwd" and "fwd" in out and t.median_ms < out["fwd"][0].median_ms
        record(writer, op, shape_name, shape, provider, mode, dtype, t, mem, noisy=below_fwd)
        out[mode] = (t, mem)
    return out


def open_results(op, device, csv_path) -> ResultWriter:
    """A suite's writer, with the load average at the start recorded beside its rows."""
    writer = ResultWriter(csv_path, device)
    load = load_average()
    if load is not None:
        writer.add(op, "run", {}, "-", "-", "-", "load_average_1m", load, "load")
    return writer


def suite_cases(op, device, *, gpu_shapes, cpu_shapes, providers, available, shapes, dtypes, deadline, log):
    """(dtype, shape name, shape, provider) of each case of a suite that may start now; the others are logged as
    skipped: available(provider, device) said why not, or the deadline (time.monotonic()) has passed."""
    table = gpu_shapes if device.type == "cuda" else cpu_shapes
    for dtype in dtypes:
        for shape_name in shapes or list(table):
            shape = {**gpu_shapes, **cpu_shapes}[shape_name]
            for provider in providers:
                why = available(provider, device)
                if deadline is not None and time.monotonic() > deadline:
                    why = "the benchmark's time budget is spent"
                if why:
                    log(f"  {op} {shape_name} {provider}: skipped ({why})")
                    continue
                yield dtype, shape_name, shape, provider


def run_suite(op, device, *, gpu_shapes, cpu_shapes, providers, setup, available, shapes=None, modes=MODES,
              dtype=None, dtypes=None, csv_path=DEFAULT_CSV, quick=False, log=print, deadline=None):
    """Run every (dtype, shape, provider) of one op. setup(provider, shape, device, dtype) -> (fwd closure,
    tensors to differentiate); available(provider, device) -> None or why the provider cannot run here.
    cuDNN chooses its algorithms by timing them (cudnn.benchmark) for every provider, in the warm-up.
    deadline (time.monotonic()): cases not started by then are skipped, and said so. The load average at the
    start is recorded beside the rows."""
    dtypes = dtypes or [dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)]
    writer = open_results(op, device, csv_path)
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        for dtype, shape_name, shape, provider in suite_cases(
                op, device, gpu_shapes=gpu_shapes, cpu_shapes=cpu_shapes, providers=providers,
                available=available, shapes=shapes, dtypes=dtypes, deadline=deadline, log=log):
            try:
                fwd, wrt = setup(provider, shape, device, dtype)
                res = bench_case(op, shape_name, shape, provider, fwd, wrt, device, dtype, modes, writer,
                                 quick=quick)
            except torch.OutOfMemoryError:
                log(f"  {op} {shape_name} {provider}: out of memory")
                torch.cuda.empty_cache()
                continue
            writer.flush()  # each case lands at once, so a suite stopped midway keeps what it measured
            log(f"  {op} {shape_name} {provider} {str(dtype).replace('torch.', '')}: " + ", ".join(
                f"{m} {t.median_ms:.3f} ms" + (f" / {mem:.0f} MiB" if mem is not None else "")
                for m, (t, mem) in res.items()))
    finally:
        torch.backends.cudnn.benchmark = previous
    writer.flush()
    return csv_path


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtypes(text: str | None):
    """'bfloat16,float16' -> [torch.bfloat16, torch.float16]; None -> None (each suite's default)."""
    if not text:
        return None
    names = text.split(",")
    if unknown := [n for n in names if n not in DTYPES]:
        raise ValueError(f"--dtypes: unknown {unknown}; choose from {list(DTYPES)}")
    return [DTYPES[n] for n in names]


def bench_main(run, providers, argv=None, doc=None):
    """The shared command line of the per-op benchmark scripts."""
    import argparse
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", default=None, help="comma-separated shape names")
    parser.add_argument("--providers", default=",".join(providers))
    parser.add_argument("--dtypes", default=None, help="comma-separated: " + ", ".join(DTYPES))
    parser.add_argument("--csv", default=DEFAULT_CSV)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    try:
        dtypes = parse_dtypes(args.dtypes)
    except ValueError as e:
        parser.error(str(e))
    try:
        run(torch.device(args.device), shapes=args.shapes.split(",") if args.shapes else None,
            providers=args.providers.split(","), dtypes=dtypes, csv_path=args.csv, quick=args.quick)
    except ValueError as e:                 # a bad --shapes: one line
        parser.error(str(e))
