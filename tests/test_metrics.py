"""Metrics during training (gigagan train --metrics fid): FID of the EMA generator (and the CLIP score) into
log.jsonl and TensorBoard, at --fid-every steps and after the last, recorded for a resume, and the same number
on one rank or sharded over two. A small feature extractor and CLIP stand in: no weights are downloaded."""
import json
import sys
import types

import pytest
import torch

from gigagan import evaluation as ev
from gigagan.training import TrainConfig, load_checkpoint
from gigagan.training.metrics import TrainingMetrics
from tests.test_evaluation import PooledFeatures, _images, _write_pngs

pytest.importorskip("open_clip", reason="the model needs open_clip_torch (requirements.txt)")


class SmallCLIP(torch.nn.Module):
    """encode_image: the mean colour; encode_text: a fixed colour per prompt (three features)."""

    class visual:
        image_size = 8

    def encode_image(self, x):
        return x.mean(dim=(2, 3))

    def encode_text(self, tokens):
        return tokens.float()


def _tokenizer(texts):
    return torch.tensor([[1.0, 0.0, 0.0] if "red" in t else [0.0, 0.0, 1.0] for t in texts])


class Scalars:
    """A stand-in for torch.utils.tensorboard (not installed here): records add_scalar."""
    seen = []

    def __init__(self, *args, **kwargs):
        pass

    def add_scalar(self, tag, value, step):
        Scalars.seen.append((tag, value, step))

    def close(self):
        pass


@pytest.fixture
def small_extractors(monkeypatch):
    monkeypatch.setattr(ev, "inception_features", lambda path, flag="--inception-weights": PooledFeatures())
    monkeypatch.setattr(ev, "load_clip", lambda name, path, device: (SmallCLIP(), _tokenizer))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Scalars))
    Scalars.seen = []


def _real_folder(path, count=6):
    _write_pngs(path, _images(count, 0.0, 11))
    for i in range(count):
        (path / f"{i:03d}.txt").write_text(["a red circle", "a blue square"][i % 2])


def test_train_logs_fid_and_clip_score_every_fid_every_steps_and_at_the_end(tmp_path, capsys, small_extractors):
    from gigagan.__main__ import main
    _real_folder(tmp_path / "real")
    (tmp_path / "clip.pt").write_bytes(b"")
    run = tmp_path / "run"
    common = ["train", "--preset", "tiny", "--batch-size", "2", "--out", str(run), "--impl", "ref", "--device", "cpu",
              "--log-every", "1", "--sample-every", "0", "--ckpt-every", "2", "--no-progress", "--tensorboard",
              "--metrics", "fid", "--fid-real", str(tmp_path / "real"), "--fid-images", "5",
              "--metrics-clip-weights", str(tmp_path / "clip.pt")]
    assert main(common + ["--steps", "3", "--fid-every", "2"]) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    measured = [r for r in records if "fid" in r]
    assert [r["step"] for r in measured] == [2, 3]                       # every 2 steps, and the last
    for r in measured:
        assert r["num_real"] == 6 and r["num_fake"] == 5 and r["fid"] > 0 and 0 <= r["clip_score"] <= 100
    assert measured[0]["fid"] != measured[1]["fid"]                      # G_ema moved between them
    assert [(tag, step) for tag, _, step in Scalars.seen if tag in ("fid", "clip_score")] == \
        [("fid", 2), ("clip_score", 2), ("fid", 3), ("clip_score", 3)]
    assert out.count("is biased upwards") == 1                           # once per run, not per measurement
    saved = json.loads(load_checkpoint(str(run / "ckpt-00000003.pt"))["train_config"])
    assert (saved["metrics"], saved["fid_every"], saved["fid_images"]) == ("fid", 2, 5)

    # A resume records what changed in the metrics flags (steer: applied from the resumed step) and goes on.
    assert main(common + ["--steps", "4", "--fid-every", "1", "--resume"]) == 0
    assert "fid_every" in capsys.readouterr().out.replace("--fid-every", "fid_every")
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "fid" in r] == [2, 3, 4]


def test_metrics_flags_fail_in_one_line(tmp_path, capsys, small_extractors):
    from gigagan.__main__ import main
    (tmp_path / "real").mkdir()
    _write_pngs(tmp_path / "real", _images(3, 0.0, 12))                  # no captions
    base = ["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--device", "cpu", "--impl", "ref"]
    cases = [(["--metrics", "fid"], "--fid-real must be a folder of real images"),
             (["--fid-real", str(tmp_path / "real")], "--fid-real must be given only with --metrics fid"),
             (["--metrics", "fid", "--fid-real", str(tmp_path / "real"), "--data", str(tmp_path / "real"),
               "--unconditional", "--fid-every", "0"], "--fid-every must be an integer >= 1"),
             (["--metrics", "kid"], "--metrics must be one of"),
             (["--metrics", "fid", "--fid-real", str(tmp_path / "real"), "--data", str(tmp_path / "real")],
              "none of its images has a .txt caption")]
    for flags, message in cases:
        assert main(base + flags) == 2, flags
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "run").exists()                            # no empty output folder left


class StubG(torch.nn.Module):
    """Images that are a fixed function of z (192 = 3 x 8 x 8)."""

    def forward(self, z, prompts, noise_mode="none"):
        return (torch.tanh(z.view(-1, 3, 8, 8)),)


def _measure(cfg, rank, world):
    metrics = TrainingMetrics(cfg, rank, world, torch.device("cpu"), print, z_dim=192, feature=PooledFeatures())
    return metrics.measure(StubG(), step=7)


def _rank(rank, world, store, cfg, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        record = _measure(cfg, rank, world)
        torch.save({k: record[k] for k in ("fid", "num_real", "num_fake")}, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_two_ranks_shard_the_images_and_get_the_one_rank_fid(tmp_path):
    """Under torchrun each rank feeds its share of both sets and the feature sums are added: the FID is the one
    process's, on every rank."""
    _real_folder(tmp_path / "real", count=7)
    cfg = TrainConfig(preset="tiny", metrics="fid", fid_real=str(tmp_path / "real"), fid_images=9, device="cpu")
    alone = _measure(cfg, 0, 1)
    assert alone["num_real"] == 7 and alone["num_fake"] == 9
    torch.multiprocessing.spawn(_rank, args=(2, str(tmp_path / "store"), cfg, str(tmp_path / "record")), nprocs=2)
    for rank in range(2):
        shared = torch.load(f"{tmp_path / 'record'}.{rank}")
        assert (shared["num_real"], shared["num_fake"]) == (7, 9)
        assert shared["fid"] == pytest.approx(alone["fid"], rel=1e-9, abs=1e-9)
