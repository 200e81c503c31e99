"""A training run's directory: one run per directory, a lock against a second trainer, and checkpoints that
are checked when written and when resumed from, so a bad file is never counted and never costs a good one.

Layout of a run directory:
  ckpt-XXXXXXXX.pt        checkpoints (torch.save zip archives), each written atomically
  checkpoints.json        the manifest: the checkpoints checked whole after writing, with their sizes
  .lock                   the trainer that holds the directory: {"pid", "host", "since"}
  corrupt/                checkpoints that failed to load, moved aside: never counted, never deleted
  previous-runs/<time>/   an earlier run's files, moved there when a new run is started with overwrite
  log.jsonl, samples-*.png, loss.png, tb/
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import tempfile
import zipfile
from typing import Callable, Optional

import torch

CKPT_PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")
MANIFEST = "checkpoints.json"
LOCK = ".lock"
CORRUPT_DIR = "corrupt"
PREVIOUS_DIR = "previous-runs"
# What belongs to one run (moved together by archive_run); anything else in the directory is the user's.
RUN_FILES = re.compile(r"^(ckpt-\d{8}\.pt|checkpoints\.json|log\.jsonl|samples-.*\.png|loss\.png|tb|profile|corrupt)$")


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (held by another trainer, holds another run, not writable)."""


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:08d}.pt"


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_torch_save(obj, path: str) -> None:
    """Write to a temp file in the same directory, fsync, give it the directory's normal file mode (the
    umask's, not mkstemp's 0600), then os.replace: a crash leaves the old file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def whole_archive(path: str) -> Optional[str]:
    """None when `path` is a complete torch.save archive (every member's CRC checks), else why not. Reads the
    file once; a truncated write fails here without unpickling anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        return f"{type(e).__name__}: {e}"
    return f"member {bad} fails its CRC" if bad else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDirectory:
    def __init__(self, path: str, log: Callable[[str], None] = print):
        self.path = path
        self.log = log
        self._locked = False

    # -- ownership --------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the directory for this process (creating it), or raise RunDirError naming the holder. A lock left
        by a process that no longer runs on this host is taken over with a warning. Also proves the directory
        writable before any work."""
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create the run directory {self.path}: {e.strerror}") from e
        lock = os.path.join(self.path, LOCK)
        mine = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder(lock)
                if holder.get("host") == mine["host"] and not _pid_alive(int(holder.get("pid", -1))):
                    self.log(f"warning: {self.path} was locked by process {holder.get('pid')}, which is no longer "
                             f"running (since {holder.get('since', '?')}); taking it over")
                    os.unlink(lock)
                    continue
                raise RunDirError(
                    f"{self.path} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')} "
                    f"(since {holder.get('since', '?')}): stop that trainer or choose another --out. If it is no "
                    f"longer running, delete {lock}") from None
            except OSError as e:
                raise RunDirError(f"the run directory {self.path} is not writable: {e.strerror}") from e
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
            self._locked = True
            for stale in os.listdir(self.path):               # temp files of a killed writer of this directory
                if stale.startswith(".tmp-"):
                    os.unlink(os.path.join(self.path, stale))
            return
        raise RunDirError(f"could not take the lock {lock}")

    @staticmethod
    def _holder(lock: str) -> dict:
        try:
            with open(lock) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._locked:
            try:
                os.unlink(os.path.join(self.path, LOCK))
            except FileNotFoundError:
                pass
            self._locked = False

    def holds_run(self) -> bool:
        """Whether the directory holds a run's checkpoints (whole or not)."""
        return os.path.isdir(self.path) and any(CKPT_PATTERN.match(n) for n in os.listdir(self.path))

    def archive_run(self) -> str:
        """Move the run's files into previous-runs/<UTC time>/ (nothing is deleted); returns that folder."""
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = os.path.join(self.path, PREVIOUS_DIR, stamp)
        os.makedirs(target)
        for name in os.listdir(self.path):
            if RUN_FILES.match(name):
                shutil.move(os.path.join(self.path, name), os.path.join(target, name))
        return target

    # -- checkpoints ------------------------------------------------------------------------------
    def _manifest(self) -> dict:
        try:
            with open(os.path.join(self.path, MANIFEST)) as f:
                entries = json.load(f)["checkpoints"]
            return {e["file"]: int(e["bytes"]) for e in entries}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def _write_manifest(self, entries: dict) -> None:
        ordered = sorted(entries.items(), key=lambda kv: kv[0])
        payload = json.dumps({"checkpoints": [{"file": f, "bytes": b} for f, b in ordered]}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(payload)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, os.path.join(self.path, MANIFEST))

    def checkpoints(self, check_untracked: bool = True) -> list:
        """Paths of whole checkpoints, newest first. A file the manifest lists with its size counts as
        checked; any other ckpt-*.pt is checked now (check_untracked) and moved aside when it is not whole."""
        if not os.path.isdir(self.path):
            return []
        manifest, changed = self._manifest(), False
        found = []
        for name in os.listdir(self.path):
            if not (m := CKPT_PATTERN.match(name)):
                continue
            path = os.path.join(self.path, name)
            if manifest.get(name) != os.path.getsize(path):
                why = whole_archive(path)
                if why:
                    if check_untracked:
                        self.move_aside(path, why)
                        manifest.pop(name, None)
                        changed = True
                    else:
                        self.log(f"warning: {path} is not a whole checkpoint ({why}); skipped")
                    continue
                manifest[name] = os.path.getsize(path)
                changed = True
            found.append((int(m.group(1)), path))
        if changed and check_untracked:
            self._write_manifest({n: b for n, b in manifest.items() if os.path.exists(os.path.join(self.path, n))})
        return [p for _, p in sorted(found, reverse=True)]

    def move_aside(self, path: str, why: str) -> str:
        """Move a bad checkpoint into corrupt/ (never deleted: it may still be worth a look)."""
        os.makedirs(os.path.join(self.path, CORRUPT_DIR), exist_ok=True)
        target = os.path.join(self.path, CORRUPT_DIR, os.path.basename(path))
        os.replace(path, target)
        entries = self._manifest()
        if entries.pop(os.path.basename(path), None) is not None:
            self._write_manifest(entries)
        self.log(f"warning: {path} is not a whole checkpoint ({why}); moved it to {target}")
        return target

    def save(self, state: dict, step: int, keep: int) -> str:
        """Write ckpt-<step>.pt atomically, check it whole, record it, then delete the oldest whole checkpoints
        beyond `keep`. Only checked checkpoints are counted, so a bad file never costs a good one."""
        path = os.path.join(self.path, checkpoint_name(step))
        atomic_torch_save(state, path)
        why = whole_archive(path)
        if why:
            raise OSError(f"the checkpoint just written to {path} does not read back whole ({why})")
        entries = self._manifest()
        entries[os.path.basename(path)] = os.path.getsize(path)
        self._write_manifest(entries)
        for old in self.checkpoints()[keep:]:
            os.unlink(old)
            entries.pop(os.path.basename(old), None)
        self._write_manifest({n: b for n, b in entries.items() if os.path.exists(os.path.join(self.path, n))})
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
