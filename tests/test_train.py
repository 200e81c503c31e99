"""Training: steps, NaN handling, checkpoints (atomic, exact resume, corrupt fallback, SIGKILL/SIGTERM) and
torchrun with gloo. CPU, tiny preset, reference ops."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("open_clip", reason="the model needs open_clip_torch (requirements.txt)")

from gigagan.training import (CheckpointError, ConfigChangeError, Trainer, TrainingError, list_checkpoints,
                              load_checkpoint, load_latest_checkpoint)
from tests.helpers import ROOT, train_cmd, train_env, tiny_train_config as _cfg


def test_device_is_validated_and_cpu_can_be_forced(tmp_path):
    with pytest.raises(ValueError, match="TrainConfig.device"):
        Trainer(_cfg(tmp_path, device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA device"):
            Trainer(_cfg(tmp_path, device="cuda"))
    assert Trainer(_cfg(tmp_path, device="cpu")).device == torch.device("cpu")


def test_train_steps_write_log_checkpoints_and_samples(tmp_path):
    trainer = Trainer(_cfg(tmp_path, sample_every=2))
    result = trainer.fit()
    assert result["step"] == 4 and result["bad_steps"] == 0
    out = tmp_path / "run"
    assert [os.path.basename(p) for p in list_checkpoints(str(out))] == ["ckpt-00000004.pt", "ckpt-00000002.pt"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_g"], r["images_per_s"]])).all() for r in records)
    assert "r1" in records[0] and "r1" not in records[1]     # lazy R1 at steps 0, 2 (interval 2)
    assert (out / "samples-00000002.png").exists() and (out / "samples-final.png").exists()
    state = torch.load(out / "ckpt-00000004.pt", weights_only=True)   # plain tensors and containers only
    assert state["step"] == 4


def test_max_minutes_stops_training_with_a_checkpoint_and_samples(tmp_path):
    # The budget starts after the first step (which tunes the ops) and is checked before every later one.
    result = Trainer(_cfg(tmp_path, steps=1000, max_minutes=1e-9, ckpt_every=1000)).fit()
    assert result["out_of_time"] and result["step"] == 1
    out = tmp_path / "run"
    assert load_checkpoint(list_checkpoints(str(out))[0])["step"] == 1
    assert (out / "samples-final.png").exists()
    assert not Trainer(_cfg(tmp_path / "b")).fit()["out_of_time"]
    with pytest.raises(ValueError, match="max_minutes must be a finite number > 0"):
        Trainer(_cfg(tmp_path, max_minutes=0))


def test_keep_checkpoints_sets_how_many_stay(tmp_path):
    Trainer(_cfg(tmp_path, steps=3, ckpt_every=1, keep_checkpoints=1)).fit()
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "run"))] == ["ckpt-00000003.pt"]
    with pytest.raises(ValueError, match="keep_checkpoints must be an integer >= 1"):
        Trainer(_cfg(tmp_path, keep_checkpoints=0))


def test_weight_decay_only_on_attention_weights(tmp_path):
    trainer = Trainer(_cfg(tmp_path))
    decayed = {id(p) for p in trainer.opt_g.param_groups[0]["params"]}
    names = [n for n, p in trainer.G.named_parameters() if id(p) in decayed]
    assert names and all(("attn" in n or "qkv" in n or "proj." in n) for n in names), names
    assert trainer.opt_g.param_groups[0]["weight_decay"] == 0.01 and trainer.opt_g.param_groups[1]["weight_decay"] == 0
    assert trainer.opt_g.defaults["betas"] == (0.0, 0.99) and trainer.opt_g.defaults["lr"] == 0.0025
    assert not any(p.requires_grad for p in trainer.model.clip.parameters())


def _tar_shards(directory):
    """Three tar shards of 3 captioned images each, as img2dataset writes them."""
    import io
    import tarfile

    from PIL import Image
    directory.mkdir()
    for shard in range(3):
        with tarfile.open(directory / f"{shard:05d}.tar", "w") as tar:
            for k in range(3):
                for suffix, data in (("png", None), ("txt", f"a shape {shard} {k}".encode())):
                    if data is None:
                        buf = io.BytesIO()
                        Image.new("RGB", (40, 36), (80 * shard, 60 * k, 120)).save(buf, format="PNG")
                        data = buf.getvalue()
                    info = tarfile.TarInfo(f"{shard:05d}{k:04d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(directory) + "/{00000..00002}.tar"


@pytest.mark.parametrize("data", ["builtin", "tar shards"])
def test_resume_is_exact(tmp_path, data):
    """Two steps, a stop, two more: the same weights as four straight steps (for tar shards, the resumed
    stream continues after the batches already trained on instead of replaying its first shards)."""
    extra = {} if data == "builtin" else {"data": _tar_shards(tmp_path / "shards")}
    straight = Trainer(_cfg(tmp_path / "a", **extra))
    straight.fit()
    first = Trainer(_cfg(tmp_path / "b", steps=2, **extra))
    first.fit()
    resumed = Trainer(_cfg(tmp_path / "b", steps=4, **extra))
    resumed.fit(resume=True)
    assert resumed.step == 4
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.G_ema.state_dict().values(), resumed.G_ema.state_dict().values()):
        assert torch.equal(a, b)


def test_nan_loss_is_skipped_counted_and_stops_after_a_run(tmp_path, monkeypatch):
    trainer = Trainer(_cfg(tmp_path, max_bad_steps=3, steps=10))
    real_forward = trainer.D.forward
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real_forward(*a, **k)
        return [o * float("nan") for o in out] if calls["n"] >= 3 else out
    monkeypatch.setattr(trainer.D, "forward", poisoned)
    before = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    with pytest.raises(TrainingError, match="3 non-finite steps in a row"):
        trainer.fit()
    assert trainer.bad_steps_total == 3
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["bad_steps"] >= 1
    # the poisoned steps changed nothing: D's weights are those after the last good step
    assert any(not torch.equal(before[k], v) for k, v in trainer.D.state_dict().items())
    assert all(torch.isfinite(v).all() for v in trainer.D.state_dict().values())


def test_truncated_checkpoint_errors_and_resume_falls_back(tmp_path):
    Trainer(_cfg(tmp_path)).fit()
    out = tmp_path / "run"
    newest = out / "ckpt-00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(str(newest))
    messages = []
    state = load_latest_checkpoint(str(out), log=messages.append)               # read only: skipped, not moved
    assert state["step"] == 2 and "not a whole checkpoint" in messages[0] and newest.exists()
    resumed = Trainer(_cfg(tmp_path))
    resumed.fit(resume=True)                                                     # moved aside, never counted
    assert resumed.step == 4 and (out / "corrupt" / "ckpt-00000004.pt").exists()
    assert [os.path.basename(p) for p in list_checkpoints(str(out))] == ["ckpt-00000004.pt", "ckpt-00000002.pt"]


def _wait_for(path, proc, timeout=240):
    t0 = time.time()
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.stdout.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.2)


def test_sigkill_mid_run_then_resume(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(out, 1000), cwd=ROOT, env=train_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for(out / "ckpt-00000004.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    saved = list_checkpoints(str(out))
    assert saved, "no checkpoint survived"
    for path in saved:                                       # every checkpoint on disk is whole
        load_checkpoint(path)
    last = load_checkpoint(saved[0])["step"]
    resumed = subprocess.run(train_cmd(out, last + 4, "--resume"), cwd=ROOT, env=train_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"at step {last}" in resumed.stdout
    assert load_checkpoint(list_checkpoints(str(out))[0])["step"] == last + 4
    assert not [n for n in os.listdir(out) if n.startswith(".tmp")]


def test_sigterm_saves_before_exit(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(out, 1000, "--ckpt-every", "1000"), cwd=ROOT, env=train_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(out / "log.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output                    # 143: preempted, not finished
    assert "saved" in output and "preempted by SIGTERM" in output
    step = load_checkpoint(list_checkpoints(str(out))[0])["step"]
    assert 1 <= step < 1000


def test_torchrun_two_cpu_processes_keep_parameters_identical(tmp_path):
    result_path = tmp_path / "ranks.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           os.path.join(ROOT, "tests", "ddp_worker.py"), str(tmp_path / "run"), str(result_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(result_path.read_text())
    assert result["world_size"] == 2 and result["step"] == 3
    assert result["max_param_diff_across_ranks"] == 0.0
    assert result["params_changed"]                          # they trained, not just stayed equal at init
    assert result["timed_out"] and result["timed_steps"] == [4, 4]   # rank 1's budget stopped both after one step
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoints.json", "ckpt-00000002.pt", "ckpt-00000003.pt",
                                                    "log.jsonl", "loss.png", "samples-final.png"]   # rank 0 alone


def test_upsampler_training_resumes_exactly_and_feeds_upsample(tmp_path):
    """--model upsampler: GAN + perceptual loss on (real downsampled -> real); the base G is untouched."""
    from gigagan.training import model_from_checkpoint
    kw = dict(model="upsampler", sample_every=2)
    straight = Trainer(_cfg(tmp_path / "a", **kw))
    g_before = {k: v.clone() for k, v in straight.model.generator.state_dict().items()}
    u_before = {k: v.clone() for k, v in straight.model.upsampler.state_dict().items()}
    assert straight.D.resolution == straight.G.out_resolution == 64 and straight.D.num_levels == 5
    straight.fit()
    out = tmp_path / "a" / "run"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["perceptual"] > 0 and torch.isfinite(torch.tensor(r["loss_g"])) for r in records)
    assert (out / "samples-00000002.png").exists()
    for k, v in straight.model.generator.state_dict().items():
        assert torch.equal(v, g_before[k]), k
    assert any(not torch.equal(v, u_before[k]) for k, v in straight.model.upsampler.state_dict().items())
    first = Trainer(_cfg(tmp_path / "b", steps=2, **kw))
    first.fit()
    resumed = Trainer(_cfg(tmp_path / "b", steps=4, **kw))
    resumed.fit(resume=True)
    for module in ("model", "D", "G_ema"):
        for (name, a), b in zip(getattr(straight, module).state_dict().items(),
                                getattr(resumed, module).state_dict().values()):
            assert torch.equal(a, b), (module, name)
    # Resuming an upsampler run's directory as a base run is refused, not silently mixed.
    with pytest.raises(ConfigChangeError, match="--model upsampler -> base"):
        Trainer(_cfg(tmp_path / "b", steps=6)).fit(resume=True)
    model, _ = model_from_checkpoint(str(out))
    for k, v in straight.G_ema.state_dict().items():
        assert torch.equal(model.upsampler.state_dict()[k], v), k
    from PIL import Image

    from gigagan.__main__ import main
    Image.new("RGB", (24, 16), (200, 30, 30)).save(tmp_path / "small.png")
    assert main(["upsample", "--ckpt", str(out), "--impl", "ref", "--image", str(tmp_path / "small.png"),
                 "--prompt", "a red square", "--out", str(tmp_path / "up.png")]) == 0
    with Image.open(tmp_path / "up.png") as im:
        assert im.size == (24 * 4, 16 * 4)
    # ...and sampling the base generator of an upsampler run is refused.
    assert main(["sample", "--ckpt", str(out), "--impl", "ref", "--prompt", "a red square",
                 "--out", str(tmp_path / "s.png")]) == 2
