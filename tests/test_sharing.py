"""Sharing a model: `gigagan export` writes the EMA model as a pretrained folder every --ckpt takes, and
`gigagan sample --outdir` writes one PNG per image for FID tools."""
import json
import os

import numpy as np
import pytest
import torch

from gigagan.__main__ import main
from gigagan.training import TrainConfig, Trainer


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    Trainer(TrainConfig(preset="tiny", steps=2, batch_size=2, out=str(out), impl="ref", log_every=1, sample_every=0,
                        ckpt_every=2, progress=False, seed=3, device="cpu")).fit()
    return out


def _pngs(directory):
    from PIL import Image
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".png"):
            with Image.open(os.path.join(directory, name)) as im:
                out[name] = torch.from_numpy(np.asarray(im).astype(np.int16))
    return out


def test_export_writes_a_folder_that_samples_like_the_checkpoint(base_run, tmp_path):
    folder = tmp_path / "exported"
    assert main(["export", "--ckpt", str(base_run), "--out", str(folder)]) == 0
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "training.json"]
    info = json.loads((folder / "training.json").read_text())
    assert info["model"] == "base" and info["step"] == 2 and info["source"].endswith("ckpt-00000002.pt")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square on green\n")
    for source, out in ((base_run, "from_run"), (folder, "from_folder")):
        assert main(["sample", "--ckpt", str(source), "--impl", "ref", "--outdir", str(tmp_path / out),
                     "--prompts-file", str(prompts), "--per-prompt", "3", "--batch-size", "4"]) == 0
    from_run, from_folder = _pngs(tmp_path / "from_run"), _pngs(tmp_path / "from_folder")
    assert sorted(from_run) == [f"{p:05d}-{k:03d}.png" for p in range(2) for k in range(3)]
    for name in from_run:                                    # the exported weights are the checkpoint's EMA
        assert torch.equal(from_run[name], from_folder[name]), name
    assert not torch.equal(from_run["00000-000.png"], from_run["00000-001.png"])    # each image its own z
    manifest = [json.loads(line) for line in (tmp_path / "from_run" / "prompts.jsonl").read_text().splitlines()]
    assert [m["prompt"] for m in manifest] == ["a red circle"] * 3 + ["a blue square on green"] * 3
    assert [m["file"] for m in manifest] == sorted(from_run)


def test_outdir_images_do_not_depend_on_the_batch_size(base_run, tmp_path):
    for batch in (1, 5):
        assert main(["sample", "--ckpt", str(base_run), "--impl", "ref", "--outdir", str(tmp_path / f"b{batch}"),
                     "--prompt", "a red circle", "--prompt", "a blue square", "--per-prompt", "2",
                     "--batch-size", str(batch)]) == 0
    one, five = _pngs(tmp_path / "b1"), _pngs(tmp_path / "b5")
    assert one.keys() == five.keys() and len(one) == 4
    for name in one:
        assert (one[name] - five[name]).abs().max() <= 1, name     # the same z; batched math may round apart


@pytest.mark.parametrize("flags, message", [
    (["--prompt", "x"], "give exactly one of --out (a captioned grid PNG) and --outdir"),
    (["--prompt", "x", "--out", "o.png", "--outdir", "d"], "give exactly one of --out"),
    (["--outdir", "d"], "give at least one --prompt, or --prompts-file"),
    (["--outdir", "d", "--prompt", "x", "--prompts-file", "p.txt"], "with --prompt or with --prompts-file, not both"),
    (["--outdir", "d", "--prompts-file", "missing.txt"], "--prompts-file missing.txt: cannot read it"),
    (["--outdir", "d", "--prompt", "x", "--per-prompt", "0"], "--per-prompt must be an integer >= 1"),
])
def test_bad_sample_flags_fail_in_one_line(base_run, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--ckpt", str(base_run), "--impl", "ref", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_export_refuses_a_file_as_its_folder(base_run, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    assert main(["export", "--ckpt", str(base_run), "--out", str(target)]) == 2
    assert "--out" in capsys.readouterr().err and target.read_text() == "not a folder"
