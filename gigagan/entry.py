"""Running a tensor-only entry (Generator.synthesize, Upsampler.synthesize_from) for a command or the pipeline:
eagerly, or under torch.compile(mode="reduce-overhead") (CUDA graphs), by `--compile auto|on|off`.

    run = EntryRunner(G.synthesize, "auto", device)
    run.plan(len(batches))                  # the calls still to come, for auto's decision
    images = [run(z, tokens)[0] for z, tokens in batches]

The first call runs eagerly under gigagan_kernels.tune, so every op's decision is in the process's table before a
compile traces the dispatcher. "on" compiles from the second call on. "auto" compiles on CUDA only, and only when
the eager calls still to come (the second call, timed, times those planned) would take longer than a compile:
CUDA graphs remove the launch overhead that dominates batch-1 calls, but a compile costs far more than a call
(AUTO_COMPILE_PAYBACK_SECONDS). A run too short to repay it stays eager. Inductor's on-disk cache is kept beside
the kernels' decisions, so a later run reuses the compiled graphs.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

import torch

from gigagan_kernels import tune

COMPILE_CHOICES = ("auto", "on", "off")
COMPILE_HELP = ("run the model under torch.compile(mode='reduce-overhead'): on, off, or auto (on CUDA when the run "
                "is long enough to repay the compile)")
# auto's bar: a compile is repaid when the eager calls to come take longer than this. Predicted, not measured here
# (no GPU): a cold reduce-overhead compile of the small preset's generator entry, tens of seconds; a warm
# Inductor cache makes it faster, so the bar errs towards staying eager.
AUTO_COMPILE_PAYBACK_SECONDS = 60.0


# The training step's compiler: Inductor's default mode. No CUDA graphs there: the logged terms outlive a step, and
# a graph's replay overwrites its outputs. (The tests put aot_eager here: Inductor takes minutes on a CPU.)
TRAIN_COMPILE_BACKEND = "inductor"


def repays(seconds_per_call: float, calls: int) -> bool:
    """Whether `calls` more eager calls of `seconds_per_call` take longer than a compile (auto's rule)."""
    return seconds_per_call * calls > AUTO_COMPILE_PAYBACK_SECONDS


def check_compile_mode(mode: str, what: str = "compile") -> None:
    if mode not in COMPILE_CHOICES:
        raise ValueError(f"{what} must be one of {COMPILE_CHOICES}, got {mode!r}")


def keep_inductor_cache() -> str:
    """Inductor's on-disk cache (compiled graphs, kernels, autotuning) in the kernels' cache folder, which persists,
    rather than the default under /tmp; $TORCHINDUCTOR_CACHE_DIR, when the user set it, wins. Returns the folder.
    torch writes its default into $TORCHINDUCTOR_CACHE_DIR the first time anything asks for the folder (building
    the trainer does), so a value equal to that default counts as unset."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    from gigagan_kernels.autotune import cache_dir
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_dir(), "inductor")
    import torch._inductor.config as inductor_config
    inductor_config.fx_graph_cache = True
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def compile_entry(fn: Callable, device: torch.device, fullgraph: bool = False) -> Callable:
    """fn under torch.compile: reduce-overhead (CUDA graphs) on CUDA, Inductor's default elsewhere; static shapes
    (callers keep them fixed: the pipeline pads its last batch)."""
    keep_inductor_cache()
    mode = "reduce-overhead" if torch.device(device).type == "cuda" else None
    return torch.compile(fn, mode=mode, dynamic=False, fullgraph=fullgraph)


def _clone_outputs(out):
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (list, tuple)):
        return type(out)(_clone_outputs(o) for o in out)
    return out


class EntryRunner:
    """Calls fn eagerly or compiled, by mode ("auto", "on", "off"); see the module's docstring."""

    def __init__(self, fn: Callable, mode: str, device, name: str = "entry", log: Optional[Callable] = None,
                 tune_first: bool = True):
        check_compile_mode(mode)
        self.fn, self.mode, self.device, self.name = fn, mode, torch.device(device), name
        self.log = log or (lambda msg: None)
        self.tune_first = tune_first
        self.calls, self.remaining = 0, 0
        self.eager_seconds: Optional[float] = None
        self.compiled: Optional[Callable] = None
        self.decided = mode == "off" or (mode == "auto" and self.device.type != "cuda")

    def plan(self, calls: int) -> "EntryRunner":
        """Say how many calls are still to come (auto weighs them against a compile, again at each plan)."""
        self.remaining = calls
        if self.mode == "auto" and self.eager_seconds is not None and not self.is_compiled:
            self._decide()
        return self

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def _decide(self) -> None:
        if self.mode == "on":
            self.compiled = compile_entry(self.fn, self.device)
            self.log(f"{self.name}: compiling (--compile on)")
        elif self.eager_seconds is not None:                 # auto on CUDA, with one timed eager call
            if repays(self.eager_seconds, self.remaining):
                self.compiled = compile_entry(self.fn, self.device)
                self.log(f"{self.name}: compiling (--compile auto: {self.remaining} calls of "
                         f"{self.eager_seconds:.3f} s to come)")
        self.decided = True

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.remaining = max(self.remaining - 1, 0)
        if self.compiled is not None:
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
                return _clone_outputs(self.compiled(*args, **kwargs))    # the graph's outputs are reused
            return self.compiled(*args, **kwargs)
        if self.calls == 1 and self.tune_first:
            out = tune(self.fn, *args, **kwargs)
        elif not self.decided and self.mode == "auto" and self.calls >= 2:     # the first carries one-time costs
            torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            out = self.fn(*args, **kwargs)
            torch.cuda.synchronize(self.device)
            self.eager_seconds = time.perf_counter() - start
        else:
            out = self.fn(*args, **kwargs)
        if not self.decided and (self.mode == "on" or self.eager_seconds is not None):
            self._decide()
        return out


class StepCompilePlan:
    """When a training loop's step starts running compiled (`gigagan train --compile`): "on" from the second step
    (the first runs eagerly, tuned); "auto" on one CUDA process, once the second step (from its start to the third's:
    every step ends in a host sync) times the steps to come repays a compile; "off" never. Under torchrun the step
    stays eager: its separate R1 pass runs outside DDP's wrapper."""

    def __init__(self, mode: str, device, world: int = 1, log: Optional[Callable] = None):
        check_compile_mode(mode)
        self.mode, self.starts = mode, []
        self.done = mode == "off" or (mode == "auto" and torch.device(device).type != "cuda")
        if not self.done and world > 1:
            (log or print)(f"compile: the training step stays eager under torchrun ({world} processes)")
            self.done = True

    def start_step(self, steps_to_come: int) -> bool:
        """Call as each step starts; True once, when the step should be compiled from now on."""
        if self.done:
            return False
        self.starts.append(time.perf_counter())
        if self.mode == "on" and len(self.starts) == 2:
            self.done = True
            return True
        if self.mode == "auto" and len(self.starts) == 3:
            self.done = True
            return repays(self.starts[2] - self.starts[1], steps_to_come)
        return False
