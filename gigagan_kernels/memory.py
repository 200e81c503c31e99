"""One memory budget for what the ops keep from a forward for its backward, planned once.

The "weights" decomposition of adaptive_modconv2d (Triton's strategy and the CUDA extension) either keeps the
per-sample weights its forward built until the backward, or rebuilds them there (one more build kernel). At
GigaGAN's 1024-channel low-resolution layers a call keeps 604 MB (bf16, B = 32); six such layers kept 3.6 GB
when each call decided alone. Here every call counts against one budget across the whole model:

- The budget: half of GIGAGAN_KERNELS_MODCONV_WORKSPACE_MB (default 1536 MiB, so 768 MiB of kept weights across
  the model); the other half bounds one call's temporaries (columns, GEMM outputs, rebuilt weights), which live
  only during that call.
- The decision, keep or rebuild, is made once per call key (shapes, dtype, layout, epilogue, which inputs need
  gradients; dispatch.ModconvCall.key), and never changes afterwards: it decides the shape of what the op saves,
  so a plan that changed at run time would change the op's output shapes under torch.compile. It never depends
  on what earlier calls happen to hold at run time.
- Inside gigagan_kernels.tune(fn) (the trainer's first step, the sampling commands' first batch), every call of
  such a key is counted, and when fn returns the keys are planned together: in the order first seen, a key keeps
  its weights when all its calls per step fit in what is left of the budget. The calls inside the tuning run
  rebuild.
- A key first seen outside tune() is planned on the spot as if it were called once per step.
- While autotune times candidates, or dynamo traces a call whose key is not planned, the weights are rebuilt and
  nothing is recorded (no side effect in a trace; timing runs are not the model's calls).

plan_report() lists the decisions; forget() drops them (tests, or a new model in the same process).
"""
from __future__ import annotations

import threading

import torch

_DECISIONS: dict = {}          # key -> keep (bool): read with a plain dict lookup, which dynamo traces
_USED: dict = {}               # budget -> bytes kept across the model under it
_PLANNED: list = []            # (key, calls per step, bytes per call, keep) in the order decided
_local = threading.local()     # .recording: {key: [calls, bytes]} while tune() runs; .timing: depth


def budget_bytes() -> int:
    """Bytes of per-sample weights the whole model may keep for its backwards: half the workspace budget."""
    from .ops.adaptive_modconv2d.common import workspace_bytes
    return workspace_bytes() // 2


def keep_weights(key, nbytes: int) -> bool:
    """Whether the call with this key keeps its nbytes of per-sample weights for the backward (see the module
    docstring). Deterministic per key once decided."""
    decision = _DECISIONS.get(key)
    if decision is not None:
        return decision
    if torch.compiler.is_compiling() or getattr(_local, "timing", 0):
        return False
    recording = getattr(_local, "recording", None)
    if recording is not None:
        entry = recording.setdefault(key, [0, nbytes])
        entry[0] += 1
        return False
    return _decide(key, 1, nbytes)


def _decide(key, calls: int, nbytes: int) -> bool:
    budget = budget_bytes()
    used = _USED.get(budget, 0)
    keep = used + calls * nbytes <= budget
    if keep:
        _USED[budget] = used + calls * nbytes
    _DECISIONS[key] = keep
    _PLANNED.append((key, calls, nbytes, keep))
    return keep


class planning:
    """Inside: count the calls per key (tune() uses this); on exit, plan the keys not yet decided."""

    def __enter__(self):
        self.outer = getattr(_local, "recording", None)
        if self.outer is None:
            _local.recording = {}
        return self

    def __exit__(self, *exc):
        if self.outer is not None:              # nested: the outermost plans
            return False
        recording, _local.recording = _local.recording, None
        if exc[0] is None:
            for key, (calls, nbytes) in recording.items():
                if key not in _DECISIONS:
                    _decide(key, calls, nbytes)
        return False


class not_the_model:
    """Inside: calls are autotune's timing runs, not the model's: they rebuild and are not counted."""

    def __enter__(self):
        _local.timing = getattr(_local, "timing", 0) + 1

    def __exit__(self, *exc):
        _local.timing -= 1
        return False


def plan_report() -> list:
    """(key, calls per step, bytes per call, keep) per decision, in the order made."""
    return list(_PLANNED)


def kept_bytes() -> int:
    """Bytes of per-sample weights the plan keeps under the current budget (per step)."""
    return _USED.get(budget_bytes(), 0)


def forget() -> None:
    _DECISIONS.clear()
    _USED.clear()
    _PLANNED.clear()
