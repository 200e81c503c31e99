"""Sharing a model: `gigagan export` writes the EMA network a run trained as a pretrained folder every --ckpt
takes, GigaGAN follows PyTorchModelHubMixin's contract (the hub mocked or offline: nothing is downloaded), model
folders are checked before anything is allocated, and `gigagan sample --outdir` writes one PNG per image for FID
tools."""
import inspect
import json
import os
import subprocess
import sys
import warnings

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
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors", "training.json"]
    info = json.loads((folder / "training.json").read_text())
    assert info["model"] == "base" and info["step"] == 2 and info["source"].endswith("ckpt-00000002.pt")
    assert info["train_config"]["batch_size"] == 2
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


# -- what an export holds, and the files' mode ------------------------------------------------------------------
def _prefixes(folder):
    from gigagan.hub import read_header
    return sorted({name.split(".")[0] for name in read_header(str(folder / "model.safetensors"))})


@pytest.fixture(scope="module")
def upsampler_run(tmp_path_factory):
    """A checkpoint of an upsampler run at step 0 (the export path does not need a trained step)."""
    out = tmp_path_factory.mktemp("up") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(TrainConfig(preset="tiny", model="upsampler", steps=1, batch_size=2, out=str(out),
                                      impl="ref", perceptual_weight=0.0, progress=False, device="cpu"))
    trainer.save_checkpoint()
    return out


def test_a_base_export_holds_g_and_its_text_towers_in_new_parent_folders(base_run, tmp_path, capsys):
    folder = tmp_path / "models" / "made" / "tiny"                 # models/ does not exist yet
    assert main(["export", "--ckpt", str(base_run), "--out", str(folder)]) == 0
    assert "base run: G and the CLIP tower" in capsys.readouterr().out
    assert _prefixes(folder) == ["clip", "generator"]              # no D, no untrained upsampler
    from gigagan import GigaGAN
    model = GigaGAN.from_pretrained(str(folder))                   # builds only what the file holds
    assert model.discriminator is None and model.upsampler is None and model.generator is not None
    assert model.training_info["step"] == 2 and model.training_info["model"] == "base"
    card = (folder / "README.md").read_text()
    assert "library_name: gigagan-kernels" in card and "| training steps | 2 |" in card
    assert '"w_dim": 64' in card and "None were measured during training" in card


def test_an_upsampler_export_holds_the_upsampler_and_its_text_towers(upsampler_run, tmp_path, capsys):
    folder = tmp_path / "up"
    assert main(["export", "--ckpt", str(upsampler_run), "--out", str(folder)]) == 0
    assert _prefixes(folder) == ["clip", "upsampler"]
    assert json.loads((folder / "training.json").read_text())["model"] == "upsampler"
    capsys.readouterr()
    # the folder feeds `gigagan upsample`, and a base-run command refuses it in one line
    from PIL import Image
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "low.png")
    assert main(["upsample", "--ckpt", str(folder), "--impl", "ref", "--image", str(tmp_path / "low.png"),
                 "--prompt", "a red square", "--out", str(tmp_path / "high.png")]) == 0
    with Image.open(tmp_path / "high.png") as im:
        assert im.size == (64, 64)
    assert main(["sample", "--ckpt", str(folder), "--prompt", "x", "--out", str(tmp_path / "s.png")]) == 2
    assert "holds a upsampler run" in capsys.readouterr().err


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_saved_files_get_the_umasks_mode(base_run, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert main(["export", "--ckpt", str(base_run), "--out", str(tmp_path / "m")]) == 0
    finally:
        os.umask(old)
    modes = {name: os.stat(tmp_path / "m" / name).st_mode & 0o777 for name in os.listdir(tmp_path / "m")}
    assert modes == {n: mode for n in ("README.md", "config.json", "model.safetensors", "training.json")}


def test_a_failed_export_leaves_no_folder(tmp_path, capsys):
    (tmp_path / "empty-run").mkdir()
    assert main(["export", "--ckpt", str(tmp_path / "empty-run"), "--out", str(tmp_path / "new" / "model")]) == 1
    assert "no loadable checkpoint" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["empty-run"]


# -- the hub: PyTorchModelHubMixin's contract, a mocked HfApi, an offline cache ------------------------------
@pytest.fixture(scope="module")
def exported(base_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported") / "tiny"
    assert main(["export", "--ckpt", str(base_run), "--out", str(folder)]) == 0
    return folder


def test_gigagan_takes_every_argument_of_the_mixins_methods():
    from huggingface_hub import PyTorchModelHubMixin

    from gigagan import GigaGAN
    for method in ("save_pretrained", "from_pretrained", "push_to_hub", "generate_model_card"):
        theirs = inspect.signature(getattr(PyTorchModelHubMixin, method)).parameters
        ours = inspect.signature(getattr(GigaGAN, method)).parameters
        wanted = [n for n, p in theirs.items() if p.kind is not p.VAR_KEYWORD and p.kind is not p.VAR_POSITIONAL]
        assert [n for n in wanted if n not in ours] == [], method
        for name in wanted:
            if name not in ("self", "cls"):
                assert ours[name].kind == theirs[name].kind, (method, name)


def test_push_to_hub_uploads_the_folder_with_a_model_card(exported, monkeypatch):
    import huggingface_hub

    from gigagan import GigaGAN
    calls = {}

    class FakeApi:                                               # HfApi mocked: nothing leaves the machine
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls["create_repo"] = (repo_id, private, exist_ok)
            return type("RepoUrl", (), {"repo_id": "someone/" + repo_id.split("/")[-1]})()

        def upload_folder(self, repo_id, repo_type, folder_path, **kwargs):
            calls["files"] = {n: open(os.path.join(folder_path, n), "rb").read() for n in os.listdir(folder_path)}
            calls["upload"] = (repo_id, repo_type, kwargs["commit_message"], kwargs["revision"])
            return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = GigaGAN.from_pretrained(str(exported))
    url = model.push_to_hub("tiny-gigagan", token="t0k", private=True, branch="dev", commit_message="first")
    assert url == "https://huggingface.co/someone/tiny-gigagan/commit/abc"
    assert calls["token"] == "t0k" and calls["create_repo"] == ("tiny-gigagan", True, True)
    assert calls["upload"] == ("someone/tiny-gigagan", "model", "first", "dev")
    assert sorted(calls["files"]) == ["README.md", "config.json", "model.safetensors", "training.json"]
    from safetensors.torch import load, load_file
    pushed, saved = load(calls["files"]["model.safetensors"]), load_file(str(exported / "model.safetensors"))
    assert pushed.keys() == saved.keys() and all(torch.equal(pushed[k], saved[k]) for k in saved)
    card = calls["files"]["README.md"].decode()
    assert "GigaGAN.from_pretrained('someone/tiny-gigagan')" in card and "| training steps | 2 |" in card
    assert json.loads(calls["files"]["config.json"]) == json.loads((exported / "config.json").read_text())


def test_from_pretrained_reads_a_hub_id_from_the_offline_cache(exported, tmp_path):
    """HF_HUB_OFFLINE=1 and a cache filled as huggingface_hub lays it out: the hub id loads, in Python and on
    the command line; an id not in the cache is one line."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-gigagan"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in os.listdir(exported):
        (repo / "snapshots" / commit / name).write_bytes((exported / name).read_bytes())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONPATH": os.getcwd(), "PYTHONWARNINGS": "ignore"}
    script = ("from gigagan import GigaGAN\n"
              "m = GigaGAN.from_pretrained('someone/tiny-gigagan')\n"
              "print(sorted(m.parameter_counts()), m.training_info['step'])\n"
              "from gigagan.__main__ import main\n"
              "raise SystemExit(main(['sample', '--ckpt', 'someone/tiny-gigagan', '--impl', 'ref', '--prompt', 'a red "
              f"circle', '--outdir', {str(tmp_path / 'out')!r}]) + 10 * main(['sample', '--ckpt', 'someone/other', "
              f"'--prompt', 'x', '--outdir', {str(tmp_path / 'out2')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 10, proc.stderr[-3000:]             # the cached id samples; the other exits 1
    assert "['clip_text_frozen', 'generator'] 2" in proc.stdout
    assert sorted(os.listdir(tmp_path / "out")) == ["00000-000.png", "prompts.jsonl"]
    assert not (tmp_path / "out2").exists()                       # a failed command leaves no folder
    err = [line for line in proc.stderr.splitlines() if "someone/other" in line]
    assert err == ["gigagan sample: --ckpt someone/other: someone/other: no such local folder, and as a hub id: "
                   "config.json: not in the local cache, and downloads are off (HF_HUB_OFFLINE or local_files_only)"]


# -- model folders are checked before anything is allocated (issue 30) ----------------------------------------
@pytest.fixture
def folder_copy(exported, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in os.listdir(exported):
        (folder / name).write_bytes((exported / name).read_bytes())
    return folder


@pytest.fixture
def builds(monkeypatch):
    """The devices GigaGAN is built on while the test runs: a check that allocates would show "cpu"."""
    from gigagan import GigaGAN
    seen, init = [], GigaGAN.__init__

    def recording(self, *args, **kwargs):
        seen.append(torch.empty(0).device.type)
        init(self, *args, **kwargs)
    monkeypatch.setattr(GigaGAN, "__init__", recording)
    return seen


def _one_line_failure(folder, capsys, *names):
    """from_pretrained raises ModelFolderError; `gigagan sample` on the folder exits 1 with one line."""
    from gigagan import GigaGAN
    from gigagan.hub import ModelFolderError
    with pytest.raises(ModelFolderError) as raised:
        GigaGAN.from_pretrained(str(folder))
    message = str(raised.value)
    assert len(message.splitlines()) == 1 and all(n in message for n in names), message
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(folder), "--prompt", "x", "--out", str(folder / "s.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in names), err
    return message


@pytest.mark.parametrize("damage, why", [("truncated", "points past the end of the file"),
                                         ("garbage", "the header claims"), ("header-past-end", "the header claims"),
                                         ("header-not-json", "its header is not JSON")])
def test_a_corrupt_model_safetensors_is_one_line_not_a_safetensor_error(folder_copy, capsys, builds, damage, why):
    path = folder_copy / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff not a safetensors file" * 10)
    elif damage == "header-past-end":
        path.write_bytes((10 ** 9).to_bytes(8, "little") + data[8:])
    else:
        path.write_bytes((16).to_bytes(8, "little") + b"{not json at all" + data[24:])
    message = _one_line_failure(folder_copy, capsys, "model.safetensors", "not a whole safetensors file", why)
    assert "SafetensorError" not in message and builds == []


def test_a_config_json_with_a_string_where_a_number_belongs_is_one_line(folder_copy, capsys, builds):
    config = json.loads((folder_copy / "config.json").read_text())
    config["generator"]["z_dim"] = "32"
    (folder_copy / "config.json").write_text(json.dumps(config))
    _one_line_failure(folder_copy, capsys, "config.json", "generator.z_dim must be an integer", "got '32'")
    assert builds == []                                           # refused before any network was built


def test_a_config_json_with_w_dim_2000000_allocates_nothing(folder_copy, capsys, builds):
    config = json.loads((folder_copy / "config.json").read_text())
    config["generator"]["w_dim"] = 2_000_000                       # a 32 TB mapping network
    (folder_copy / "config.json").write_text(json.dumps(config))
    _one_line_failure(folder_copy, capsys, "generator.w_dim must be an integer in [1, 16384], got 2000000")
    assert builds == []


@pytest.mark.parametrize("path, value, named", [
    (("generator", "w_dim"), 128, "generator.w_dim is 128 in config.json, the weights were saved with 64"),
    (("generator", "mapping_layers"), 2, "generator.mapping_layers is 2 in config.json, the weights were saved "
                                         "with 4"),
    (("text", "clip_width"), 32, "text.clip_width is 32 in config.json, the weights were saved with 64"),
    (("generator", "attn_resolutions"), [8, 16], "generator.attn_resolutions is [8, 16] in config.json, the "
                                                 "weights were saved with [8]"),
])
def test_a_config_that_disagrees_with_the_weights_names_the_field_before_allocating(folder_copy, capsys, builds,
                                                                                      path, value, named):
    """A plausible config whose networks differ from the file's header by a name or a shape: the check runs on
    the meta device and names the field and the value the weights were saved with."""
    config = json.loads((folder_copy / "config.json").read_text())
    config[path[0]][path[1]] = value
    (folder_copy / "config.json").write_text(json.dumps(config))
    _one_line_failure(folder_copy, capsys, "config.json does not match model.safetensors", named)
    assert builds and set(builds) == {"meta"}


def test_a_folder_missing_its_weights_names_the_file(folder_copy, capsys):
    (folder_copy / "model.safetensors").unlink()
    _one_line_failure(folder_copy, capsys, "model.safetensors: no such file")


# -- the pipeline on an export (issue 31's target: `from gigagan import GigaGANPipeline` on a tiny export) ------
def test_the_pipeline_loads_a_tiny_export_and_gives_the_same_image_for_the_same_seed(base_run, exported):
    from gigagan import GigaGANPipeline
    pipe = GigaGANPipeline.from_pretrained(str(exported), impl="ref")
    assert pipe.upsampler is None
    first = pipe(["a red circle", "a blue square"], seed=4, output_type="pt").images
    again = pipe("a blue square", seed=5, output_type="pt").images[0]
    assert torch.equal(first[1], again) and not torch.equal(first[0], first[1])
    from_run = GigaGANPipeline.from_pretrained(str(base_run), impl="ref")   # the checkpoint's EMA, bit for bit
    assert torch.equal(from_run("a blue square", seed=5, output_type="pt").images[0], again)
    pil = pipe("a red circle", seed=4).images[0]
    assert pil.size == (32, 32) and pil.mode == "RGB"


def test_generate_on_a_corrupt_export_is_one_line_naming_the_flag(folder_copy, tmp_path, capsys):
    path = folder_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    assert main(["generate", "--ckpt", str(folder_copy), "--prompt", "x", "--impl", "ref",
                 "--out", str(tmp_path / "g.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gigagan generate: --ckpt {folder_copy}") and \
        "model.safetensors: not a whole safetensors file" in err[0], err
    assert not (tmp_path / "g.png").exists()
