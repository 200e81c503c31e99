"""Output files as every command writes them: whole files with the umask's mode. (A failed command's empty output
folders are removed by gigagan.__main__.)"""
from __future__ import annotations

import os
import tempfile
from typing import Callable

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
