"""The loop's side outputs, none of which changes training: log.jsonl (and TensorBoard) with the means of each
log interval, the progress bar, the sample grids, the loss plot and the profiler's trace. Only rank 0 writes
them. log.jsonl is the run: a resume first moves the records of the steps it will train again aside
(cut_log), and TensorBoard purges them."""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from typing import Optional

import torch

from gigagan_kernels import use_impl

from ..data import fixed_prompts
from ..extras import require
from ..rundir import remove_quietly, writing

LOG = "log.jsonl"
ABANDONED_LOG = "log-abandoned.jsonl"


class IntervalMeans:
    """Means of each step statistic over a log interval, kept on the device (non-finite values left out) and
    read back once per interval."""

    def __init__(self, device):
        self.device = device
        self.sums, self.counts = {}, {}

    def add(self, stats: dict) -> None:
        for name, value in stats.items():
            if name == "skipped":
                continue
            v = torch.as_tensor(value, dtype=torch.float32, device=self.device)
            ok = torch.isfinite(v)
            self.sums[name] = self.sums.get(name, 0.0) + torch.where(ok, v, 0.0)
            self.counts[name] = self.counts.get(name, 0) + ok.float()

    def read(self) -> dict:
        names = list(self.sums)
        values = (torch.stack([self.sums[n] for n in names] + [self.counts[n] for n in names]).tolist()
                  if names else [])
        self.sums, self.counts = {}, {}
        return {n: values[i] / values[len(names) + i] for i, n in enumerate(names) if values[len(names) + i] > 0}


def cut_log(out: str, step: int) -> int:
    """Move the records of log.jsonl after `step` (and torn lines) to log-abandoned.jsonl: a run that continues
    from step `step` trains the later steps again, and logs them again. Returns how many records moved."""
    path = os.path.join(out, LOG)
    if not os.path.exists(path):
        return 0
    kept, moved = [], []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                later = json.loads(line).get("step", 0) > step
            except (ValueError, AttributeError, TypeError):
                later = True                                # a line torn by a kill mid-write
            (moved if later else kept).append(line if line.endswith("\n") else line + "\n")
    if not moved:
        return 0
    with writing(ABANDONED_LOG), open(os.path.join(out, ABANDONED_LOG), "a") as f:
        f.writelines(moved)
    tmp = path + ".tmp"
    try:
        with writing(LOG):
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, path)
    finally:
        remove_quietly(tmp)
    return len(moved)


class ScalarLog:
    """log.jsonl, one JSON record per log interval, and its numbers in TensorBoard when asked for. purge_step:
    TensorBoard hides the events from that step on that an abandoned attempt wrote (the first step a resume
    trains)."""

    def __init__(self, out: str, tensorboard: bool, purge_step: Optional[int] = None):
        self.path = os.path.join(out, LOG)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:                       # an optional output: training goes on without it
                warnings.warn(f"--tensorboard: no TensorBoard logs ({e}; pip install tensorboard); log.jsonl "
                              "has every scalar", stacklevel=3)
            else:
                self.tb = SummaryWriter(os.path.join(out, "tb"), purge_step=purge_step)

    def write(self, record: dict) -> None:
        with writing(LOG), open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class ProgressBar:
    """A tqdm bar on stderr when shown, else nothing, with the run's steps as its total. Under a time budget
    (budget) the total is the step the run is expected to reach: cfg.steps, or fewer when the budget ends first,
    estimated from the steps' rate so far, so that the bar's ETA is the run's."""

    def __init__(self, shown: bool, total: Optional[int], initial: int, clock=time.perf_counter):
        self.bar, self.steps, self.clock, self.deadline = None, total, clock, None
        if shown:
            tqdm = require("tqdm", "the progress bar (--no-progress runs without it)").tqdm
            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, file=sys.stderr)

    def budget(self, deadline: float) -> None:
        """The time budget ends at `deadline` (on the clock); the rate is counted from now."""
        self.deadline, self.since = deadline, (self.clock(), self.bar.n if self.bar is not None else 0)

    def update(self) -> None:
        if self.bar is None:
            return
        if self.deadline is not None:
            now, (t0, n0) = self.clock(), self.since
            done = self.bar.n + 1 - n0
            if now > t0 and done > 0:
                reachable = self.bar.n + 1 + int(done / (now - t0) * max(self.deadline - now, 0.0))
                self.bar.total = min(self.steps, reachable) if self.steps is not None else reachable
        self.bar.update(1)

    def show(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(d=f"{record.get('loss_d', math.nan):.3f}", g=f"{record.get('loss_g', math.nan):.3f}",
                                 img_s=f"{record['images_per_s']:.1f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class SampleGrids:
    """The fixed latents and prompts of the sample grids, the same all run long so that grids compare; for the
    upsampler also fixed real images, from which its inputs are made."""

    def __init__(self, cfg, z_dim: int):
        self.cfg = cfg
        self.prompts = [""] * 8 if cfg.unconditional else fixed_prompts(8)
        self.z = torch.randn(8, z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
        self.real = None

    def take_real_images(self, dataset, resolution: int) -> None:
        """The upsampler's real images: the dataset's first valid samples (one black image when there are none
        to index)."""
        pairs = [p for p in (dataset[i] for i in range(min(len(dataset), 16))) if p[0] is not None][:4] \
            if not isinstance(dataset, torch.utils.data.IterableDataset) else []
        if not pairs:
            pairs = [(torch.zeros(3, resolution, resolution), "")]
        self.real = torch.stack([p[0] for p in pairs])
        self.prompts = [p[1] for p in pairs]
        self.z = self.z[:len(pairs)]

    @torch.no_grad()
    def write(self, path: str, G_ema, loss, device) -> None:
        with writing(os.path.basename(path)):
            self._write(path, G_ema, loss, device)

    def _write(self, path: str, G_ema, loss, device) -> None:
        from ..images import save_grid
        z = self.z.to(device)
        with use_impl(self.cfg.impl):
            if self.cfg.model == "upsampler":
                # Rows: the low-res input (nearest-neighbour enlarged), the upsampler's output, the real image.
                real = self.real.to(device)
                low = loss.low_res(real)
                out = G_ema(low, self.prompts, z, noise_mode="none")[0].clamp(-1, 1)
                enlarged = torch.nn.functional.interpolate(low, size=out.shape[-2:], mode="nearest")
                save_grid(torch.cat([enlarged, out, real]), path, columns=len(real))
                return
            imgs = G_ema(z, self.prompts, noise_mode="none")[0]
        save_grid(imgs, path, captions=self.prompts, columns=4)


def plot_loss(out: str, log) -> None:
    """loss.png from log.jsonl; an optional output, which never fails a finished run (a warning says why not)."""
    from ..images import plot_losses
    path = os.path.join(out, LOG)
    if not os.path.exists(path):
        return
    try:
        plot_losses(path, os.path.join(out, "loss.png"))
    except (ImportError, ValueError, OSError) as e:
        log(f"warning: no loss plot ({type(e).__name__}: {e})")


# Lines that the profiler's C++ side (Kineto) prints on stderr without news for the user: its markers at start and
# stop, and on a machine without CUDA its failed look for GPUs, which it then traces without (CPU only).
PROFILER_NOISE = ("SyncActivityProfilerHandler.cpp", "gpuGetDeviceCount failed")


@contextlib.contextmanager
def profiler_noise_dropped():
    """Run a profiler call with the file descriptor 2 caught (C++ writes there, past sys.stderr); the lines of
    PROFILER_NOISE are dropped, any other line is written on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(noise in line for noise in PROFILER_NOISE)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class StepProfiler:
    """torch.profiler over `steps` training steps (none when 0): CPU ops, CUDA kernels, and the named ranges of
    the model (G.text_encoder, G.mapping, G.level<R>px, D.level<R>px, gigagan_kernels.* for the fused ops),
    written to profile/trace.json and profile/summary.txt."""

    def __init__(self, steps: int, out: str, device, impl: str, log):
        self.steps, self.out, self.device, self.impl, self.log = steps, out, device, impl, log
        self.profiler, self.traced = None, 0

    def start(self) -> None:
        if not self.steps or self.profiler is not None:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities, record_shapes=True)
        with profiler_noise_dropped():
            self.profiler.start()

    def step_done(self, step: int) -> None:
        if self.profiler is not None:
            self.traced += 1
            if self.traced == self.steps:
                self.finish(step)

    def finish(self, step: int) -> None:
        """Stop and write what was traced (fewer steps when training ended first)."""
        if self.profiler is None:
            return
        with profiler_noise_dropped():
            self.profiler.stop()
        directory = os.path.join(self.out, "profile")
        trace = os.path.join(directory, "trace.json")
        with writing("profile/trace.json"):
            os.makedirs(directory, exist_ok=True)
            self.profiler.export_chrome_trace(trace + ".tmp")
            os.replace(trace + ".tmp", trace)
        key = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        with writing("profile/summary.txt"), open(os.path.join(directory, "summary.txt"), "w") as f:
            f.write(f"{self.traced} steps from step {step - self.traced}, {self.device}, impl {self.impl}\n")
            f.write(self.profiler.key_averages().table(sort_by=key, row_limit=40) + "\n")
        self.log(f"profile: {self.traced} steps traced into {trace} (chrome://tracing, Perfetto) and summary.txt")
        self.profiler = None
