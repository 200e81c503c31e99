"""gigagan/files.py: whole files with the umask's mode, and no empty folder left by a command that failed."""
import os

import pytest

from gigagan.files import removed_if_failed, write_text_atomic


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_write_atomic_gives_the_umasks_mode_and_leaves_no_temp_file(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_text_atomic(str(tmp_path / "a.json"), "{}")
    finally:
        os.umask(old)
    assert os.listdir(tmp_path) == ["a.json"] and (tmp_path / "a.json").read_text() == "{}"
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == mode


def test_removed_if_failed_removes_only_the_empty_folders_it_would_have_created(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with removed_if_failed(str(tmp_path / "new" / "deeper" / "out"), str(tmp_path / "kept"), None):
            os.makedirs(tmp_path / "new" / "deeper" / "out")
            raise RuntimeError("failed")
    assert sorted(os.listdir(tmp_path)) == ["kept"]               # the folder that existed before stays
    with pytest.raises(RuntimeError):
        with removed_if_failed(str(tmp_path / "full" / "out")):
            os.makedirs(tmp_path / "full" / "out")
            (tmp_path / "full" / "out" / "partial.png").write_bytes(b"x")
            raise RuntimeError("failed")
    assert (tmp_path / "full" / "out" / "partial.png").exists()   # a folder holding anything is never removed
    with removed_if_failed(str(tmp_path / "ok")):
        os.makedirs(tmp_path / "ok")
    assert (tmp_path / "ok").is_dir()                             # success keeps it


def test_a_failed_sample_leaves_no_outdir(tmp_path, capsys):
    pytest.importorskip("open_clip", reason="the CLI loads the model (requirements.txt)")
    from gigagan.__main__ import main
    assert main(["sample", "--ckpt", str(tmp_path / "missing" / "ckpt.pt"), "--prompt", "x",
                 "--outdir", str(tmp_path / "images" / "fake")]) == 1
    assert "--ckpt" in capsys.readouterr().err and os.listdir(tmp_path) == []
