"""Candidates, and the choice of one per call: the machinery both ops' dispatch.py share.

A candidate is one named way to run an op: "backend:form" ("torch:bmm", "triton:weights", "torch:sdpa-flash"),
or the backend's name where it has one form ("ref"; attention's "triton" and "cuda"). Each answers
not_supported_reasons(call), predicted_seconds(call) (the cost model's, where it has one for the device) and
predicted_bytes(call), so an error can say why every candidate was refused and auto can prune before timing.

impl is "auto", a backend ("ref", "torch", "triton", "cuda": the best of that backend's candidates) or a
candidate's name; `choose` turns it into one candidate. The use_impl context manager and GIGAGAN_KERNELS_IMPL
override "auto" (backend.py). Which of several runnable candidates wins is autotune.py's decision: measured on
the device and cached, or, where nothing may be timed, the op's predicted pick.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import backend
from .backend import BackendUnavailableError

BACKENDS = backend.IMPLS


class NondeterministicBackendError(BackendUnavailableError):
    """An explicitly requested candidate uses atomics while torch.use_deterministic_algorithms(True) is on."""


class Candidate:
    """One way to run an op. Subclasses set name, backend and atomics (what makes the candidate
    non-deterministic, or None) and implement run and not_supported_reasons."""
    name: str
    backend: str
    atomics: Optional[str] = None

    def not_supported_reasons(self, call) -> list[str]:
        raise NotImplementedError

    def predicted_seconds(self, call) -> Optional[float]:
        """The cost model's time for the call's mode on this device, or None where it has no model."""
        return None

    def predicted_bytes(self, call) -> int:
        """Device memory the call allocates beyond its inputs and output, forward and backward."""
        return 0

    def tuning_reasons(self, call) -> list[str]:
        """Why this candidate must not be chosen for the call's key, judged on the data of the call it is tuned
        on (autotune asks once per key, never per call; may read values back to the host). [] by default."""
        return []

    def run(self, call) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self):
        return f"<candidate {self.name}>"


@dataclass(frozen=True)
class OpCandidates:
    """An op's candidates and how it picks among them without timing.

    predicted_choice(call, runnable, requested) names the candidate the op runs where nothing is timed: the cost
    model's pick on CUDA, the measured rules on CPU. It is the same on every rank for the same call.
    narrow(call, pool) applies the op's own overrides (a forced Triton strategy, a forced torch form).
    preference is the fixed order that breaks ties within 5% on CPU."""
    op: str
    candidates: tuple
    predicted_choice: Callable
    narrow: Callable
    preference: tuple
    overrides: Callable = tuple     # () -> the op's own override state that narrow and predicted_choice read
    environment: tuple = ()         # the environment variables they read

    @property
    def names(self) -> tuple:
        return tuple(c.name for c in self.candidates)

    def get(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(name)

    def of_backend(self, name: str) -> tuple:
        return tuple(c for c in self.candidates if c.backend == name)


REGISTRY: dict = {}

# use_impl's choice, per thread. A thread-local rather than a ContextVar: torch 2.11's dynamo cannot trace
# ContextVar.get, which broke torch.compile(fullgraph=True) of impl="auto" there; it traces this and guards on it,
# so a different use_impl recompiles.
_override = threading.local()


@contextlib.contextmanager
def use_impl(impl: str):
    """Force what impl="auto" resolves to, e.g. for an A/B run of a whole model: a backend, or a candidate name
    ("torch:bmm"; gigagan_kernels.candidates(op) lists them), which then applies to the op that has it."""
    if impl not in ("auto",) + BACKENDS and not _is_candidate_name(impl):
        raise ValueError(f"use_impl(impl): expected one of {('auto',) + BACKENDS} or a candidate name, got {impl!r}")
    with backend.thread_override(_override, impl):
        yield


def _is_candidate_name(name) -> bool:
    return any(name in entry.names for entry in REGISTRY.values())


def forced_impl(op: str) -> str:
    """What impl="auto" means for `op` now: use_impl's choice, else GIGAGAN_KERNELS_IMPL, else "auto". A candidate
    name of another op leaves this op on "auto"."""
    chosen = getattr(_override, "value", None)
    forced = chosen or os.environ.get(backend.ENV_VAR, "").strip() or "auto"
    if forced in ("auto",) + BACKENDS or forced in REGISTRY[op].names:
        return forced
    if _is_candidate_name(forced):
        return "auto"
    source = "use_impl()" if chosen else backend.ENV_VAR
    raise ValueError(f"{source}: expected one of {('auto',) + BACKENDS} or a candidate name, got {forced!r}")


def register(op_candidates: OpCandidates) -> OpCandidates:
    REGISTRY[op_candidates.op] = op_candidates
    return op_candidates


def candidates(op: str) -> tuple:
    """The names impl= accepts for `op` besides "auto" and the backends, in the op's order of preference."""
    if op not in REGISTRY:
        raise ValueError(f"candidates(op): expected one of {tuple(REGISTRY)}, got {op!r}")
    return REGISTRY[op].names


def check_impl_name(op: str, impl, source: str) -> None:
    allowed = ("auto",) + BACKENDS + REGISTRY[op].names
    if impl not in allowed:
        raise ValueError(f"{source}: expected one of {('auto',) + BACKENDS} or a candidate {REGISTRY[op].names}, "
                         f"got {impl!r}")


def deterministic_mode() -> str:
    """"error" under torch.use_deterministic_algorithms(True), "warn" with warn_only=True, else "off"."""
    if not torch.are_deterministic_algorithms_enabled():
        return "off"
    return "warn" if torch.is_deterministic_algorithms_warn_only_enabled() else "error"


_warned_nondeterministic: set = set()


def _warn_nondeterministic(candidate: Candidate) -> None:
    if candidate.name not in _warned_nondeterministic:
        _warned_nondeterministic.add(candidate.name)
        warnings.warn(f"{candidate.name} is not deterministic ({candidate.atomics}); it runs because "
                      "torch.use_deterministic_algorithms was set with warn_only=True", stacklevel=4)


def _compile_cuda_extension(op: str, requested: str, call) -> None:
    """An explicit request for the CUDA extension compiles it on first use (auto never does); CPU tensors and
    dtypes the kernels do not take are refused by the candidates' reasons before anything compiles."""
    if call.device.type != "cuda" or call.tensors()[0].dtype not in backend.KERNEL_DTYPES:
        return
    from .cuda_extension import CudaExtensionUnavailable
    try:
        backend.cuda_extension_ops(allow_compile=True)
    except CudaExtensionUnavailable as e:
        raise BackendUnavailableError(f"{op}: impl={requested!r} is unavailable: {e}") from e


# ----------------------------------------------------------------------------------------------
# Choices already made: a call whose arguments (shapes, strides, dtypes, devices, requires_grad, options: the op's
# cache_key) and whose surroundings (dispatch_state) were seen before gets the same candidate, without validation
# or choice: a dict lookup. Never consulted while dynamo traces (the traced path is choose itself).
# ----------------------------------------------------------------------------------------------
_CHOICES: dict = {}
_CHOICES_LIMIT = 4096


_ENVIRONMENT: dict = {}


def dispatch_state(op: str) -> tuple:
    """Everything choose reads besides the call: the overrides of auto (use_impl, the op's own), the environment
    (GIGAGAN_KERNELS_IMPL, the autotune switch, TRITON_INTERPRET, the op's variables), the deterministic mode,
    autotuning's table version and state, and whether the CUDA extension is loaded. Written for speed: it runs on
    every call (the torch._C reads are what torch's deterministic-mode getters return)."""
    entry = REGISTRY[op]
    names = _ENVIRONMENT.get(op)
    if names is None:
        from . import autotune
        names = _ENVIRONMENT[op] = backend.environ_names(backend.ENV_VAR, autotune.ENV_VAR, "TRITON_INTERPRET",
                                                          *entry.environment)
    autotune, cuda_extension = _modules()
    return (backend.environ_snapshot(names), getattr(_override, "value", None), entry.overrides(),
            torch._C._get_deterministic_algorithms(), torch._C._get_deterministic_algorithms_warn_only(),
            autotune.TABLE.generation, getattr(autotune._local, "tuning", 0), torch.get_num_threads(),
            cuda_extension._module is not None)


def _modules():
    global _MODULES
    if _MODULES is None:
        from . import autotune, cuda_extension
        _MODULES = (autotune, cuda_extension)
    return _MODULES


_MODULES = None


def cached_choice(op: str, cache_key: Optional[tuple]) -> Optional[Candidate]:
    """The candidate choose gave this op for the same arguments and surroundings, or None."""
    if cache_key is None:
        return None
    candidate = _CHOICES.get((op, cache_key, dispatch_state(op)))
    if candidate is not None and candidate.atomics and deterministic_mode() == "warn":
        _warn_nondeterministic(candidate)
    return candidate


def _remember(op: str, cache_key: Optional[tuple], candidate: Candidate) -> None:
    if cache_key is None or torch.compiler.is_compiling():
        return
    if len(_CHOICES) >= _CHOICES_LIMIT:
        _CHOICES.clear()
    _CHOICES[(op, cache_key, dispatch_state(op))] = candidate


def forget_choices() -> None:
    _CHOICES.clear()


def choose(op: str, impl: str, call, *, empty: bool = False, cache_key: Optional[tuple] = None) -> Candidate:
    """The candidate that runs `call` for the user's impl argument, or BackendUnavailableError naming each
    refused candidate's reasons. An empty call (no output elements, which the op returns itself) only checks
    that the request can run: nothing is timed or predicted for it. cache_key: the op's key of the call's
    arguments (impl included), under which the choice is remembered for cached_choice when it stands."""
    from . import autotune
    entry = REGISTRY[op]
    check_impl_name(op, impl, f"{op}(impl=...)")
    requested = forced_impl(op) if impl == "auto" else impl
    if requested != "auto" and requested.split(":")[0] == "cuda":
        _compile_cuda_extension(op, requested, call)
    determinism = deterministic_mode()
    if requested in entry.names:
        candidate = entry.get(requested)
        reasons = candidate.not_supported_reasons(call)
        if reasons:
            raise BackendUnavailableError(f"{op}: impl={requested!r} is unavailable: {'; '.join(reasons)}")
        if candidate.atomics and determinism == "error":
            raise NondeterministicBackendError(
                f"{op}: impl={requested!r} is not deterministic ({candidate.atomics}) and "
                "torch.use_deterministic_algorithms(True) is on; choose a deterministic candidate, or pass "
                "warn_only=True")
        if candidate.atomics and determinism == "warn":
            _warn_nondeterministic(candidate)
        _remember(op, cache_key, candidate)
        return candidate
    pool = entry.narrow(call, entry.candidates if requested == "auto" else entry.of_backend(requested))
    runnable, refused = [], []
    for candidate in pool:
        reasons = candidate.not_supported_reasons(call)
        if not reasons and candidate.atomics and determinism == "error" and requested == "auto":
            reasons = [f"not deterministic ({candidate.atomics}) under torch.use_deterministic_algorithms(True)"]
        (refused.append((candidate.name, reasons)) if reasons else runnable.append(candidate.name))
    if not runnable:
        why = "; ".join(f"{name}: {', '.join(reasons)}" for name, reasons in refused)
        raise BackendUnavailableError(f"{op}: impl={requested!r} is unavailable: {why}")
    if len(runnable) == 1 or empty:
        name, final = runnable[0], True
    else:
        name, final = autotune.decide_final(entry, requested, tuple(runnable), call)
    candidate = entry.get(name)
    if candidate.atomics and determinism == "warn":
        _warn_nondeterministic(candidate)
    if final:
        _remember(op, cache_key, candidate)
    return candidate
