"""Whole files with the umask's mode (gigagan/files.py) (a failed command's empty folders: test_cli_polish)."""
import os

import pytest

from gigagan.files import write_text_atomic


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_write_atomic_gives_the_umasks_mode_and_leaves_no_temp_file(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text_atomic(str(tmp_path / "a.json"), "{}")
    finally:
        os.umask(old)
    assert os.listdir(tmp_path) == ["a.json"] and (tmp_path / "a.json").read_text() == "{}"
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == mode
