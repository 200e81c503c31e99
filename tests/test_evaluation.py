"""gigagan eval: FID and CLIP score mechanics with small known feature extractors (no Inception or CLIP weights
are downloaded anywhere), and the command's flags."""
import json
import os

import numpy as np
import pytest
import torch
from scipy import linalg

from gigagan import evaluation as ev
from gigagan.__main__ import main
from gigagan.training import TrainConfig, Trainer


class PooledFeatures(torch.nn.Module):
    """uint8 images -> 2x2 average colours through a fixed random projection: 8 features."""
    num_features = 8

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(12, 8, generator=g, dtype=torch.float64))

    def forward(self, images):
        pooled = torch.nn.functional.adaptive_avg_pool2d(images.double() / 255, 2).flatten(1)
        return pooled @ self.proj


def _images(n, shift, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) * 1.4 - 1 + shift).clamp(-1, 1)


def _expected_fid(real, fake, feature, resolution):
    feats = []
    for x in (real, fake):
        u8 = ((ev.resize(x, resolution) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        feats.append(feature(u8).numpy())
    mu1, mu2 = feats[0].mean(0), feats[1].mean(0)
    s1, s2 = np.cov(feats[0], rowvar=False), np.cov(feats[1], rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_matches_the_closed_form_on_known_features():
    real, fake = _images(40, 0.0, 1), _images(30, 0.3, 2)
    feature = PooledFeatures()
    got = ev.frechet_distance(iter(real.split(7)), iter(fake.split(9)), feature, resolution=16)
    want = _expected_fid(real, fake, feature, 16)
    assert got["num_real"] == 40 and got["num_fake"] == 30
    assert want > 0.01 and abs(got["fid"] - want) <= 1e-6 * max(1.0, want), (got, want)


def test_fid_of_a_set_against_itself_is_zero():
    real = _images(25, 0.0, 3)
    got = ev.frechet_distance(iter(real.split(4)), iter(real.split(6)), PooledFeatures(), resolution=16)
    assert abs(got["fid"]) < 1e-6


def test_fid_needs_two_images_per_set():
    with pytest.raises(ev.EvaluationError, match="at least 2 fake images, got 1"):
        ev.frechet_distance(iter([_images(3, 0, 4)]), iter([_images(1, 0, 5)]), PooledFeatures(), resolution=16)


def test_clip_score_known_answers():
    """Image embedding = the image's mean colour; caption embedding = a named colour: aligned scores 100,
    orthogonal 0, opposite clamps to 0."""
    colours = {"red": [1.0, 0, 0], "green": [0, 1.0, 0], "anti-red": [-1.0, 0, 0]}
    red = torch.zeros(2, 3, 8, 8)
    red[:, 0] = 1.0                                           # pure red in [-1, 1]... then CLIP-normalised
    mean, std = torch.tensor(ev.CLIP_MEAN)[:, None, None], torch.tensor(ev.CLIP_STD)[:, None, None]

    def encode_image(x):                                      # undo CLIP's normalisation, centre on grey
        return ((x * std + mean) - 0.5).mean(dim=(2, 3)).clamp(min=0)

    def encode_text(texts):
        return torch.tensor([colours[t] for t in texts])
    score = lambda caption: ev.clip_score([(red, [caption, caption])], encode_image, encode_text, 8)  # noqa: E731
    assert score("red") == pytest.approx(100.0)
    assert score("green") == pytest.approx(0.0, abs=1e-9)
    assert score("anti-red") == 0.0


def _write_pngs(directory, images):
    from gigagan.images import save_images
    os.makedirs(directory, exist_ok=True)
    save_images(images, str(directory), [f"{i:03d}.png" for i in range(len(images))])


@pytest.fixture
def small_inception(monkeypatch):
    monkeypatch.setattr(ev, "inception_features", lambda path: PooledFeatures())


def test_eval_command_on_folders(tmp_path, capsys, small_inception):
    _write_pngs(tmp_path / "real", _images(12, 0.0, 6))
    _write_pngs(tmp_path / "fake", _images(10, 0.4, 7))
    (tmp_path / "real" / "broken.png").write_bytes(b"not a png")
    assert main(["eval", "--real", str(tmp_path / "real"), "--images", str(tmp_path / "real"),
                 "--inception-weights", "unused", "--resolution", "16", "--batch-size", "5"]) == 0
    captured = capsys.readouterr()
    same = json.loads(captured.out.strip().splitlines()[-1])
    assert abs(same["fid"]) < 1e-6 and same["num_real"] == 12 and same["skipped_files"] == 2   # once per set
    warned = [line for line in captured.err.splitlines() if "biased" in line]
    assert warned == ["gigagan eval: warning: FID from 12 real and 12 generated images is biased upwards (fewer "
                      "than 2,000 a side); compare it only with FIDs from the same numbers of images"]
    out = tmp_path / "scores.json"
    assert main(["eval", "--real", str(tmp_path / "real"), "--images", str(tmp_path / "fake"),
                 "--inception-weights", "unused", "--resolution", "16", "--json-out", str(out)]) == 0
    apart = json.loads(out.read_text())
    assert apart["fid"] > 0.01 and apart["num_fake"] == 10


def test_eval_command_on_a_model(tmp_path, capsys, small_inception):
    run = tmp_path / "run"
    Trainer(TrainConfig(preset="tiny", steps=1, batch_size=2, out=str(run), impl="ref", log_every=1, sample_every=0,
                        ckpt_every=1, progress=False, seed=3, device="cpu")).fit()
    _write_pngs(tmp_path / "real", _images(6, 0.0, 8))
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    assert main(["eval", "--real", str(tmp_path / "real"), "--ckpt", str(run),
                 "--prompts-file", str(tmp_path / "p.txt"),
                 "--per-prompt", "3", "--impl", "ref", "--inception-weights", "unused", "--resolution", "32"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["num_fake"] == 6 and np.isfinite(scores["fid"]) and scores["fid"] > 0


@pytest.mark.parametrize("flags, message", [
    ([], "--inception-weights is needed"),
    (["--inception-weights", "missing.pth"], "--inception-weights missing.pth: no such file"),
    (["--inception-weights", "w.pth", "--ckpt", "c"], "give exactly one of --images"),
    (["--inception-weights", "w.pth", "--clip-weights", "missing.pt"], "--clip-weights missing.pt: no such file"),
])
def test_eval_flags_fail_in_one_line(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))      # an empty torch hub: no weights there
    _write_pngs(tmp_path / "real", _images(3, 0.0, 9))
    (tmp_path / "w.pth").write_bytes(b"")
    original = ev.inception_features                       # its flag checks, with a small extractor for w.pth
    monkeypatch.setattr(ev, "inception_features", lambda path: PooledFeatures() if path == "w.pth" else original(path))
    assert main(["eval", "--real", "real", "--images", "real", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_fid_from_feature_sums_matches_the_closed_form():
    """The training metric's FID (sums of features, fed once and compared often) is the closed form too."""
    real, fake = _images(40, 0.0, 1), _images(30, 0.3, 2)
    feature = PooledFeatures()
    stats = []
    for images in (real, fake):
        s = ev.FeatureStats(8)
        for part in images.split(7):
            s.add(feature(ev.to_uint8(part, 16)))
        stats.append(s)
    want = _expected_fid(real, fake, feature, 16)
    assert want > 0.01 and abs(ev.fid_from_stats(*stats) - want) <= 1e-6 * max(1.0, want)
    assert abs(ev.fid_from_stats(stats[0], stats[0])) < 1e-6


def test_bias_warning_below_2000_images_a_side():
    assert ev.bias_warning(2000, 2000) is None
    assert "biased" in ev.bias_warning(1999, 50_000) and "biased" in ev.bias_warning(50_000, 6)


def test_inception_weights_take_either_published_file_name(tmp_path, monkeypatch):
    """The error names torch-fidelity's file and URL and pytorch-fid's; a folder (or torch hub's checkpoints
    folder, where torch-fidelity keeps its download) holding either name is found; nothing is downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(ev.EvaluationError) as missing:
        ev.inception_weights_file(None)
    text = str(missing.value)
    url = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
    assert url in text and "pt_inception-2015-12-05-6726825d.pth" in text and len(text.splitlines()) == 1
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    for name in ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth"):
        (hub / name).write_bytes(b"")
        assert ev.inception_weights_file(None) == str(hub / name)          # torch-fidelity's first when both
        assert ev.inception_weights_file(str(hub)) == str(hub / name)
    with pytest.raises(ev.EvaluationError, match="holds neither FID Inception weights file"):
        ev.inception_weights_file(str(tmp_path))


def test_inception_weights_that_are_not_tensors_or_not_the_network_fail_in_one_line(tmp_path):
    pytest.importorskip("torch_fidelity")
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ev.EvaluationError, match="wrong.pth: not the FID Inception weights"):
        ev.inception_features(str(tmp_path / "wrong.pth"))
    torch.save({"code": ev.EvaluationError("a pickled object")}, tmp_path / "pickle.pth")
    with pytest.raises(ev.EvaluationError, match="pickle.pth: not the FID Inception weights"):
        ev.inception_features(str(tmp_path / "pickle.pth"))
