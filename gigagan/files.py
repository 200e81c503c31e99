"""Output files and folders as every command writes them: whole files with the umask's mode, and no empty folder
left behind by a command that failed."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Callable, Iterator

from .rundir import _umask_mode


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """write(tmp) fills a temp file beside `path`, which then replaces `path` with the umask's mode (mkstemp's is
    0600, which would keep a shared model from its readers): a crash leaves the old file or none."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    write_atomic(path, write)


def _missing_dirs(path: str) -> list:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing, path = [], os.path.abspath(path)
    while path and not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


@contextlib.contextmanager
def removed_if_failed(*paths: str) -> Iterator[None]:
    """Run the block; when it raises, remove the folders it created for `paths` (each path and its parents
    that did not exist before) while they are empty. A folder holding anything stays: nothing is lost."""
    created = [d for p in paths if p for d in _missing_dirs(p)]
    try:
        yield
    except BaseException:
        for directory in created:                 # deepest first
            try:
                os.rmdir(directory)
            except OSError:
                pass                              # not empty, or already gone
        raise
