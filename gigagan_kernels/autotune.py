"""auto that measures: the first call with a new key times the op's runnable candidates on the user's device and
keeps the fastest, in the process and on disk, as cuDNN's benchmark mode and Triton's autotune do.

- What is timed: on CPU every runnable candidate; on CUDA those the cost model puts within 3x of its best (at
  least its top 3), and those it cannot predict. A candidate whose predicted_bytes exceed the free memory is
  skipped, with the reason; so is one whose tuning_reasons refuse the tuned call's data (torch:gram where the
  mixed filters nearly cancel): a judgement made once per key, here, never per call.
- How: the forward when no input needs a gradient, else forward + backward, on cloned inputs with a private
  torch.Generator (global RNG state, parameters and their .grad are untouched); medians of repetitions, on
  CUDA by triton.testing.do_bench (CUDA events, an L2 flush). The fastest wins; a tie within 5% goes to the
  op's order of preference (on CUDA the cost model's order, on CPU the fixed order in the op's dispatch.py).
- Never timed: with GIGAGAN_KERNELS_AUTOTUNE=off; Triton interpreter calls (TRITON_INTERPRET=1 on CPU keeps the
  untuned rule); while torch.compile traces or a CUDA graph captures; under torch.distributed outside `tune`
  (ranks must agree, and nothing inside an op talks to other ranks). There the table decides, or on a miss the
  op's predicted pick.
- The key: op, requested impl, device (name, capability, SMs; CPU model and threads), torch / triton / CUDA
  versions, a hash of the op package's sources, the call's shapes, dtype, memory layout, grad mode, autocast,
  deterministic mode and options (dispatch.py's call_key). The static parts are computed once per process.
- Where decisions live: a thread-safe table in the process, and GIGAGAN_KERNELS_CACHE_DIR/autotune.json
  (default $XDG_CACHE_HOME/gigagan_kernels, else ~/.cache/gigagan_kernels), written atomically under a file
  lock so that concurrent writers merge. An unreadable file is a warning, and is rebuilt.

`tune(fn, *args, **kwargs)` runs fn once with every call inside it tuned; under torch.distributed it then makes
rank 0's table every rank's. `autotune_report()` lists the decisions; `python -m gigagan_kernels autotune`
shows, clears, exports and imports them.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import threading
import time
import warnings
from typing import Callable, Optional

import torch

from . import backend, memory

ENV_VAR = "GIGAGAN_KERNELS_AUTOTUNE"
CACHE_ENV = "GIGAGAN_KERNELS_CACHE_DIR"
CACHE_FILE = "autotune.json"
FORMAT_VERSION = 1
TIE = 0.05                  # candidates within 5% of the fastest count as tied
PRUNE_FACTOR = 3.0          # on CUDA, time what the cost model puts within 3x of its best
MIN_TIMED = 3               # ... and at least its top 3
CPU_MIN_RUN_SECONDS = 0.03  # per candidate on CPU: at least CPU_MIN_RUNS rounds, about this long in all
CPU_MIN_RUNS = 3
CPU_MAX_RUNS = 25

log = logging.getLogger("gigagan_kernels.autotune")


def enabled() -> bool:
    raw = os.environ.get(ENV_VAR, "on").strip().lower()
    if raw in ("on", "1", "true", "yes", ""):
        return True
    if raw in ("off", "0", "false", "no"):
        return False
    raise ValueError(f"{ENV_VAR} must be 'on' or 'off', got {raw!r}")


def cache_dir() -> str:
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gigagan_kernels")


# ----------------------------------------------------------------------------------------------
# The key: static parts once per process (per device), the call's own parts per call.
# ----------------------------------------------------------------------------------------------
_static: dict = {}


def _source_hash(op: str) -> str:
    """A hash of the op package's sources and the cost model: an edit to either re-tunes."""
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    folder = os.path.join(here, "ops", op)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if name.endswith(".py"):
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(name.encode() + f.read())
    with open(os.path.join(here, "cost_model.py"), "rb") as f:
        digest.update(f.read())
    return digest.hexdigest()[:16]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_descriptor(device: torch.device) -> str:
    """The device part of the key: name, capability and SM count on CUDA; the CPU model and torch's threads."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        key = ("cuda", index)
        if key not in _static:
            p = torch.cuda.get_device_properties(index)
            _static[key] = f"{p.name} sm_{p.major}{p.minor} {p.multi_processor_count}SM"
        return _static[key]
    threads = torch.get_num_threads()
    key = ("cpu", threads)
    if key not in _static:
        _static[key] = f"{_cpu_name()} {threads} threads"
    return _static[key]


def _versions(op: str) -> str:
    key = ("versions", op)
    if key not in _static:
        triton_version = "none"
        if backend.triton_installed():
            import triton
            triton_version = triton.__version__
        _static[key] = (f"torch {torch.__version__} triton {triton_version} cuda {torch.version.cuda} "
                        f"src {_source_hash(op)}")
    return _static[key]


_threads = [torch.get_num_threads()]


def _thread_count() -> int:
    """torch's intra-op threads; while dynamo traces (it cannot call get_num_threads), the last eager call's."""
    if not torch.compiler.is_compiling():
        _threads[0] = torch.get_num_threads()
    return _threads[0]


def make_key(op: str, requested: str, call) -> tuple:
    """The in-process key: cheap to build per call (tuples of what the call already holds)."""
    device = call.device
    return (op, requested, device.type, device.index, _thread_count(), call.key(),
            torch.is_autocast_enabled(device.type) if device.type in ("cuda", "cpu") else False,
            torch.are_deterministic_algorithms_enabled())


def key_string(op: str, requested: str, call) -> str:
    """The persistent form of the key, with the device and versions spelled out."""
    return " | ".join([op, requested, device_descriptor(call.device), _versions(op), repr(call.key()),
                       f"autocast={torch.is_autocast_enabled(call.device.type)}",
                       f"deterministic={torch.are_deterministic_algorithms_enabled()}"])


# ----------------------------------------------------------------------------------------------
# The decision table: in the process and on disk.
# ----------------------------------------------------------------------------------------------
class DecisionTable:
    def __init__(self):
        self.lock = threading.RLock()
        self.by_key: dict = {}            # make_key tuple -> record
        self.by_string: dict = {}         # key string -> record: this process's and the file's
        self.loaded = False
        self.agreed = False               # under torch.distributed: the table is rank 0's, the file is not read
        self.generation = 0               # bumped on every change: the dispatcher's cached choices depend on it

    def path(self) -> str:
        return os.path.join(cache_dir(), CACHE_FILE)

    def _read_file(self) -> dict:
        path = self.path()
        try:
            with open(path) as f:
                data = json.load(f)
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION or \
                    not isinstance(data.get("decisions"), dict):
                raise ValueError(f"not a version-{FORMAT_VERSION} decision table")
            return {k: v for k, v in data["decisions"].items() if isinstance(v, dict) and "choice" in v}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            warnings.warn(f"gigagan_kernels autotune: ignoring the unreadable cache {path} ({e}); it will be "
                          "rebuilt", stacklevel=2)
            return {}

    def load(self) -> None:
        with self.lock:
            if self.loaded:
                return
            self.loaded = True
            for key, record in self._read_file().items():
                self.by_string.setdefault(key, dict(record, source="cache"))

    def lookup(self, key: tuple, make_string: Callable[[], str]) -> Optional[dict]:
        record = self.by_key.get(key)
        if record is not None:
            return record
        with self.lock:
            if not self.agreed:
                self.load()
            record = self.by_string.get(make_string())
            if record is not None:
                self.by_key[key] = record
            return record

    def store(self, key: tuple, record: dict, persist: bool) -> None:
        with self.lock:
            self.by_key[key] = record
            self.by_string[record["key"]] = record
            self.generation += 1
        if persist:
            self.write({record["key"]: record})

    def write(self, records: dict) -> None:
        """Merge records into the file: under a lock, re-read, add, write a temporary file, rename it."""
        folder = cache_dir()
        try:
            os.makedirs(folder, exist_ok=True)
            with _file_lock(os.path.join(folder, CACHE_FILE + ".lock")):
                merged = self._read_file()
                merged.update({k: {f: v for f, v in r.items() if f != "source"} for k, r in records.items()})
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=CACHE_FILE + ".", suffix=".tmp")
                try:
                    with os.fdopen(fd, "w") as f:
                        json.dump({"version": FORMAT_VERSION, "decisions": merged}, f, indent=1, sort_keys=True)
                        f.flush()
                        os.fsync(f.fileno())
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, self.path())
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
        except OSError as e:
            warnings.warn(f"gigagan_kernels autotune: could not write {self.path()} ({e}); decisions stay in this "
                          "process only", stacklevel=2)

    def forget(self) -> None:
        """Drop this process's table; the file is read again on the next miss (as in a new process)."""
        with self.lock:
            self.by_key.clear()
            self.by_string.clear()
            self.loaded = False
            self.agreed = False
            self.generation += 1

    def clear(self) -> None:
        with self.lock:
            self.forget()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path())

    def records(self) -> list:
        with self.lock:
            if not self.agreed:
                self.load()
            return list(self.by_string.values())

    def replace_all(self, records: dict) -> None:
        """Adopt another table (rank 0's) as this process's whole table."""
        with self.lock:
            self.by_key.clear()
            self.by_string = dict(records)
            self.loaded = True
            self.agreed = True
            self.generation += 1


@contextlib.contextmanager
def _file_lock(path: str):
    try:
        import fcntl
    except ImportError:             # no advisory locks here: writers still replace the file atomically
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


TABLE = DecisionTable()


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------
_local = threading.local()


def _timer_override() -> Optional[Callable]:
    return getattr(_local, "timer", None)


@contextlib.contextmanager
def use_timer(timer: Callable):
    """Time candidates with timer(candidate_name, call) -> seconds instead of running them (the tests' fake)."""
    previous = getattr(_local, "timer", None)
    _local.timer = timer
    try:
        yield
    finally:
        _local.timer = previous


def _tuning() -> bool:
    return getattr(_local, "tuning", 0) > 0


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def may_time(call) -> tuple[bool, str]:
    """Whether this call may time candidates now, and if not, why."""
    if torch.compiler.is_compiling():
        return False, "torch.compile is tracing"
    if call.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False, "a CUDA graph is capturing"
    if call.device.type == "cpu" and backend.triton_interpret():
        return False, "the Triton interpreter is on"
    if call.device.type not in ("cpu", "cuda"):
        return False, f"no timer for {call.device.type} tensors"
    if _distributed() and not _tuning():
        return False, "torch.distributed is initialised and this call is outside tune()"
    return True, ""


def _free_bytes(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _one_call(candidate, call):
    """A closure running one call of the candidate (forward, or forward + backward) on clones of the inputs."""
    generator = torch.Generator(device=call.device).manual_seed(0)
    clone = call.clone_for_timing()
    wrt = [t for t in clone.tensors() if t is not None and t.requires_grad]
    state = {}

    def once():
        with torch.enable_grad() if wrt else torch.no_grad(), memory.not_the_model():
            out = candidate.run(clone)
            if wrt:
                if "grad" not in state:
                    state["grad"] = torch.randn(out.shape, device=out.device, dtype=out.dtype, generator=generator)
                torch.autograd.grad(out, wrt, state["grad"])
    return once


def _time_candidates(entry, names: list, call, skipped: dict) -> dict:
    """Median seconds per candidate. On CUDA do_bench per candidate (CUDA events, an L2 flush); on CPU interleaved
    rounds, one call of each candidate per round, so that a busy machine's drift hits them alike, in an order
    rotated each round (a call after a memory-hungry one pays its page faults). A candidate that
    fails (out of memory, a compile error) is skipped with the reason."""
    def failed(name, e):
        skipped[name] = f"failed while timing: {type(e).__name__}: {str(e).splitlines()[0][:200]}"

    timer = _timer_override()
    runs = {}
    for name in names:
        try:
            if timer is not None:
                runs[name] = float(timer(name, call))
                continue
            runs[name] = _one_call(entry.get(name), call)
            runs[name]()                                                   # compile / warm up
        except (RuntimeError, ValueError, torch.OutOfMemoryError) as e:
            runs.pop(name, None)
            failed(name, e)
    if timer is not None:
        return runs
    if call.device.type == "cuda":
        from triton.testing import do_bench
        times = {}
        for name, once in runs.items():
            try:
                times[name] = do_bench(once, warmup=5, rep=25, return_mode="median") * 1e-3
            except (RuntimeError, torch.OutOfMemoryError) as e:
                failed(name, e)
        return times
    samples: dict = {name: [] for name in runs}
    start, rounds = time.perf_counter(), 0
    while runs and (rounds < CPU_MIN_RUNS or
                    (time.perf_counter() - start < CPU_MIN_RUN_SECONDS * len(runs) and rounds < CPU_MAX_RUNS)):
        order = list(runs.items())
        for name, once in order[rounds % len(order):] + order[:rounds % len(order)]:   # rotated: each follows each
            t0 = time.perf_counter()
            once()
            samples[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(s) for name, s in samples.items()}


def _preference(entry, runnable: tuple, call) -> list:
    """The tie order: on CUDA the cost model's (unpredicted candidates after), on CPU the op's fixed order."""
    if call.device.type == "cuda":
        predicted = {name: entry.get(name).predicted_seconds(call) for name in runnable}
        return sorted(runnable, key=lambda n: (predicted[n] is None, predicted[n] or 0.0, entry.names.index(n)))
    return sorted(runnable, key=lambda n: entry.preference.index(n) if n in entry.preference else len(runnable))


def _to_time(entry, runnable: tuple, call) -> tuple[list, dict]:
    """(candidates to time, {skipped candidate: reason})."""
    skipped = {}
    names = list(runnable)
    for name in list(names):             # judged once per key, on the tuned call's data
        reasons = entry.get(name).tuning_reasons(call)
        if reasons:
            skipped[name] = "; ".join(reasons)
            names.remove(name)
    free = _free_bytes(call.device)
    if free is not None:
        for name in list(names):
            need = entry.get(name).predicted_bytes(call)
            if need > free:
                skipped[name] = f"needs ~{need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free"
                names.remove(name)
    if call.device.type == "cuda":
        predicted = {n: entry.get(n).predicted_seconds(call) for n in names}
        known = sorted((p, n) for n, p in predicted.items() if p is not None)
        if known:
            best = known[0][0]
            keep = {n for i, (p, n) in enumerate(known) if p <= PRUNE_FACTOR * best or i < MIN_TIMED}
            for p, n in known:
                if n not in keep:
                    skipped[n] = f"predicted {p * 1e3:.3f} ms, over {PRUNE_FACTOR:g}x the best prediction"
            names = [n for n in names if n in keep or predicted[n] is None]
    return names, skipped


def _measure(entry, requested: str, runnable: tuple, call, key_str: str) -> dict:
    names, skipped = _to_time(entry, runnable, call)
    times = _time_candidates(entry, names, call, skipped)
    if not times:
        choice = entry.predicted_choice(call, runnable, requested)
        source = "predicted"
    else:
        best = min(times.values())
        tied = [n for n in _preference(entry, runnable, call) if n in times and times[n] <= best * (1 + TIE)]
        choice, source = tied[0], "measured"
    return {"op": entry.op, "key": key_str, "choice": choice, "source": source,
            "candidates": {n: (times[n] if n in times else f"skipped: {skipped[n]}")
                           for n in runnable if n in times or n in skipped},
            "device": device_descriptor(call.device),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


_logged_misses: set = set()


def decide(entry, requested: str, runnable: tuple, call) -> str:
    """The candidate among `runnable` (two or more) that runs the call."""
    return decide_final(entry, requested, runnable, call)[0]


def tuning() -> bool:
    """Inside tune()."""
    return getattr(_local, "tuning", 0) > 0


def decide_final(entry, requested: str, runnable: tuple, call) -> tuple[str, bool]:
    """(decide's choice, whether it stands for this key while state() is unchanged). Not final: a predicted pick
    made only because nothing could be timed now (a CUDA graph capturing, torch.distributed outside tune)."""
    if not enabled():
        return entry.predicted_choice(call, runnable, requested), True
    allowed, why_not = may_time(call)
    if not allowed and why_not == "the Triton interpreter is on":
        return entry.predicted_choice(call, runnable, requested), True  # the interpreter keeps the untuned rule
    key = make_key(entry.op, requested, call)
    if torch.compiler.is_compiling():
        # dynamo traces this: a plain dict read, no lock and no file (an eager call of the same key loaded it).
        record = TABLE.by_key.get(key)
        return (record["choice"] if record is not None and record["choice"] in runnable else
                entry.predicted_choice(call, runnable, requested)), False
    record = TABLE.lookup(key, lambda: key_string(entry.op, requested, call))
    if record is not None and record["choice"] in runnable:
        return record["choice"], True
    if not allowed:
        choice = entry.predicted_choice(call, runnable, requested)
        if _distributed() and key not in _logged_misses:
            _logged_misses.add(key)
            log.info("autotune: %s %s has no decision (%s); every rank takes the predicted %s", entry.op,
                     call.describe(), why_not, choice)
        return choice, False
    record = _measure(entry, requested, runnable, call, key_string(entry.op, requested, call))
    persist = record["source"] == "measured" and not (_distributed() and torch.distributed.get_rank() != 0)
    TABLE.store(key, record, persist=persist)
    return record["choice"], True


# ----------------------------------------------------------------------------------------------
# tune() and the report
# ----------------------------------------------------------------------------------------------
def tune(fn: Callable, *args, **kwargs):
    """Run fn(*args, **kwargs) once, eagerly, with every op call inside it tuned, and return its result.

    Timing runs on clones with a private generator, so the global RNG, parameters and optimiser state are
    exactly as without tuning. Under torch.distributed every rank then adopts rank 0's decision table (one
    broadcast), so all ranks run the same candidates. The calls fn makes are also what the memory plan counts
    (gigagan_kernels/memory.py): which keep their per-sample weights for the backward is decided, once, when fn
    returns (the same on every rank: the same calls)."""
    _local.tuning = getattr(_local, "tuning", 0) + 1
    try:
        with memory.planning():                 # the calls of fn are counted, and planned on return
            result = fn(*args, **kwargs)
    finally:
        _local.tuning -= 1
    if _distributed():
        agree_across_ranks()
    return result


def agree_across_ranks() -> None:
    """Make rank 0's decision table every rank's (a collective: every rank calls it)."""
    table = [dict(TABLE.by_string) if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(table, src=0)
    TABLE.replace_all(table[0])


def autotune_report() -> list:
    """One record per decision this process knows (its own and the cache file's): op, key, choice, each
    candidate's median seconds or the reason it was skipped, and source ("measured", "cache" or "predicted")."""
    return sorted(TABLE.records(), key=lambda r: (r["op"], r["key"]))


def clear() -> None:
    """Forget every decision, in this process and on disk."""
    TABLE.clear()


def export_decisions(path: str) -> int:
    records = {r["key"]: {f: v for f, v in r.items() if f != "source"} for r in autotune_report()}
    with open(path, "w") as f:
        json.dump({"version": FORMAT_VERSION, "decisions": records}, f, indent=1, sort_keys=True)
    return len(records)


def import_decisions(path: str) -> int:
    """Merge the decisions of an exported file into the cache (a team's table shipped to a fleet)."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION or not isinstance(data.get("decisions"),
                                                                                             dict):
        raise ValueError(f"{path}: not a version-{FORMAT_VERSION} gigagan_kernels autotune export")
    records = {k: v for k, v in data["decisions"].items() if isinstance(v, dict) and "choice" in v}
    TABLE.write(records)
    with TABLE.lock:
        TABLE.loaded = False
        TABLE.by_key.clear()
        TABLE.generation += 1
    return len(records)


def format_seconds(value) -> str:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{value * 1e3:.3f} ms"
    return str(value)
