"""Training that never loses a run, tried as a user hits it: checkpoint retention with a bad file, one run per
directory, the lock, data that yields nothing, image modes, a batch of one, flags, preemption. CPU, tiny
preset, reference ops."""
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("open_clip", reason="the model needs open_clip_torch (requirements.txt)")

from gigagan.__main__ import main
from gigagan.data import to_tensor
from gigagan.images import plot_losses
from gigagan.rundir import RunDirectory, RunDirError
from gigagan.training import CheckpointError, TrainConfig, Trainer, TrainingError, list_checkpoints, load_checkpoint
from tests.helpers import ROOT, train_cmd, train_env


def _cfg(out, **kw):
    base = dict(preset="tiny", steps=4, batch_size=2, out=str(out), impl="ref", log_every=1, sample_every=0,
                ckpt_every=2, progress=False, r1_interval=2, seed=3, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _names(out):
    return [os.path.basename(p) for p in list_checkpoints(str(out))]


# ------------------------------------------------------------------------------------------------
# Checkpoints and retention
# ------------------------------------------------------------------------------------------------
def test_retention_never_counts_a_corrupt_checkpoint(tmp_path):
    """A truncated higher-numbered file: resume falls back to the good one, moves the bad one aside, and keep 1
    keeps the newest good checkpoint; the next resume continues from it."""
    out = tmp_path / "run"
    Trainer(_cfg(out, keep_checkpoints=1)).fit()
    good = (out / "ckpt-00000004.pt").read_bytes()
    (out / "ckpt-00000099.pt").write_bytes(good[: len(good) // 3])
    messages = []
    resumed = Trainer(_cfg(out, steps=6, keep_checkpoints=1), log=messages.append)
    resumed.fit(resume=True)
    assert resumed.step == 6 and _names(out) == ["ckpt-00000006.pt"]
    assert (out / "corrupt" / "ckpt-00000099.pt").exists()
    assert any("not a whole checkpoint" in m for m in messages)
    again = Trainer(_cfg(out, steps=8, keep_checkpoints=1))
    again.fit(resume=True)
    assert load_checkpoint(list_checkpoints(str(out))[0])["step"] == 8


def test_a_checkpoint_that_rots_after_writing_is_moved_aside_not_counted(tmp_path):
    out = tmp_path / "run"
    Trainer(_cfg(out, keep_checkpoints=3)).fit()
    newest = out / "ckpt-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])          # the manifest's size no longer matches
    run_dir = RunDirectory(str(out), log=lambda _: None)
    assert [os.path.basename(p) for p in run_dir.checkpoints()] == ["ckpt-00000002.pt"]
    assert (out / "corrupt" / "ckpt-00000004.pt").exists() and not newest.exists()


def test_checkpoints_get_the_umask_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        Trainer(_cfg(tmp_path / "run", steps=2)).fit()
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "run" / "ckpt-00000002.pt").st_mode & 0o777) == 0o644
    assert (os.stat(tmp_path / "run" / "checkpoints.json").st_mode & 0o777) == 0o644


class NotATensor:
    pass


def test_weights_only_refusal_does_not_advise_unsafe_loading(tmp_path):
    path = tmp_path / "ckpt-00000001.pt"
    torch.save({"step": 1, "thing": NotATensor()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(path))
    assert "refusing to unpickle" in str(info.value) and "weights_only=False" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# One run per directory, and the lock
# ------------------------------------------------------------------------------------------------
def test_a_new_run_into_an_old_runs_directory_is_refused_or_moves_it_aside(tmp_path):
    out = tmp_path / "run"
    Trainer(_cfg(out, steps=4)).fit()
    with pytest.raises(RunDirError, match="--resume to continue it, --overwrite"):
        Trainer(_cfg(out, steps=2)).fit()
    assert _names(out) == ["ckpt-00000004.pt", "ckpt-00000002.pt"]          # nothing touched
    Trainer(_cfg(out, steps=2)).fit(overwrite=True)
    assert _names(out) == ["ckpt-00000002.pt"]
    archived = list((out / "previous-runs").iterdir())
    assert len(archived) == 1
    assert load_checkpoint(str(archived[0] / "ckpt-00000004.pt"))["step"] == 4   # the old run is still loadable
    assert (archived[0] / "log.jsonl").exists()
    assert not (out / ".lock").exists()


def test_a_second_trainer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".tmp-writing.pt").write_bytes(b"a first trainer's checkpoint in flight")
    (out / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "since": "now"}))
    with pytest.raises(RunDirError, match=f"in use by process {os.getpid()}"):
        Trainer(_cfg(out, steps=1)).fit()
    assert (out / ".tmp-writing.pt").exists()                    # the holder's temp file is left alone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": "then"}))
    messages = []
    Trainer(_cfg(out, steps=1), log=messages.append).fit()
    assert any("no longer running" in m and "taking it over" in m for m in messages)
    assert not (out / ".tmp-writing.pt").exists() and not (out / ".lock").exists()


def test_resume_without_a_checkpoint_is_an_error_unless_asked_to_start(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="--resume-or-start"):
        Trainer(_cfg(out, steps=1)).fit(resume=True)
    assert main(train_cmd(out, 1, "--resume")[3:]) == 1
    assert "--resume-or-start" in capsys.readouterr().err
    assert main(train_cmd(out, 2, "--resume-or-start")[3:]) == 0
    assert _names(out) == ["ckpt-00000002.pt"]


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def _corrupt_folder(path):
    path.mkdir()
    for i in range(4):
        (path / f"{i}.png").write_bytes(b"\x89PNG not really")
        (path / f"{i}.txt").write_text("a caption")
    return path


def test_a_folder_of_corrupt_images_stops_with_the_reasons(tmp_path):
    data = _corrupt_folder(tmp_path / "data")
    with pytest.raises(TrainingError, match=r"no usable sample in 3 batches in a row from --data .* \(6 samples "
                                            r"tried on rank 0; dropped: 6 unreadable image \(\w+Error\)\)"):
        Trainer(_cfg(tmp_path / "run", data=str(data), max_bad_batches=3)).fit()


def test_signals_are_honoured_while_no_batch_is_usable(tmp_path):
    """SIGTERM while every batch is corrupt: the trainer saves and exits 143 at once, it does not spin."""
    data = _corrupt_folder(tmp_path / "data")
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(out, 10, "--data", str(data), "--max-bad-batches", "100000000"), cwd=ROOT,
                            env=train_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not (out / ".lock").exists() and time.time() - t0 < 120:
        time.sleep(0.1)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, output
    assert "preempted by SIGTERM at step 0" in output


def _shard(path, count):
    with tarfile.open(path, "w") as tar:
        for k in range(count):
            buf = io.BytesIO()
            Image.new("RGB", (16, 16), (20 * k, 100, 50)).save(buf, format="PNG")
            for ext, payload in (("png", buf.getvalue()), ("txt", f"caption {k}".encode())):
                info = tarfile.TarInfo(f"{k:06d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_a_shard_pattern_that_yields_nothing_stops_with_an_error(tmp_path):
    pytest.importorskip("webdataset")
    with pytest.raises(TrainingError, match="received no data"):
        Trainer(_cfg(tmp_path / "run", data=str(tmp_path / "missing-{000..001}.tar"))).fit()


def test_more_ranks_than_shards_stops_every_rank(tmp_path):
    """Two ranks, one shard: rank 1 gets no data. Both stop with the error instead of hanging."""
    pytest.importorskip("webdataset")
    _shard(tmp_path / "only-000.tar", 8)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "gigagan", *train_cmd(tmp_path / "run", 4, "--data", str(tmp_path / "only-{000..000}.tar"))[3:]]
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "received no data" in proc.stdout + proc.stderr


def test_every_image_mode_converts(tmp_path):
    ramp16 = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (4, 1))
    wide = to_tensor(Image.fromarray(ramp16))
    assert wide.shape == (3, 4, 16) and wide.min() == -1 and wide.max() == 1       # scaled, not clipped white
    assert abs(wide[0, 0, 8].item()) < 0.1
    assert torch.equal(to_tensor(Image.fromarray(ramp16.astype(np.int32))), wide)
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))                               # fully transparent red
    assert torch.allclose(to_tensor(clear), torch.ones(3, 4, 4))                   # on white
    half = to_tensor(Image.new("LA", (4, 4), (0, 128)))
    assert torch.allclose(half, torch.full((3, 4, 4), 127 / 127.5 - 1), atol=1e-2)
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    assert torch.allclose(to_tensor(palette)[:, 0, 0], torch.tensor([-1.0, -1.0, 1.0]))
    palette.info["transparency"] = 1
    assert torch.allclose(to_tensor(palette), torch.ones(3, 4, 4))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp16).save(path)
    with Image.open(path) as reopened:                                              # as a folder dataset opens it
        assert torch.allclose(to_tensor(reopened), wide, atol=1e-2)


# ------------------------------------------------------------------------------------------------
# Matching-aware loss with a batch of one
# ------------------------------------------------------------------------------------------------
def test_mismatched_captions_never_repeat_the_own_caption(tmp_path, monkeypatch):
    trainer = Trainer(_cfg(tmp_path / "run", batch_size=1, steps=3))
    encoded = []
    real_encode = trainer.model.clip.encode
    monkeypatch.setattr(trainer.model.clip, "encode", lambda caps: encoded.append(list(caps)) or real_encode(caps))
    text = real_encode(["a"])
    assert trainer.captions.mismatched(text, ["a"]) is None                     # nothing else known yet
    trainer.captions.remember(["a", "b"])
    trainer.captions.mismatched(text, ["a"])
    assert encoded[-1] == ["b"]
    trainer.captions.mismatched(real_encode(["a", "a", "c"]), ["a", "a", "c"])
    assert encoded[-1][0] == "c" and encoded[-1][1] in ("b", "c") and encoded[-1][2] == "a"
    trainer.captions.recent.clear()
    trainer.captions.mismatched(real_encode(["a", "a", "c"]), ["a", "a", "c"])      # the batch's own other caption
    assert encoded[-1] == ["c", "c", "a"]
    trainer.fit()                                                        # batch 1 trains; the pool grows
    assert trainer.step == 3 and len(trainer.captions.recent) >= 2
    assert load_checkpoint(list_checkpoints(str(tmp_path / "run"))[0])["caption_pool"] == list(trainer.captions.recent)


# ------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--steps", "-5"], "--steps must be an integer >= 1, got -5"),
    (["--lr", "-1"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--grad-accum", "0"], "--grad-accum must be an integer >= 1"),
    (["--grad-accum", "3"], "--grad-accum must divide batch_size (2)"),
    (["--log-every", "0"], "--log-every must be an integer >= 1"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be an integer >= 1"),
    (["--workers", "-1"], "--workers must be an integer >= 0"),
    (["--max-minutes", "0"], "--max-minutes must be a finite number > 0"),
    (["--data", "nowhere"], "--data nowhere: no such folder"),
    (["--overwrite", "--resume"], "--overwrite starts a new run"),
])
def test_bad_training_flags_fail_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(train_cmd(out, 2, *flags)[3:]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_an_unwritable_out_fails_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    assert main(train_cmd(tmp_path / "file" / "run", 2)[3:]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "cannot create the run directory" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    Trainer(_cfg(out, steps=2)).fit()
    return out


@pytest.mark.parametrize("command, flags, message", [
    ("sample", ["--prompt", "x", "--columns", "0"], "--columns must be an integer >= 1"),
    ("sample", ["--prompt", "x", "--truncation", "nan"], "--truncation must be a finite number"),
    ("interpolate", ["--prompt-a", "x", "--prompt-b", "y", "--steps", "1"], "--steps must be an integer >= 2"),
    ("prompt-mix", ["--prompt-a", "x", "--prompt-b", "y", "--count", "0"], "--count must be an integer >= 1"),
    ("style-mix", ["--prompt", "x", "--seeds-a", "one"], "must be comma-separated integers"),
    ("upsample", ["--prompt", "x", "--image", "missing.png"], "--image missing.png: no such file"),
])
def test_bad_sampling_flags_fail_in_one_line(base_run, tmp_path, capsys, command, flags, message):
    assert main([command, "--ckpt", str(base_run), "--impl", "ref", "--out", str(tmp_path / "o.png"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


def test_sampling_errors_name_the_flag_and_file(base_run, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert main(["sample", "--ckpt", str(bad), "--prompt", "x", "--out", str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gigagan sample: --ckpt {bad}:") and "truncated or corrupt" in err
    assert len(err.splitlines()) == 1
    assert main(["sample", "--ckpt", str(base_run), "--prompt", "x", "--out",
                 str(tmp_path / "no" / "such" / "o.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_torn_log_line_does_not_break_the_loss_plot(base_run, tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text((base_run / "log.jsonl").read_text() + '{"step": 3, "loss_d": 1.')
    plot_losses(str(log), str(tmp_path / "loss.png"))
    assert (tmp_path / "loss.png").exists()


def test_a_second_signal_stops_at_once_with_whole_checkpoints(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(out, 100000, "--ckpt-every", "1"), cwd=ROOT, env=train_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not list((out.glob("ckpt-*.pt")) if out.exists() else []) and time.time() - t0 < 180:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, output
    assert "preempted by SIGINT" in output
    for path in list_checkpoints(str(out)):
        load_checkpoint(path)
    assert not list(out.glob(".tmp-*")) and not (out / ".lock").exists()
