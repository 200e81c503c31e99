"""The command line: sampling commands, and which backend every command runs."""
import subprocess

import pytest

pytest.importorskip("open_clip", reason="the model needs open_clip_torch (requirements.txt)")

from gigagan.train import Trainer
from tests.helpers import train_cmd, train_env, tiny_train_config as _cfg


def test_cli_sampling_commands(tmp_path):
    from gigagan.__main__ import main
    Trainer(_cfg(tmp_path, steps=2)).fit()
    ckpt = str(tmp_path / "run")
    outputs = {
        "sample": ["--prompt", "a red circle", "--prompt", "a blue square"],
        "interpolate": ["--prompt-a", "a red circle", "--prompt-b", "a blue square", "--steps", "3"],
        "style-mix": ["--prompt", "a red circle", "--seeds-a", "1,2", "--seeds-b", "3"],
        "prompt-mix": ["--prompt-a", "a red circle", "--prompt-b", "a blue square", "--count", "2"],
    }
    from PIL import Image
    for command, extra in outputs.items():
        path = str(tmp_path / f"{command}.png")
        assert main([command, "--ckpt", ckpt, "--impl", "ref", "--out", path] + extra) == 0
        with Image.open(path) as im:
            assert im.width >= 128 and im.height >= 128
    Image.new("RGB", (24, 16), (200, 30, 30)).save(tmp_path / "small.png")
    # A base run's upsampler was never trained: upsample refuses it (the upsampler test runs it for real).
    assert main(["upsample", "--ckpt", ckpt, "--impl", "ref", "--image", str(tmp_path / "small.png"),
                 "--prompt", "a red square", "--out", str(tmp_path / "up.png")]) == 2
    assert not (tmp_path / "up.png").exists()


def test_impl_env_var_reaches_every_command_unless_the_flag_is_given(monkeypatch):
    """GIGAGAN_KERNELS_IMPL is honoured when --impl is absent; --impl wins when given; a bad value names it."""
    import argparse
    from gigagan import cli
    from gigagan.__main__ import build_parser
    for command in (["train"], ["sample", "--ckpt", "c", "--out", "o.png", "--prompt", "p"]):
        assert build_parser().parse_args(command).impl is None
    monkeypatch.setenv("GIGAGAN_KERNELS_IMPL", "ref")
    assert cli._impl(argparse.Namespace(impl=None)) == "ref"
    assert cli._impl(argparse.Namespace(impl="torch")) == "torch"
    monkeypatch.delenv("GIGAGAN_KERNELS_IMPL")
    assert cli._impl(argparse.Namespace(impl=None)) == "auto"
    monkeypatch.setenv("GIGAGAN_KERNELS_IMPL", "fast")
    with pytest.raises(cli.UsageError, match=r"\$GIGAGAN_KERNELS_IMPL must be one of .* got 'fast'"):
        cli._impl(argparse.Namespace(impl=None))


def test_train_without_impl_flag_runs_the_env_var_backend(tmp_path):
    env = train_env()                                       # GIGAGAN_KERNELS_IMPL=ref
    cmd = [c for c in train_cmd(tmp_path / "run", 1) if c not in ("--impl", "ref")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "impl ref" in proc.stdout + proc.stderr
