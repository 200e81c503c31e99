"""Training: losses, NaN handling, checkpoints (atomic, exact resume, corrupt fallback, SIGKILL/SIGTERM),
torchrun with gloo, and the CLI. CPU, tiny preset, reference ops."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("open_clip", reason="the model needs open_clip_torch (requirements.txt)")
import torch.nn.functional as F

from gigagan.losses import (discriminator_loss, generator_loss, matching_aware_d_loss, matching_aware_g_loss,
                            mismatched, r1_penalty)
from gigagan.text import CLIPText
from gigagan.train import (CheckpointError, TrainConfig, Trainer, TrainingError, list_checkpoints,
                           load_checkpoint, load_latest_checkpoint)
from tests.helpers import ROOT, train_cmd, train_env


def _cfg(tmp_path, **kw):
    base = dict(preset="tiny", steps=4, batch_size=2, out=str(tmp_path / "run"), impl="ref", log_every=1,
                sample_every=0, ckpt_every=2, progress=False, r1_interval=2, seed=3, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_device_is_validated_and_cpu_can_be_forced(tmp_path):
    with pytest.raises(ValueError, match="TrainConfig.device"):
        Trainer(_cfg(tmp_path, device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA device"):
            Trainer(_cfg(tmp_path, device="cuda"))
    assert Trainer(_cfg(tmp_path, device="cpu")).device == torch.device("cpu")


def test_adversarial_and_matching_aware_losses():
    real, fake = [torch.randn(3, 1, 4, 4), torch.randn(3, 1, 2, 2)], [torch.randn(3, 1, 4, 4), torch.randn(3, 1, 2, 2)]
    expected_d = sum(F.softplus(-r).mean() + F.softplus(f).mean() for r, f in zip(real, fake))
    assert torch.allclose(discriminator_loss(real, fake), expected_d)
    assert torch.allclose(generator_loss(fake), sum(F.softplus(-f).mean() for f in fake))
    assert torch.allclose(matching_aware_d_loss(real, fake), sum(F.softplus(r).mean() + F.softplus(f).mean()
                                                                 for r, f in zip(real, fake)))
    assert torch.allclose(matching_aware_g_loss(fake), sum(F.softplus(f).mean() for f in fake))
    text = CLIPText(torch.arange(3.0)[:, None, None].expand(3, 2, 1), torch.ones(3, 2, dtype=torch.bool),
                    torch.tensor([0, 1, 1]))
    rolled = mismatched(text)
    assert rolled.features[:, 0, 0].tolist() == [2.0, 0.0, 1.0] and rolled.eot.tolist() == [1, 0, 1]


def test_r1_penalty_is_half_gamma_grad_norm():
    class Quadratic(torch.nn.Module):
        def forward(self, x, text):
            return [x.square().sum(dim=(1, 2, 3)).view(-1, 1, 1, 1)]
    x = torch.randn(2, 3, 4, 4)
    penalty = r1_penalty(Quadratic(), x, None, gamma=0.5)
    expected = 0.5 * 0.5 * (2 * x).square().sum(dim=(1, 2, 3)).mean()
    assert torch.allclose(penalty, expected)
    assert penalty.requires_grad                               # create_graph: it can be backpropagated


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
    result = Trainer(_cfg(tmp_path, steps=1000, max_minutes=1e-4, ckpt_every=1000)).fit()
    assert result["out_of_time"] and result["step"] == 1    # the budget is checked after every step
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
                                                    "log.jsonl", "samples-final.png"]   # rank 0 alone writes


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


def test_perceptual_features_and_distance(tmp_path):
    from torchvision.models import vgg16

    from gigagan.losses import perceptual_loss
    from gigagan.perceptual import PerceptualFeatures
    import gigagan.perceptual as perceptual
    perceptual._warned = False
    with pytest.warns(UserWarning, match="RANDOM VGG16"):
        random_net = PerceptualFeatures()
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    feats = random_net(x)
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 512] and feats[-1].shape[-1] == 2
    assert perceptual_loss(random_net, x, x).item() == 0.0
    fake = y.clone().requires_grad_()
    distance = perceptual_loss(random_net, fake, x)
    distance.backward()
    assert distance.item() > 0 and fake.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in random_net.parameters())
    # A local torchvision state dict is loaded, classifier and all.
    torch.manual_seed(11)
    reference = vgg16(weights=None)
    torch.save(reference.state_dict(), tmp_path / "vgg16.pth")
    loaded = PerceptualFeatures(str(tmp_path / "vgg16.pth"))
    assert torch.equal(loaded.stages[0][0].weight, reference.features[0].weight)
    assert torch.equal(loaded.stages[4][-2].weight, reference.features[28].weight)
    with pytest.raises(FileNotFoundError, match="weights file"):
        PerceptualFeatures(str(tmp_path / "missing.pth"))


def test_upsampler_training_resumes_exactly_and_feeds_upsample(tmp_path):
    """--model upsampler: GAN + perceptual loss on (real downsampled -> real); the base G is untouched."""
    from gigagan.train import model_from_checkpoint
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
    # Resuming a base run's directory as an upsampler run is refused, not silently mixed.
    with pytest.raises(CheckpointError, match="trained the upsampler model, not the base"):
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


def test_clip_contrastive_and_vision_aided_losses(tmp_path):
    """Both CLIP losses are refused without pretrained weights, and train with a local CLIP checkpoint: the
    vision-aided head learns with D, is checkpointed, and a resume restores it."""
    import open_clip

    from gigagan import clip_guidance
    kw = dict(clip_weight=0.5, vision_aided_weight=0.5, guidance_clip=clip_guidance.TINY_TEST_MODEL)
    with pytest.raises(ValueError, match="need pretrained CLIP weights"):
        Trainer(_cfg(tmp_path, **kw))
    torch.manual_seed(5)
    torch.save(open_clip.CLIP(**clip_guidance._TINY_TEST_CFG).state_dict(), tmp_path / "clip.pt")
    kw["guidance_clip_pretrained"] = str(tmp_path / "clip.pt")
    trainer = Trainer(_cfg(tmp_path, steps=2, **kw))
    assert trainer.guidance.pretrained_from == str(tmp_path / "clip.pt")
    head_before = {k: v.clone() for k, v in trainer.vision_head.state_dict().items()}
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    for key in ("clip", "vision_aided_d", "vision_aided_g"):
        assert all(key in r and torch.isfinite(torch.tensor(r[key])) for r in records), key
    assert records[0]["clip"] > 0 and records[0]["vision_aided_d"] > 0 and records[0]["vision_aided_g"] > 0
    assert any(not torch.equal(v, head_before[k]) for k, v in trainer.vision_head.state_dict().items())
    assert all(not p.requires_grad for p in trainer.guidance.parameters())
    resumed = Trainer(_cfg(tmp_path, steps=3, **kw))
    resumed.resume()
    for k, v in trainer.vision_head.state_dict().items():
        assert torch.equal(resumed.vision_head.state_dict()[k], v), k
    # A missing file is an error, never a silent random CLIP.
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        Trainer(_cfg(tmp_path / "x", **dict(kw, guidance_clip_pretrained=str(tmp_path / "none.pt"))))


def test_supervised_bound_script_trains_g_and_writes_a_loadable_checkpoint(tmp_path):
    """scripts/supervised_bound.py (the NOTES diagnostic): G moves toward the renders, its fast prefixes get
    the multiplied learning rate, and the checkpoint is the trainer's, so caption_score and sample read it."""
    from gigagan.train import model_from_checkpoint
    script = os.path.join(ROOT, "scripts", "supervised_bound.py")
    out = tmp_path / "bound"
    cmd = [sys.executable, script, "--images", "48", "--batch-size", "16", "--lr", "0.01", "--out", str(out),
           "--fast", "text_encoder,mapping", "--fast-multiplier", "3"]
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    losses = [float(line.split("loss ")[1]) for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert len(losses) == 1 and losses[0] > 0      # one report, at the last of the 3 steps
    model, state = model_from_checkpoint(str(out), map_location="cpu")
    assert state["step"] == 3
    init = Trainer(_cfg(tmp_path / "init", seed=0))    # the script's seed-0 starting point
    trained = dict(model.generator.named_parameters())
    moved = [n for n, p in init.G.named_parameters() if p.requires_grad and not torch.equal(p, trained[n])]
    assert any(n.startswith("text_encoder") for n in moved) and any(n.startswith("synthesis") for n in moved)
    lrs = sorted({g["lr"] for g in state["opt_g"]["param_groups"]})
    assert lrs == [0.01, 0.03]
    bad = subprocess.run(cmd[:-4] + ["--fast", "no_such_module"], cwd=ROOT, env=train_env(), capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "matches no parameter of G" in bad.stderr


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
