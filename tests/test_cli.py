"""The command line: sampling commands, and which backend every command runs."""
import subprocess

import pytest

pytest.importorskip("open_clip", reason="the model needs open_clip_torch (requirements.txt)")

from gigagan.training import Trainer
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


def test_train_flags_are_generated_from_the_config():
    """Every TrainConfig field is a flag whose default is the field's own (stated once, in the dataclass)."""
    import dataclasses

    from gigagan.__main__ import build_parser, config_flag
    from gigagan.training import TrainConfig
    args = build_parser().parse_args(["train"])
    for field in dataclasses.fields(TrainConfig):
        assert hasattr(args, field.name), field.name
        want = None if field.name == "impl" else field.default           # impl: None defers to the env var
        assert getattr(args, field.name) == want, field.name
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for field in dataclasses.fields(TrainConfig):
        assert config_flag(field) in help_text, field.name
    args = build_parser().parse_args(["train", "--betas", "0.5,0.9", "--no-progress", "--workers", "2",
                                      "--precision", "fp16", "--ema-rampup", "0.1"])
    assert args.betas == (0.5, 0.9) and args.progress is False and args.num_workers == 2
    assert args.precision == "fp16" and args.ema_rampup == 0.1


def test_train_config_file_with_flags_winning(tmp_path, capsys):
    import json

    from gigagan.__main__ import build_parser, main, train_config_defaults
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"steps": 7, "lr": 0.01, "betas": [0.1, 0.9], "matching_aware": False}))
    argv = ["train", "--config", str(path), "--steps", "9"]
    args = build_parser(train_config_defaults(argv)).parse_args(argv)
    assert (args.steps, args.lr, args.betas, args.matching_aware) == (9, 0.01, (0.1, 0.9), False)
    path.write_text(json.dumps({"steps": 7, "learning_rate": 0.1}))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not TrainConfig fields: ['learning_rate']" in err and len(err.splitlines()) == 1
    path.write_text("{not json")
    assert main(["train", "--config", str(path)]) == 2
    assert "cannot read a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("values, message", [({"betas": 5}, "betas must be a list of numbers, got 5"),
                                             ({"model_overrides": 7}, "model_overrides must be a list of strings"),
                                             ({"data": 5}, "data must be a string, got 5"),
                                             ({"steps": 1.5}, "steps must be an integer, got 1.5"),
                                             ({"tensorboard": "yes"}, "tensorboard must be true or false")])
def test_a_config_file_with_a_wrong_type_is_one_line(tmp_path, capsys, values, message):
    """A value of the wrong type in --config used to end in a traceback (TypeError: 'int' object is not
    iterable) instead of naming the field."""
    import json

    from gigagan.__main__ import main
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(values))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"gigagan train: --config {path}: {message}" or (
        len(err.splitlines()) == 1 and err.startswith(f"gigagan train: --config {path}: {message}")), err
    assert not (tmp_path / "run").exists()


def test_a_runs_own_train_config_reruns_it(tmp_path):
    """A checkpoint's train_config is a valid --config: the same run, reproduced from one file."""
    import json

    import torch

    from gigagan.__main__ import build_parser, train_config_defaults
    Trainer(_cfg(tmp_path, steps=2)).fit()
    state = torch.load(tmp_path / "run" / "ckpt-00000002.pt", weights_only=True)
    saved = json.loads(state["train_config"])
    path = tmp_path / "rerun.json"
    path.write_text(json.dumps(saved))
    argv = ["train", "--config", str(path)]
    args = build_parser(train_config_defaults(argv)).parse_args(argv)
    for name, value in saved.items():
        assert getattr(args, name) == (tuple(value) if isinstance(value, list) else value), name


def test_model_config_fields_are_settable(tmp_path, capsys):
    """--set PATH=VALUE replaces fields of the preset's model config; the run's config and checkpoint carry them,
    and a bad path or type is a one-line error naming --set."""
    import json

    import torch

    from gigagan.__main__ import main
    from gigagan.config import apply_overrides, get_preset
    config = apply_overrides(get_preset("tiny"), ["generator.mapping_lr_multiplier=0.1", "generator.z_dim=16"])
    assert config.generator.mapping_lr_multiplier == 0.1 and config.generator.z_dim == 16
    assert config.discriminator == get_preset("tiny").discriminator
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--steps", "1", "--batch-size", "2", "--device", "cpu", "--impl", "ref",
            "--ckpt-every", "1", "--sample-every", "0", "--no-progress"]
    assert main(args + ["--out", str(out), "--set", "generator.mapping_lr_multiplier=0.1", "generator.z_dim=16"]) == 0
    state = torch.load(out / "ckpt-00000001.pt", weights_only=True)
    saved = json.loads(state["config"])
    assert saved["generator"]["mapping_lr_multiplier"] == 0.1 and saved["generator"]["z_dim"] == 16
    assert json.loads(state["train_config"])["model_overrides"] == ["generator.mapping_lr_multiplier=0.1",
                                                                    "generator.z_dim=16"]
    capsys.readouterr()
    for bad, message in (("generator.nope=1", "'nope' is not a field here"),
                         ("generator.z_dim=0.5", "the field holds int, got float"), ("novalue", "is not PATH=VALUE")):
        assert main(args + ["--out", str(tmp_path / "bad"), "--set", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("gigagan train: --set must name fields of the model config") and message in err, err
        assert len(err.splitlines()) == 1
