"""Tools for testing and measuring the ops' host path: how many device kernels a call issues, and whether it
synchronises with the host.

    with count_kernels() as count:
        y = adaptive_modconv2d(...)
        y.backward(grad)
    count.total, count.triton, count.aten, count.syncs

A device kernel is a Triton launch, or an aten op that launches one. Triton launches are counted by a launch
hook (triton.knobs' launch_enter_hook on a GPU; under TRITON_INTERPRET=1, by wrapping the interpreter's launch,
which also marks its range so that the interpreter's own tensor copies are not counted). Aten ops come from
torch.profiler: an aten op counts when none of its aten descendants does and it is not a view, an allocation or
a resize (those launch nothing). Gradient accumulation into leaf tensors counts where autograd copies (it steals
the gradient where it can, which launches nothing). On CUDA the profiler's device activity also gives
`device_kernels`, the kernels the card ran (what a C++ op such as the CUDA extension's launches inside itself).

Host synchronisations: every aten::_local_scalar_dense (.item(), bool(tensor), int(tensor)), the aten ops whose
output shape depends on the data (nonzero, masked_select, unique, ...), and, caught by a TorchFunctionMode because
on CPU tensors they reach no aten op, calls of Tensor.item, .tolist, .numpy, .cpu, __bool__, __int__, __float__
and __index__ (each one a device-to-host copy on a GPU).
"""
from __future__ import annotations

import collections
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Optional

import torch

# Aten ops that launch no kernel: views, allocations, resizes and metadata.
NON_KERNEL_OPS = frozenset(
    "aten::" + name for name in (
        "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "resize_", "set_", "view",
        "_unsafe_view", "as_strided", "_reshape_alias", "reshape", "alias", "detach", "detach_", "lift_fresh",
        "expand", "expand_as", "slice", "select", "unsqueeze", "squeeze", "permute", "transpose", "t", "unflatten",
        "flatten", "split", "split_with_sizes", "chunk", "unbind", "narrow", "view_as", "diagonal", "movedim",
        "is_nonzero", "_local_scalar_dense", "item", "is_same_size", "result_type", "size", "stride", "numel",
        "_has_compatible_shallow_copy_type", "_to_copy_meta", "unfold_meta", "lift", "conj", "resolve_conj",
        "resolve_neg", "as_strided_", "promote_types",
        # Without a child these return their input: a cast to the same dtype, an already contiguous tensor.
        "to", "contiguous", "sum_to_size", "type_as",
    ))
# Reductions whose CPU kernels fill their output before accumulating into it: the fill is theirs (one kernel on CUDA).
FILLING_REDUCTIONS = frozenset("aten::" + name for name in ("sum", "mean", "linalg_vector_norm", "norm", "amax",
                                                             "amin", "prod", "addmm", "baddbmm", "mm", "bmm"))
FILLS = frozenset(("aten::fill_", "aten::zero_"))
# Aten ops that wait for the device: a value read back (.item(), bool(tensor); ops such as repeat_interleave with a
# tensor of repeats read theirs through it), or, on CUDA without that op, an output shape or a host value that
# depends on the data.
SYNC_OPS = frozenset("aten::" + name for name in (
    "_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive",
    "unique_dim", "equal", "allclose"))
# Tensor methods that copy to the host (on CPU tensors they reach no aten op).
SYNC_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")
TRITON_RANGE = "triton::"


@dataclass
class KernelCount:
    """What one counted region issued."""
    triton: list = field(default_factory=list)          # Triton kernel names, one per launch
    aten: list = field(default_factory=list)            # aten ops that launch a kernel, one per call
    syncs: list = field(default_factory=list)           # host synchronisations: aten ops and Tensor methods
    device_kernels: Optional[int] = None                # kernels the card ran (CUDA only)

    @property
    def total(self) -> int:
        """Device kernels issued from Python and aten (on CUDA, device_kernels also sees inside C++ ops)."""
        return len(self.triton) + len(self.aten)

    def by_name(self) -> collections.Counter:
        return collections.Counter(self.triton + self.aten)

    def describe(self) -> str:
        parts = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in sorted(self.by_name().items()))
        device = "" if self.device_kernels is None else f"; {self.device_kernels} on the device"
        return f"{self.total} kernels ({len(self.triton)} Triton, {len(self.aten)} aten{device}): {parts}"


class _HostReads(torch.overrides.TorchFunctionMode):
    """Records the Tensor methods that read device memory on the host, outside Triton interpreter launches."""

    def __init__(self, found: list):
        super().__init__()
        self.found = found
        self.methods = {getattr(torch.Tensor, name): f"Tensor.{name}" for name in SYNC_METHODS}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = self.methods.get(func)
        if name is not None and not _in_triton_launch.depth:
            self.found.append(name)
        return func(*args, **(kwargs or {}))


class _LaunchDepth(threading.local):
    depth = 0


_in_triton_launch = _LaunchDepth()


@contextlib.contextmanager
def _interpreter_launches(names: list):
    """Count the interpreter's launches, each inside a profiler range so that its copies are left out."""
    from triton.runtime import interpreter
    run = interpreter.InterpretedFunction.run

    def counted_run(self, *args, grid, warmup, **kwargs):
        if warmup:
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)
        names.append(self.fn.__name__)
        _in_triton_launch.depth += 1
        try:
            with torch.profiler.record_function(TRITON_RANGE + self.fn.__name__):
                return run(self, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            _in_triton_launch.depth -= 1

    interpreter.InterpretedFunction.run = counted_run
    try:
        yield
    finally:
        interpreter.InterpretedFunction.run = run


@contextlib.contextmanager
def _compiled_launches(names: list):
    from triton import knobs

    def enter(metadata):
        names.append(getattr(metadata, "name", "triton"))

    knobs.runtime.launch_enter_hook.add(enter)
    try:
        yield
    finally:
        knobs.runtime.launch_enter_hook.remove(enter)


def _triton_hook(names: list):
    from . import backend
    if not backend.triton_installed():
        return contextlib.nullcontext()
    return _interpreter_launches(names) if backend.triton_interpret() else _compiled_launches(names)


def _wraps_a_scalar(event) -> bool:
    """A cast of a 0-d tensor inside another op: on CPU, a Python scalar argument made a tensor (on CUDA such
    scalars stay on the host and travel as kernel arguments)."""
    return (event.name in ("aten::to", "aten::_to_copy") and event.cpu_parent is not None
            and event.cpu_parent.name.startswith("aten::") and bool(event.input_shapes)
            and event.input_shapes[0] == [])


def _inside_triton(event) -> bool:
    while event is not None:
        if event.name.startswith(TRITON_RANGE):
            return True
        event = event.cpu_parent
    return False


def _kernels_below(event, out: list) -> int:
    """Append the kernel-launching aten ops at or below `event`; returns how many."""
    if event.name.startswith(TRITON_RANGE) or _wraps_a_scalar(event):
        return 0                                        # a Triton launch is counted by the hook
    children = event.cpu_children
    if event.name in FILLING_REDUCTIONS:
        children = [c for c in children if c.name not in FILLS]
    below = sum(_kernels_below(child, out) for child in children)
    if below == 0 and event.name.startswith("aten::") and event.name not in NON_KERNEL_OPS:
        out.append(event.name)
        return 1
    return below


@contextlib.contextmanager
def count_kernels(device: Optional[torch.device] = None):
    """Count the device kernels and host synchronisations of the code inside the block (see the module's
    docstring). device="cuda" also records the card's own kernel count."""
    count = KernelCount()
    activities = [torch.profiler.ProfilerActivity.CPU]
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if on_cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    host_reads: list = []
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof, _triton_hook(count.triton):
        with _HostReads(host_reads):
            yield count
        if on_cuda:
            torch.cuda.synchronize(device)
    events = prof.events()
    for event in events:
        if event.cpu_parent is None:
            _kernels_below(event, count.aten)
    count.syncs = [e.name for e in events if e.name in SYNC_OPS and not _inside_triton(e)] + host_reads
    if on_cuda:
        # Kernels, memsets and copies on the card: each is one enqueued device operation.
        count.device_kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
