"""Training on real data: pretrained text-encoder weights from a local file, and unconditional training on image
folders without captions."""
import os

import pytest
import torch

from gigagan.__main__ import main
from gigagan.training import ConfigError, TrainConfig, Trainer


def _cfg(tmp_path, **kw):
    base = dict(preset="tiny", steps=2, batch_size=2, out=str(tmp_path / "run"), impl="ref", log_every=1,
                sample_every=0, ckpt_every=2, progress=False, seed=3, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _uncaptioned_folder(directory, count=6):
    from PIL import Image
    os.makedirs(directory, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = (torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(os.path.join(directory, f"{i}.png"))
    return directory


def test_text_encoder_weights_come_from_a_local_file(tmp_path):
    from gigagan import get_preset
    from gigagan.text import FrozenCLIPText
    torch.manual_seed(11)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        donor = FrozenCLIPText(get_preset("tiny").text, load_pretrained=False)
    for p in donor.tower.parameters():
        torch.nn.init.normal_(p)                          # weights no fresh tower would have
    path = tmp_path / "clip_text.pt"
    torch.save({"text." + k: v for k, v in donor.tower.state_dict().items()}, path)
    trainer = Trainer(_cfg(tmp_path, text_encoder_pretrained=str(path)))
    assert trainer.model.clip.pretrained_from == str(path)
    loaded = trainer.model.clip.tower.state_dict()
    for k, v in donor.tower.state_dict().items():
        assert torch.equal(loaded[k].cpu(), v), k
    assert trainer.fit()["step"] == 2


def test_missing_text_encoder_weights_name_the_flag(tmp_path, capsys):
    with pytest.raises(ConfigError, match="text_encoder_pretrained"):
        _cfg(tmp_path, text_encoder_pretrained=str(tmp_path / "missing.pt")).validate()
    args = ["train", "--preset", "tiny", "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "r"),
            "--text-encoder-pretrained", str(tmp_path / "missing.pt")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--text-encoder-pretrained" in err and "nothing is downloaded" in err and len(err.splitlines()) == 1


def test_unconditional_training_on_a_folder_without_captions(tmp_path):
    data = _uncaptioned_folder(str(tmp_path / "images"))
    result = main(["train", "--preset", "tiny", "--steps", "2", "--batch-size", "2", "--device", "cpu", "--impl", "ref",
                   "--data", data, "--unconditional", "--out", str(tmp_path / "run"), "--ckpt-every", "2",
                   "--sample-every", "0", "--no-progress"])
    assert result == 0
    state = torch.load(tmp_path / "run" / "ckpt-00000002.pt", weights_only=True)
    import json
    saved = json.loads(state["train_config"])
    assert saved["unconditional"] is True and saved["matching_aware"] is False


def test_a_folder_without_captions_needs_unconditional(tmp_path):
    data = _uncaptioned_folder(str(tmp_path / "images"))
    with pytest.raises(ValueError, match=r"no captioned images \(.txt sidecars; --unconditional trains without\)"):
        Trainer(_cfg(tmp_path, data=data)).fit()


@pytest.mark.parametrize("field, value", [("matching_aware", True), ("clip_weight", 1.0)])
def test_unconditional_refuses_text_losses(tmp_path, field, value):
    kw = dict(unconditional=True, matching_aware=False)
    kw[field] = value
    with pytest.raises(ConfigError, match=field):
        _cfg(tmp_path, **kw).validate()


def test_unconditional_builtin_and_shard_captions_are_empty(tmp_path):
    from gigagan.data import make_dataset
    ds = make_dataset("builtin:4", 16, captions=False)
    assert [ds[i][1] for i in range(4)] == [""] * 4 and ds[0][0].shape == (3, 16, 16)


def test_profile_steps_write_a_trace_with_the_named_ranges(tmp_path):
    import json
    trainer = Trainer(_cfg(tmp_path, steps=3, profile_steps=2))
    assert trainer.fit()["step"] == 3
    profile = tmp_path / "run" / "profile"
    trace = json.loads((profile / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    for wanted in ("G.mapping", "G.text_encoder", "G.level4px", "G.level32px", "D.level32px",
                   "gigagan_kernels.adaptive_modconv2d", "gigagan_kernels.attention"):
        assert wanted in names, wanted
    summary = (profile / "summary.txt").read_text()
    assert summary.startswith("2 steps from step 1, cpu, impl ref")


def test_profile_steps_must_not_be_negative(tmp_path):
    with pytest.raises(ConfigError, match="profile_steps"):
        _cfg(tmp_path, profile_steps=-1).validate()
