"""The command line's rough edges: train --help in groups with one default per flag, each subcommand listed
once, the progress bar's total and ETA under a time budget, no empty output folder after a failure, the
random-CLIP warning (one line, once, only where weights exist), and the profiler's CUDA noise on a CPU."""
import dataclasses
import io
import os
import re
import warnings

import pytest
import torch

from gigagan.__main__ import _one_line_warning, build_parser, main
from gigagan.training.config import HELP_GROUPS, TrainConfig, config_flag

GROUPS = ["data", "model", "optimisation", "losses", "checkpoints", "logging", "performance"]


def _train_parser():
    return build_parser()._subparsers._group_actions[0].choices["train"]


def test_train_help_is_in_argument_groups_with_one_default_per_flag():
    parser = _train_parser()
    titles = [g.title for g in parser._action_groups]
    assert [t for t in titles if t in GROUPS] == GROUPS
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(n for names in HELP_GROUPS.values() for n in names) == sorted(fields)   # each field in one
    by_flag = {a.option_strings[-1]: a for a in parser._actions if a.option_strings}
    for group in parser._action_groups:
        if group.title in GROUPS:
            flags = {a.option_strings[-1] for a in group._group_actions}
            want = {config_flag(f) for f in dataclasses.fields(TrainConfig) if f.name in HELP_GROUPS[group.title]}
            assert want <= flags, (group.title, want - flags)
    text = parser.format_help()
    assert "{,fid}" not in text
    for flag, action in by_flag.items():
        defaults = (action.help or "").lower().count("default")
        switch = action.nargs == 0                                  # a switch is off unless given
        assert defaults == (0 if switch else 1), (flag, action.help)


def test_top_level_help_lists_each_subcommand_once():
    text = build_parser().format_help()
    commands = list(build_parser()._subparsers._group_actions[0].choices)
    assert len(commands) >= 10 and "{" not in text
    for name in commands:
        assert len(re.findall(rf"^\s+{re.escape(name)}(\s|$)", text, flags=re.M)) == 1, name
        assert len(re.findall(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)) <= 2, name   # its line (+ a mention)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_bar_has_a_total_and_an_eta_under_a_time_budget(monkeypatch):
    """Under --max-minutes the bar's total is the step the budget is expected to end at (cfg.steps when that
    comes first), so tqdm's ETA is the run's."""
    from gigagan.training.outputs import ProgressBar
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    clock = Clock()
    bar = ProgressBar(True, total=1000, initial=1, clock=clock)
    assert bar.bar.total == 1000
    bar.budget(clock.now + 60.0)                                   # 60 s left after the first step
    for _ in range(10):                                            # 10 steps at 1 s each: 50 s, 50 steps left
        clock.now += 1.0
        bar.update()
    assert bar.bar.n == 11 and bar.bar.total == 61
    assert "11/61 [" in str(bar.bar) and "<" in str(bar.bar)     # the count of its total, elapsed<remaining
    bar.budget(clock.now + 3600.0)                                 # the steps end first: their total stays
    clock.now += 1.0
    bar.update()
    assert bar.bar.total == 1000
    bar.close()


def test_a_failed_sample_leaves_no_outdir(tmp_path, capsys):
    outdir = tmp_path / "new" / "images"
    assert main(["sample", "--ckpt", str(tmp_path / "missing.pt"), "--outdir", str(outdir), "--prompt", "x"]) == 1
    assert "missing.pt" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_failed_command_removes_only_the_empty_folders_it_created(tmp_path, monkeypatch, capsys):
    from gigagan import cli

    def fails(args):
        os.makedirs(args.out)
        raise cli.UsageError("--out: a failure after the folder was made")
    monkeypatch.setattr(cli, "cmd_export", fails)
    assert main(["export", "--ckpt", "c", "--out", str(tmp_path / "a" / "b" / "c")]) == 2
    assert sorted(os.listdir(tmp_path)) == []                     # the folder and the parents made for it
    (tmp_path / "kept").mkdir()
    assert main(["export", "--ckpt", "c", "--out", str(tmp_path / "kept" / "x")]) == 2
    assert os.listdir(tmp_path) == ["kept"]                       # a parent that was there stays

    def writes_then_fails(args):
        os.makedirs(args.out)
        open(os.path.join(args.out, "partial"), "w").close()
        raise cli.UsageError("--out: a failure after a file was written")
    monkeypatch.setattr(cli, "cmd_export", writes_then_fails)
    assert main(["export", "--ckpt", "c", "--out", str(tmp_path / "kept" / "x")]) == 2
    assert os.listdir(tmp_path / "kept" / "x") == ["partial"]     # never a folder that holds something


def test_random_clip_warning_is_one_line_once_and_only_where_weights_exist(monkeypatch):
    pytest.importorskip("open_clip")
    from gigagan import text
    from gigagan.config import TextConfig
    monkeypatch.setattr(text, "_WARNED_RANDOM", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")                            # a custom tower has no weights anywhere: quiet
        text.FrozenCLIPText(TextConfig(clip_model="custom", context_length=8, clip_width=24, clip_heads=1,
                                       clip_layers=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.device("meta"):                                # the shape only: no memory, and no warning
            text.FrozenCLIPText(TextConfig(clip_model="ViT-B-32"))
        text.FrozenCLIPText(TextConfig(clip_model="ViT-B-32", context_length=16))
        text.FrozenCLIPText(TextConfig(clip_model="ViT-B-32", context_length=20))   # another tower: still once
    assert len(caught) == 1 and caught[0].category is text.RandomCLIPWarning
    line = _one_line_warning(caught[0].message, caught[0].category, caught[0].filename, caught[0].lineno)
    assert line.count("\n") == 1 and "RANDOMLY INITIALISED" in line and line.startswith("gigagan: warning:")


def test_profiler_cuda_message_is_silenced_on_a_cpu_machine(tmp_path, capfd):
    from gigagan.training.outputs import StepProfiler, profiler_noise_dropped
    logged = []
    profiler = StepProfiler(1, str(tmp_path), torch.device("cpu"), "ref", logged.append)
    profiler.start()
    torch.randn(8, 8) @ torch.randn(8, 8)
    profiler.step_done(1)
    err = capfd.readouterr().err
    assert "gpuGetDeviceCount" not in err and "SyncActivityProfilerHandler" not in err, err
    assert (tmp_path / "profile" / "trace.json").exists() and logged
    with profiler_noise_dropped():                                 # any other line still reaches the user
        os.write(2, b"ERROR: DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35\nsomething else\n")
    assert capfd.readouterr().err == "something else\n"
