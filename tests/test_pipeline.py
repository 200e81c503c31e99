"""GigaGANPipeline and `gigagan generate`: pretrained folders in, images out; seed + i per image, the same bits
whatever the batch; the upsampler chained and re-applied on blended tiles; dtype and device; clear errors.
Tiny preset on CPU, no downloads."""
import json
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip", reason="the model needs open_clip_torch (requirements.txt)")

from gigagan import GigaGAN, GigaGANPipeline, get_preset
from gigagan.__main__ import main
from gigagan.config import apply_overrides
from gigagan.pipeline import upsample_pass
from gigagan.training import EXPORT_INFO_NAME
from gigagan_kernels import use_impl

# A 16 px base and a 2x upsampler (16 -> 32): its second pass re-applies it on 9 overlapping tiles of the 32 px image.
SMALL = ["generator.resolution=16", "generator.channels=[64,64,48]", "generator.num_filters=[4,4,2]",
         "generator.convs_per_block=[1,1,1]", "upsampler.scale=2", "upsampler.up_channels=[64,48,32,16]"]


def _export(config, folder, kind, seed):
    """A folder as `gigagan export` writes it: the trained network and the CLIP tower (GigaGAN.save_pretrained),
    with training.json naming the trained part."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GigaGAN(config, parts=("generator",) if kind == "base" else ("upsampler",))
    model.training_info = {"model": kind, "step": 0, "source": "test"}
    model.save_pretrained(str(folder))
    assert json.loads((folder / EXPORT_INFO_NAME).read_text())["model"] == kind
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    small = apply_overrides(get_preset("tiny"), SMALL)
    return {"base": _export(get_preset("tiny"), root / "base", "base", 0),
            "base16": _export(small, root / "base16", "base", 1),
            "upsampler": _export(small, root / "upsampler", "upsampler", 2)}


def test_same_prompt_and_seed_give_the_same_image_whatever_the_batch(folders):
    pipe = GigaGANPipeline.from_pretrained(folders["base"], batch_size=2, impl="ref")
    images = pipe(["a red circle", "a green square", "a blue triangle"], seed=5, output_type="pt").images
    assert [tuple(i.shape) for i in images] == [(3, 32, 32)] * 3
    assert all(i.dtype == torch.float32 and 0 <= i.min() and i.max() <= 1 for i in images)
    assert not torch.equal(images[0], images[1])
    # Seed 6 alone (a batch of padding and it), and seed 7 beside seed 8: the images of the call above.
    assert torch.equal(pipe("a green square", seed=6, output_type="pt").images[0], images[1])
    pair = pipe(["a blue triangle"], seed=7, num_images_per_prompt=2, output_type="pt").images
    assert torch.equal(pair[0], images[2]) and not torch.equal(pair[0], pair[1])
    pil = pipe("a red circle", seed=5).images
    assert len(pil) == 1 and pil[0].size == (32, 32) and pil[0].mode == "RGB"
    expected = (images[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(np.asarray(pil[0]).astype(int) - expected.astype(int)).max() <= 1


def test_upsampler_chains_and_reapplies_on_tiles(folders):
    pipe = GigaGANPipeline.from_pretrained(folders["base16"], upsampler=folders["upsampler"], impl="ref")
    assert pipe.output_plan(None) == (1, 32) and pipe.output_plan(64) == (2, 64) and pipe.output_plan(48) == (2, 48)
    one = pipe("a red circle", seed=3, output_type="pt").images[0]
    tiles = pipe._runners["upsampler.tile"]
    assert one.shape == (3, 32, 32) and tiles.calls == 1
    two = pipe("a red circle", seed=3, output_size=64, output_type="pt").images[0]
    assert two.shape == (3, 64, 64) and torch.isfinite(two).all()
    assert tiles.calls == 1 + 1 + 9                     # pass 1: one tile; pass 2: 3 x 3 overlapping tiles of 16 px
    # By hand, with the draws in the documented order (z, the upsampler's z, then each pass's input noise, from one
    # generator seeded with the image's seed): the base image, then two passes.
    G, U = pipe.generator, pipe.upsampler
    rng = torch.Generator().manual_seed(3)
    z, z_up = torch.randn(1, G.z_dim, generator=rng), torch.randn(1, U.z_dim, generator=rng)
    noise = [torch.randn(1, 3, 16, 16, generator=rng), torch.randn(1, 3, 32, 32, generator=rng)]
    with torch.no_grad(), use_impl("ref"):
        image = G.synthesize(z, G.tokenize(["a red circle"]))[0]
        conditioning = U.encode(z_up, U.text_encoder.clip.tokenize(["a red circle"]))
        passes = []
        for n in noise:
            image = upsample_pass(U.synthesize_from, U, image, conditioning, n)
            passes.append(image)
        # Output pixels 0..23 of pass 2 come from its first tile alone (the next starts at input pixel 12).
        first_tile = U.synthesize_from(passes[0][..., :16, :16], *conditioning, input_noise=noise[1][..., :16, :16])[0]
    assert torch.equal(one, (passes[0][0] * 0.5 + 0.5).clamp(0, 1))
    assert torch.equal(two, (passes[1][0] * 0.5 + 0.5).clamp(0, 1))
    torch.testing.assert_close(passes[1][..., :24, :24], first_tile[..., :24, :24], rtol=1e-5, atol=1e-6)


def test_dtype_device_and_clear_errors(folders):
    pipe = GigaGANPipeline.from_pretrained(folders["base"], torch_dtype=torch.bfloat16, impl="ref")
    assert pipe.dtype == torch.bfloat16 and pipe.device.type == "cpu" and pipe.to("cpu") is pipe
    image = pipe("a red circle", seed=1, output_type="pt").images[0]
    assert image.dtype == torch.float32 and torch.isfinite(image).all()
    bad = [(dict(output_type="np"), r"output_type must be one of \('pil', 'pt'\), got 'np'"),
           (dict(output_size=64), "output_size 64 is larger than the base generator's 32 px and the pipeline has "
                                  "no upsampler"),
           (dict(output_size=0), r"output_size must be an integer in \[1, 16384\], got 0"),
           (dict(seed=-1), "seed must be an integer >= 0, got -1"),
           (dict(num_images_per_prompt=0), "num_images_per_prompt must be an integer >= 1, got 0"),
           (dict(truncation=float("nan")), "truncation must be a finite number, got nan")]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            pipe("a red circle", **kwargs)
    with pytest.raises(ValueError, match="prompts must be a str or a non-empty list of str"):
        pipe([])
    with pytest.raises(ValueError, match="upsampler: .* holds a base run, not an upsampler run"):
        GigaGANPipeline.from_pretrained(folders["base"], upsampler=folders["base"])
    with pytest.raises(ValueError, match="base_dir: .* holds an upsampler run, not a base run"):
        GigaGANPipeline.from_pretrained(folders["upsampler"])
    with pytest.raises(FileNotFoundError, match="base_dir: /nonexistent does not exist"):
        GigaGANPipeline.from_pretrained("/nonexistent")
    with pytest.raises(ValueError, match=r"overlap must be an integer in \[0, 16\) \(the upsampler's input size\), "
                                         "got 16"):
        GigaGANPipeline.from_pretrained(folders["base16"], upsampler=folders["upsampler"], overlap=16)
    with pytest.raises(ValueError, match="torch_dtype must be a floating-point torch.dtype, got 'half'"):
        GigaGANPipeline.from_pretrained(folders["base"], torch_dtype="half")
    with pytest.raises(ValueError, match="upsampler: its input is 16 px but the base generator makes 8 px"):
        small = apply_overrides(get_preset("tiny"), ["generator.resolution=8", "generator.channels=[64,64]",
                                                     "generator.num_filters=[4,4]", "generator.convs_per_block=[1,1]"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = GigaGAN(small)
        GigaGANPipeline(model.generator, model.upsampler)


def test_generate_cli_writes_the_pipelines_images(folders, tmp_path, capsys):
    outdir = tmp_path / "images"
    assert main(["generate", "--ckpt", folders["base"], "--prompt", "a red circle", "--prompt", "a green square",
                 "--seed", "5", "--batch-size", "2", "--impl", "ref", "--outdir", str(outdir)]) == 0
    records = [json.loads(line) for line in (outdir / "prompts.jsonl").read_text().splitlines()]
    assert [(r["file"], r["prompt"], r["seed"]) for r in records] == [("00000-000.png", "a red circle", 5),
                                                                      ("00001-000.png", "a green square", 6)]
    pipe = GigaGANPipeline.from_pretrained(folders["base"], batch_size=2, impl="ref")
    from PIL import Image
    with Image.open(outdir / "00001-000.png") as written:
        assert np.array_equal(np.asarray(written), np.asarray(pipe("a green square", seed=6).images[0]))
    grid = tmp_path / "grid.png"
    assert main(["generate", "--ckpt", folders["base16"], "--upsampler", folders["upsampler"], "--prompt", "a",
                 "--impl", "ref", "--out", str(grid)]) == 0 and grid.is_file()
    capsys.readouterr()
    assert main(["generate", "--ckpt", folders["base"], "--prompt", "a", "--output-size", "64", "--impl", "ref",
                 "--out", str(tmp_path / "big.png")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["gigagan generate: --output-size 64 is larger than the base generator's 32 px "
                                        "and the pipeline has no upsampler (from_pretrained(..., upsampler=DIR))"]
    assert main(["generate", "--ckpt", folders["upsampler"], "--prompt", "a", "--out", str(tmp_path / "x.png")]) == 2
    assert "--ckpt " + folders["upsampler"] + " holds an upsampler run, not a base run" in capsys.readouterr().err
    assert not (tmp_path / "big.png").exists() and not (tmp_path / "x.png").exists()


def test_paper_512_preset_is_the_paper_pipeline_at_512_px():
    """The 8x upsampler of the paper's 512 px pipeline, built on the meta device: 64 -> 512, the paper's base G."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = GigaGAN(get_preset("paper-512"))
    assert (model.upsampler.in_resolution, model.upsampler.out_resolution) == (64, 512)
    assert model.upsampler.up_resolutions[-1] == 512 and model.generator.resolution == 64
    assert get_preset("paper-512").generator == get_preset("paper").generator
    counts = model.parameter_counts()
    assert abs(counts["upsampler"] / 359.1e6 - 1) < 0.05, counts       # the paper's upsampler: 359.1M


def test_sampling_commands_run_the_entry_compiled(folders, tmp_path, monkeypatch):
    """--compile on: sample compiles G.synthesize from its second batch (padding the last one), style-mix compiles
    G.synthesis; the images are those of --compile off (aot_eager here, for speed: 1e-5 apart, so PNGs 1 apart)."""
    from PIL import Image
    compiled = []

    def aot_eager(fn, device, fullgraph=False):
        compiled.append(fn.__qualname__)
        return torch.compile(fn, backend="aot_eager", dynamic=False)
    monkeypatch.setattr("gigagan.entry.compile_entry", aot_eager)
    common = ["--ckpt", folders["base"], "--impl", "ref", "--seed", "2"]
    for mode in ("off", "on"):
        assert main(["sample", *common, "--prompt", "a red circle", "--prompt", "a green square", "--prompt", "sky",
                     "--batch-size", "2", "--outdir", str(tmp_path / mode), "--compile", mode]) == 0
        assert main(["style-mix", *common, "--prompt", "a red circle", "--seeds-a", "1,2", "--seeds-b", "3",
                     "--out", str(tmp_path / f"mix-{mode}.png"), "--compile", mode]) == 0
    assert compiled == ["Generator.synthesize", "SynthesisNetwork.forward"]
    for off, on in [(tmp_path / "off" / f"0000{i}-000.png", tmp_path / "on" / f"0000{i}-000.png") for i in range(3)] + \
            [(tmp_path / "mix-off.png", tmp_path / "mix-on.png")]:
        with Image.open(off) as a, Image.open(on) as b:
            assert np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max() <= 1, (off, on)
