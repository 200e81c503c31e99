"""A training run's directory: one run per directory, a lock against a second trainer, and checkpoints that
are checked when written and when resumed from, so a bad file is never counted and never costs a good one.

Layout of a run directory:
  ckpt-XXXXXXXX.pt        checkpoints (torch.save zip archives), each written atomically
  checkpoints.json        the manifest: the run's id and the checkpoints it wrote, checked whole, with their sizes
  .lock                   the trainer that holds the directory: {"pid", "host", "since"}, never empty
  corrupt/                checkpoints that failed to load, moved aside: never counted, never deleted
  other-runs/             whole checkpoints another run wrote (a file copied in), moved aside: never deleted
  previous-runs/<time>/   an earlier run's files, moved there when a new run is started with overwrite
  log.jsonl, log-abandoned.jsonl, samples-*.png, loss.png, tb/

Every failure of the file system while writing is a RunDirError naming the file and the cause (exit_code 1); a
directory that cannot be used as asked (held, holding another run) is one too (exit_code 2).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
import zipfile
from typing import Callable, Optional

import torch

CKPT_PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")
MANIFEST = "checkpoints.json"
LOCK = ".lock"
CORRUPT_DIR = "corrupt"
OTHER_RUNS_DIR = "other-runs"
PREVIOUS_DIR = "previous-runs"
# What belongs to one run (moved together by archive_run); anything else in the directory is the user's.
RUN_FILES = re.compile(r"^(ckpt-\d{8}\.pt|checkpoints\.json|log\.jsonl|log-abandoned\.jsonl|samples-.*\.png|loss\.png"
                       r"|tb|profile|corrupt|other-runs)$")
# An empty or unreadable lock this old is a trainer that died while writing it (writing takes milliseconds).
STALE_LOCK_SECONDS = 60.0


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked. exit_code 2: the choice of --out or of flags (held by another
    trainer, holds another run); exit_code 1: the file system (not writable, full, read-only, a file too large)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def os_error_in(exc: Optional[BaseException]) -> Optional[OSError]:
    """The OSError behind exc: itself, or one in its __cause__/__context__ chain. torch.save reports a failed
    write as RuntimeError("[enforce fail at inline_container.cc...]") with the OSError only in the context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def cause(err: OSError) -> str:
    """An OSError's cause in words ("File too large"), without the file name the message names already."""
    return err.strerror or str(err) or type(err).__name__


@contextlib.contextmanager
def writing(name: str):
    """An OSError while writing `name` (anywhere in the exception's chain) becomes one RunDirError line,
    "writing NAME failed: CAUSE", exit code 1."""
    try:
        yield
    except RunDirError:
        raise
    except Exception as e:
        err = os_error_in(e)
        if err is None:
            raise
        raise RunDirError(f"writing {name} failed: {cause(err)}", exit_code=1) from e


def remove_quietly(path: str) -> None:
    """Remove a temporary file on a failure path: a second failure here must not hide the first."""
    try:
        os.unlink(path)
    except OSError:
        pass


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.pt"


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_torch_save(obj, path: str) -> None:
    """Write to a temp file in the same directory, fsync, give it the directory's normal file mode (the
    umask's, not mkstemp's 0600), then os.replace: a crash or a failed write leaves the old file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def whole_archive(path: str) -> Optional[str]:
    """None when `path` is a complete torch.save archive (every member's CRC checks), else why not. Reads the
    file once; a truncated write fails here without unpickling anything. A file that cannot be read (EACCES,
    EIO) raises its OSError: it is not known to be bad."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except OSError as e:
        if e.errno not in (None, errno.EINVAL):     # EACCES, EIO...: the environment, not the file; never moved
            raise
        return f"{type(e).__name__}: {e}"
    except (zipfile.BadZipFile, EOFError) as e:
        return f"{type(e).__name__}: {e}"
    return f"member {bad} fails its CRC" if bad else None


def checkpoint_run_id(path: str) -> Optional[str]:
    """The run id a whole checkpoint records (None for one written before checkpoints had one). Memory-mapped:
    the tensors are not read."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    run_id = state.get("run_id") if isinstance(state, dict) else None
    return run_id if isinstance(run_id, str) else None


def new_run_id() -> str:
    return uuid.uuid4().hex


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _since(holder: dict) -> str:
    """" (since TIME)" from a lock's record, or nothing where it has no usable time: a message never says "?"."""
    since = holder.get("since")
    return f" (since {since})" if isinstance(since, str) and since.strip() else ""


def _unique(path: str) -> str:
    """`path`, or path.1, path.2, ... when it exists: moving a file aside never replaces another."""
    candidate, n = path, 0
    while os.path.exists(candidate):
        n += 1
        candidate = f"{path}.{n}"
    return candidate


class RunDirectory:
    def __init__(self, path: str, log: Callable[[str], None] = print):
        self.path = path
        self.log = log
        self._locked = False

    # -- ownership --------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the directory for this process (creating it), or raise RunDirError naming the holder. The lock
        file is never empty: its content is written whole to a temporary file and then linked into place. A lock
        left by a process that no longer runs on this host, or an empty or unreadable one older than
        STALE_LOCK_SECONDS, is taken over with a warning. Also proves the directory writable before any work."""
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            # A path through a file is the flag's mistake (2); anything else is the file system's (1).
            raise RunDirError(f"cannot create the run directory {self.path}: {cause(e)}",
                              exit_code=2 if e.errno in (errno.ENOTDIR, errno.EEXIST) else 1) from e
        lock = os.path.join(self.path, LOCK)
        mine = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        content = json.dumps(mine).encode()
        for _ in range(3):
            if self._create_lock(lock, content):
                self._locked = True
                for stale in os.listdir(self.path):           # temp files of a killed writer of this directory
                    if stale.startswith(".tmp-"):
                        remove_quietly(os.path.join(self.path, stale))
                return
            holder, problem, seen = self._read_lock(lock)
            if problem == "gone":                             # released meanwhile: try again
                continue
            if holder is None:
                age = time.time() - seen.st_mtime
                if age < STALE_LOCK_SECONDS:
                    raise RunDirError(
                        f"the lock {lock} is {problem} (written {age:.0f} s ago): another trainer may be starting "
                        f"there now. If none is, delete {lock} and start again (a lock like this is taken over once "
                        f"it is {STALE_LOCK_SECONDS:.0f} s old)")
                self.log(f"warning: the lock {lock} is {problem} and {age:.0f} s old (a trainer that stopped "
                         "while writing it); taking it over")
            elif holder["host"] == mine["host"] and not _pid_alive(holder["pid"]):
                self.log(f"warning: {self.path} was locked by process {holder['pid']}{_since(holder)}, which is "
                         "no longer running; taking it over")
            else:
                raise RunDirError(
                    f"{self.path} is in use by process {holder['pid']} on {holder['host']}{_since(holder)}: stop "
                    f"that trainer or choose another --out. If it is no longer running, delete {lock}")
            self._remove_lock_if_unchanged(lock, seen)
        raise RunDirError(f"could not take the lock {lock}: other trainers keep taking it")

    def _create_lock(self, lock: str, content: bytes) -> bool:
        """Create the lock with its whole content; False when one exists. The content goes to a temporary file
        first, which is hard-linked into place (atomic, and never visible half-written); where the file system
        has no hard links, O_CREAT|O_EXCL, then write and fsync, removing the lock again if the write fails."""
        tmp = os.path.join(self.path, f".tmp-lock-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            try:
                with open(tmp, "xb") as f:
                    f.write(content)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise RunDirError(f"the run directory {self.path} is not writable: writing the lock failed: "
                                  f"{cause(e)}", exit_code=1) from e
            try:
                os.link(tmp, lock)
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:           # the temp file was cleared by the trainer that took the lock
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK,
                                   errno.ENOSYS, errno.EACCES):
                    raise RunDirError(f"taking the lock {lock} failed: {cause(e)}", exit_code=1) from e
        finally:
            remove_quietly(tmp)
        return self._create_lock_exclusive(lock, content)

    @staticmethod
    def _create_lock_exclusive(lock: str, content: bytes) -> bool:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise RunDirError(f"taking the lock {lock} failed: {cause(e)}", exit_code=1) from e
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            remove_quietly(lock)                # never left empty or half-written
            raise RunDirError(f"writing the lock {lock} failed: {cause(e)}", exit_code=1) from e
        os.close(fd)
        return True

    @staticmethod
    def _read_lock(lock: str) -> tuple:
        """(holder, problem, stat): holder is the lock's record with an int pid and a host, or None with the
        problem in words ("empty", "unreadable (...)", or "gone" when there is no lock any more)."""
        try:
            with open(lock, "rb") as f:
                seen = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            return None, "gone", None
        except OSError as e:
            try:
                seen = os.stat(lock)
            except OSError:
                return None, "gone", None
            return None, f"unreadable ({cause(e)})", seen
        if not raw.strip():
            return None, "empty", seen
        try:
            holder = json.loads(raw)
            holder["pid"], holder["host"] = int(holder["pid"]), str(holder["host"])
        except (ValueError, KeyError, TypeError):
            return None, "unreadable (not a trainer's record of pid and host)", seen
        return holder, "", seen

    @staticmethod
    def _remove_lock_if_unchanged(lock: str, seen) -> None:
        """Remove a lock judged stale, unless another trainer replaced it meanwhile."""
        try:
            now = os.stat(lock)
        except FileNotFoundError:
            return
        if (now.st_ino, now.st_mtime_ns) != (seen.st_ino, seen.st_mtime_ns):
            return
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise RunDirError(f"cannot take over the stale lock {lock}: {cause(e)}", exit_code=1) from e

    def release(self) -> bool:
        """Remove this process's lock. Never raises, as it runs while another error may be on its way out: a
        lock that cannot be removed (a directory turned read-only) is reported; the next trainer on this host
        takes it over, its process being gone."""
        if not self._locked:
            return True
        self._locked = False
        lock = os.path.join(self.path, LOCK)
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.log(f"warning: could not remove the lock {lock} ({cause(e)}); the next trainer on this host takes "
                     "it over, or delete it")
            return False
        return True

    def holds_run(self) -> bool:
        """Whether the directory holds a run's checkpoints (whole or not)."""
        return os.path.isdir(self.path) and any(CKPT_PATTERN.match(n) for n in os.listdir(self.path))

    def archive_run(self) -> str:
        """Move the run's files into previous-runs/<UTC time>/ (nothing is deleted); returns that folder."""
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = _unique(os.path.join(self.path, PREVIOUS_DIR, stamp))
        os.makedirs(target)
        for name in os.listdir(self.path):
            if RUN_FILES.match(name):
                shutil.move(os.path.join(self.path, name), os.path.join(target, name))
        return target

    # -- checkpoints ------------------------------------------------------------------------------
    def _read_manifest(self) -> tuple:
        """(run id or None, {file: bytes}) of checkpoints.json; an unreadable manifest counts as none."""
        try:
            with open(os.path.join(self.path, MANIFEST)) as f:
                manifest = json.load(f)
            entries = {e["file"]: int(e["bytes"]) for e in manifest["checkpoints"]}
        except (OSError, ValueError, KeyError, TypeError):
            return None, {}
        run_id = manifest.get("run")
        return (run_id if isinstance(run_id, str) else None), entries

    def run_id(self) -> Optional[str]:
        """The id of the run whose checkpoints these are (from the manifest), or None when it has none."""
        return self._read_manifest()[0]

    def _write_manifest(self, entries: dict, run_id: Optional[str]) -> None:
        ordered = sorted(entries.items(), key=lambda kv: kv[0])
        payload = {"checkpoints": [{"file": f, "bytes": b} for f, b in ordered]}
        if run_id is not None:
            payload = {"run": run_id, **payload}
        with writing(MANIFEST):
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(payload, indent=1))
                os.chmod(tmp, _umask_mode())
                os.replace(tmp, os.path.join(self.path, MANIFEST))
            except BaseException:
                remove_quietly(tmp)
                raise

    def checkpoints(self, check_untracked: bool = True) -> list:
        """Paths of this run's whole checkpoints, newest first. A file the manifest lists with its size counts as
        checked; any other ckpt-*.pt is checked now: one that is not whole, or that another run wrote (its run id
        differs from the manifest's), is moved aside (check_untracked) or skipped with a warning (read only)."""
        if not os.path.isdir(self.path):
            return []
        run_id, manifest = self._read_manifest()
        changed, found = False, []
        for name in os.listdir(self.path):
            if not (m := CKPT_PATTERN.match(name)):
                continue
            path = os.path.join(self.path, name)
            if manifest.get(name) != os.path.getsize(path):
                why, folder = whole_archive(path), CORRUPT_DIR
                if why is None and run_id is not None:
                    try:
                        owner = checkpoint_run_id(path)
                    except Exception as e:                  # noqa: BLE001 - whole but unloadable: corrupt
                        why = f"{type(e).__name__}: {e}"
                    else:
                        if owner != run_id:
                            why = f"written by another run ({owner or 'one without a run id'}, not {run_id})"
                            folder = OTHER_RUNS_DIR
                if why:
                    if check_untracked:
                        self.move_aside(path, why, folder)
                        manifest.pop(name, None)
                        changed = True
                    else:
                        self.log(f"warning: {path} is not a whole checkpoint of this run ({why}); skipped")
                    continue
                manifest[name] = os.path.getsize(path)
                changed = True
            found.append((int(m.group(1)), path))
        if changed and check_untracked:
            self._write_manifest({n: b for n, b in manifest.items() if os.path.exists(os.path.join(self.path, n))},
                                 run_id)
        return [p for _, p in sorted(found, reverse=True)]

    def newest(self) -> str:
        """The newest whole checkpoint in words, for an error message; never raises."""
        try:
            found = self.checkpoints(check_untracked=False)
        except Exception:                                   # noqa: BLE001 - only a message depends on it
            return "whether a whole checkpoint is left is unknown"
        return f"{os.path.basename(found[0])} is the newest whole checkpoint" if found else \
            "there is no whole checkpoint yet"

    def move_aside(self, path: str, why: str, folder: str = CORRUPT_DIR) -> str:
        """Move a checkpoint into corrupt/ (not whole) or other-runs/ (another run's): never deleted, it may still
        be worth a look, and never counted."""
        os.makedirs(os.path.join(self.path, folder), exist_ok=True)
        target = _unique(os.path.join(self.path, folder, os.path.basename(path)))
        os.replace(path, target)
        run_id, entries = self._read_manifest()
        if entries.pop(os.path.basename(path), None) is not None:
            self._write_manifest(entries, run_id)
        what = "not a checkpoint of this run" if folder == OTHER_RUNS_DIR else "not a whole checkpoint"
        self.log(f"warning: {path} is {what} ({why}); moved it to {target}")
        return target

    def save(self, state: dict, step: int, keep: int) -> str:
        """Write ckpt-<step>.pt atomically, check it whole, record it (with the run id of state["run_id"]), then
        delete the oldest of this run's whole checkpoints beyond `keep`. Only checked checkpoints of this run are
        counted, so a bad file never costs a good one and another run's file is never deleted."""
        name = checkpoint_name(step)
        path = os.path.join(self.path, name)
        with writing(name):
            atomic_torch_save(state, path)
        why = whole_archive(path)
        if why:
            raise RunDirError(f"{name} does not read back whole after writing ({why})", exit_code=1)
        run_id, entries = self._read_manifest()
        run_id = state.get("run_id") or run_id
        entries[name] = os.path.getsize(path)
        self._write_manifest(entries, run_id)
        for old in self.checkpoints()[keep:]:
            try:
                os.unlink(old)
            except OSError as e:                            # the new checkpoint is whole: training goes on
                self.log(f"warning: could not delete the old checkpoint {old} ({cause(e)})")
                continue
            entries.pop(os.path.basename(old), None)
        self._write_manifest({n: b for n, b in entries.items() if os.path.exists(os.path.join(self.path, n))},
                             run_id)
        return path

    def load_latest(self, load: Callable[[str], dict], exceptions=(Exception,)) -> Optional[dict]:
        """The newest checkpoint that `load` accepts; one it rejects is moved aside with a warning."""
        for path in self.checkpoints():
            try:
                state = load(path)
            except exceptions as e:
                self.move_aside(path, str(e))
                continue
            state["path"] = path
            return state
        return None
