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


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
        return out.stdout.strip() or "unknown"
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


def time_fn(fn, device: torch.device, *, warmup_ms: float = 25, rep_ms: float = 100, cpu_reps: int = 5) -> Timing:
    """Median / p20 / p80 of fn() in ms: triton.testing.do_bench (CUDA events) on GPU, perf_counter on CPU."""
    if device.type == "cuda":
        import triton.testing
        med, p20, p80 = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return Timing(med, p20, p80)
    fn()  # warm-up
    samples = []
    for _ in range(cpu_reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(samples, n=10, method="inclusive") if len(samples) > 1 else samples * 9
    return Timing(statistics.median(samples), q[1], q[7])


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
