"""The gigagan model package: shapes, pyramid, MS-I/O predictions, gradients, impl parity, R1, presets,
save/load, CLIP loading and bad input. All on the "tiny" preset on CPU, no downloads."""
import copy
import dataclasses
import warnings

import pytest
import torch

pytest.importorskip("open_clip", reason="the model needs open_clip_torch (requirements.txt)")

from gigagan import (Discriminator, FrozenCLIPText, GigaGAN, TextConfig, count_parameters,
                     get_preset, image_pyramid, upsample_tiled)
from gigagan.hub import ModelFolderError
from gigagan.text import _cached_checkpoint
from tests.conftest import DEVICE, SAME_MATH_ATOL
from gigagan_kernels import use_impl
from tests.helpers import assert_close

CAPTIONS = ["a small red circle in the top left on a blue background",
            "a large green square in the center on a white background",
            "a blue triangle at the bottom right on a yellow background"]


@pytest.fixture(scope="module")
def tiny():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                   # the random-CLIP warning has its own test
        torch.manual_seed(0)
        return GigaGAN(get_preset("tiny")).to(DEVICE)


@pytest.fixture(autouse=True)
def _reference_ops_by_default():
    """Model-structure tests run the reference ops (the interpreter would take minutes);
    the parity tests below switch to the fast path explicitly."""
    with use_impl("ref"):
        yield


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE, dtype=dtype)


def _nonzero_grads(module):
    missing = [n for n, p in module.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)]
    return missing


def test_tiny_shapes_and_pyramid(tiny):
    G, D, U = tiny.generator, tiny.discriminator, tiny.upsampler
    B, R = 3, G.resolution
    feats = G.encode_text(CAPTIONS)
    assert feats.t_local.shape == (B, tiny.config.text.context_length, G.config.text.dim)
    assert feats.t_global.shape == (B, G.config.text.dim) and feats.mask.dtype == torch.bool
    assert feats.mask[:, 0].all() and not feats.mask[:, -1].any()      # start token valid, padding masked
    w = G.mapping(randn(B, G.z_dim), feats.t_global)
    assert w.shape == (B, G.config.w_dim)
    pyramid = G(randn(B, G.z_dim), CAPTIONS)
    assert [p.shape for p in pyramid] == [(B, 3, R >> i, R >> i) for i in range(len(pyramid))]
    assert pyramid[-1].shape[-1] == 4 and len(pyramid) == D.num_levels
    assert all(torch.isfinite(p).all() for p in pyramid)
    logits = D(pyramid, CAPTIONS)
    assert len(logits) == len(D.prediction_pairs) == D.num_levels * (D.num_levels + 1) // 2
    for (i, j), lg in zip(D.prediction_pairs, logits):
        assert j > i and lg.shape == (B, 1, R >> j, R >> j)
    up = U(randn(B, 3, U.in_resolution, U.in_resolution), CAPTIONS)
    assert up[0].shape == (B, 3, U.out_resolution, U.out_resolution)
    assert [p.shape[-1] for p in up] == [U.out_resolution >> i for i in range(len(up))]


def test_pyramid_levels_are_coherent_images(tiny):
    """Skip architecture: level i = upsample(level i+1) + to_rgb_i(features_i); level 0 is the output."""
    G = tiny.generator
    colours = []
    hooks = [b.to_rgb.register_forward_hook(lambda m, i, o: colours.append(o)) for b in G.synthesis.blocks]
    try:
        pyramid = G(randn(2, G.z_dim), CAPTIONS[:2], noise_mode="none")
    finally:
        for h in hooks:
            h.remove()
    colours = colours[::-1]                                   # highest resolution first, like the pyramid
    assert torch.equal(pyramid[-1], colours[-1])
    for i in range(len(pyramid) - 1):
        up = torch.nn.functional.interpolate(pyramid[i + 1], scale_factor=2, mode="bilinear", align_corners=False)
        assert torch.allclose(pyramid[i], up + colours[i], atol=1e-6)
    reals = image_pyramid(randn(2, 3, 32, 32), 4)
    assert [r.shape[-1] for r in reals] == [32, 16, 8, 4]
    assert torch.allclose(reals[1], torch.nn.functional.avg_pool2d(reals[0], 2))


def test_five_level_pyramid_gives_15_predictions(tiny):
    cfg = dataclasses.replace(tiny.config.discriminator, resolution=64, channels=(16, 16, 16, 16, 16, 16))
    D = Discriminator(cfg, tiny.clip).to(DEVICE)
    pyramid = image_pyramid(randn(2, 3, 64, 64), 5)
    logits = D(pyramid, CAPTIONS[:2])
    assert len(logits) == 15
    assert D.prediction_pairs == [(i, j) for j in range(1, 6) for i in range(j)]
    assert [lg.shape[-1] for lg in logits] == [64 >> j for (_, j) in D.prediction_pairs]
    # each prediction depends on its own level only: perturbing level 4 changes just D_45
    pyramid2 = [p.clone() for p in pyramid]
    pyramid2[4] += 1.0
    changed = [not torch.equal(a, b) for a, b in zip(logits, D(pyramid2, CAPTIONS[:2]))]
    assert changed == [pair == (4, 5) for pair in D.prediction_pairs]


def test_gradient_reaches_every_parameter(tiny):
    model = copy.deepcopy(tiny)
    G, D, U = model.generator, model.discriminator, model.upsampler
    feats = model.clip.encode(CAPTIONS[:2])
    pyramid = G(randn(2, G.z_dim), feats)
    loss = sum(torch.nn.functional.softplus(-lg).mean() for lg in D(pyramid, feats))
    loss.backward()
    assert _nonzero_grads(G) == [] and _nonzero_grads(D) == []
    up = U(randn(2, 3, U.in_resolution, U.in_resolution), feats)
    sum(p.square().mean() for p in up).backward()
    assert _nonzero_grads(U) == []
    assert all(p.grad is None for p in model.clip.parameters())        # the CLIP tower stays frozen


def _double(model):
    return copy.deepcopy(model).double()


def test_triton_matches_float64_reference_for_tiny_g_and_d(tiny):
    """The whole tiny G and D under impl "triton" (interpreter on CPU) against the float64 reference."""
    feats = tiny.clip.encode(CAPTIONS[:1])
    z = randn(1, tiny.generator.z_dim)
    ref = _double(tiny)
    with use_impl("ref"):
        pyr64 = ref.generator(z.double(), feats, noise_mode="none")
        logits64 = ref.discriminator([p.detach() for p in pyr64], feats)
    with use_impl("triton"):
        pyr = tiny.generator(z, feats, noise_mode="none")
        logits = tiny.discriminator([p.detach().float() for p in pyr64], feats)
    for i, (a, b) in enumerate(zip(pyr, pyr64)):
        assert_close(a, b, torch.float32, f"G level {i}", factor=20)
    for pair, a, b in zip(tiny.discriminator.prediction_pairs, logits, logits64):
        assert_close(a, b, torch.float32, f"D_{pair}", factor=20)


@pytest.mark.parametrize("impl", ["ref", "triton"])
def test_r1_double_backward_through_d(tiny, impl):
    """R1 = ||grad_x D(x)||^2, differentiated again w.r.t. D's parameters, against float64."""
    feats = tiny.clip.encode(CAPTIONS[:1])
    real = randn(1, 3, 32, 32)

    def r1_grads(D, x):
        x = x.detach().requires_grad_(True)
        logits = D(x, feats)
        (g,) = torch.autograd.grad(sum(lg.sum() for lg in logits), x, create_graph=True)
        penalty = g.square().sum()
        params = [p for p in D.parameters() if p.requires_grad]
        return penalty, torch.autograd.grad(penalty, params, allow_unused=True)

    D64 = _double(tiny).discriminator
    with use_impl("ref"):
        p64, g64 = r1_grads(D64, real.double())
    with use_impl(impl):
        p32, g32 = r1_grads(tiny.discriminator, real)
    assert_close(p32, p64, torch.float32, "R1 penalty", factor=20)
    names = [n for n, p in tiny.discriminator.named_parameters() if p.requires_grad]
    checked = 0
    for name, a, b in zip(names, g32, g64):
        if b is None:                         # e.g. D's text branch: R1 does not depend on it
            assert a is None, name
            continue
        assert_close(a, b, torch.float32, f"dR1/d{name}", factor=50)
        checked += 1
    assert checked > len(names) // 2


def test_paper_preset_counts_on_meta():
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = GigaGAN(get_preset("paper"))
    assert all(p.device.type == "meta" for p in model.parameters())
    counts = model.parameter_counts()
    for name, paper in (("generator", 652.5e6), ("discriminator", 381.4e6), ("upsampler", 359.1e6)):
        assert abs(counts[name] / paper - 1) <= 0.15, (name, counts[name])
    assert counts["clip_text_frozen"] == pytest.approx(123.65e6, rel=0.01)   # ViT-L/14's text tower


def test_parameter_count_dedups_shared_clip(tiny):
    shared = count_parameters(tiny.clip, trainable=False)
    assert count_parameters(tiny, trainable=False) == shared        # one tower, three users
    assert count_parameters(tiny.generator) + count_parameters(tiny.discriminator) + \
        count_parameters(tiny.upsampler) == count_parameters(tiny)


def test_save_load_round_trip(tiny, tmp_path):
    tiny.generator.mapping.w_avg.normal_()
    tiny.save_pretrained(str(tmp_path / "ckpt"))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = GigaGAN.from_pretrained(str(tmp_path / "ckpt"), map_location=DEVICE)
    assert loaded.config == tiny.config
    a, b = tiny.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    z = randn(2, tiny.generator.z_dim)
    for x, y in zip(tiny.generator(z, CAPTIONS[:2], noise_mode="none"),
                    loaded.generator(z, CAPTIONS[:2], noise_mode="none")):
        assert torch.equal(x, y)
    with pytest.raises(ModelFolderError, match="nowhere: no such folder, and not a hub repo id"):
        GigaGAN.from_pretrained(str(tmp_path / "nowhere"))
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(ModelFolderError, match="config.json: no such file"):
        GigaGAN.from_pretrained(str(tmp_path / "ckpt"))


@pytest.mark.parametrize("path, value, message", [
    ("generator.w_dim", 2_000_000, r"generator.w_dim must be an integer in \[1, 16384\], got 2000000"),
    ("generator.z_dim", "32", "generator.z_dim must be an integer"),
    ("generator.z_dim", True, "generator.z_dim must be an integer"),
    ("generator.channels", [64, "64", 48, 32], "generator.channels must be a list of at most 32 integers"),
    ("generator.mapping_lr_multiplier", "nan", "generator.mapping_lr_multiplier must be a finite number"),
    ("upsampler.noise_augment_std", -1.0, r"upsampler.noise_augment_std must be a finite number in \[0.0, 10.0\]"),
    ("discriminator.mbstd_group", 5000, "discriminator.mbstd_group must be an integer in"),
    ("text.clip_model", 7, "text.clip_model must be a string"),
    ("text.context_length", 0, "text.context_length must be an integer in"),
    ("generator.text.heads", 0.5, "generator.text.heads must be an integer"),
    ("generator", [1, 2], "generator must be a JSON object"),
    ("discriminator.bogus", 1, r"discriminator has unknown config keys \['bogus'\]"),
])
def test_config_from_dict_checks_every_fields_type_and_range(path, value, message):
    import json as json_module

    from gigagan import GigaGANConfig
    from gigagan.config import ConfigValueError, apply_overrides
    data = json_module.loads(get_preset("tiny").to_json())
    node, names = data, path.split(".")
    for name in names[:-1]:
        node = node[name]
    node[names[-1]] = float(value) if value == "nan" else value
    with pytest.raises(ConfigValueError, match=message):
        GigaGANConfig.from_dict(data)
    for name in ("tiny", "small", "paper"):                     # every preset passes its own check
        assert GigaGANConfig.from_dict(json_module.loads(get_preset(name).to_json())) == get_preset(name)
    if path == "generator.w_dim":                               # --set is checked the same way
        with pytest.raises(ValueError, match="generator.w_dim must be an integer"):
            apply_overrides(get_preset("tiny"), ["generator.w_dim=2000000"])


def test_bad_inputs_give_clear_errors(tiny):
    G, D, U = tiny.generator, tiny.discriminator, tiny.upsampler
    with pytest.raises(ValueError, match="2 captions for a batch of 3"):
        G(randn(3, G.z_dim), CAPTIONS[:2])
    with pytest.raises(TypeError, match="list of captions"):
        G(randn(1, G.z_dim), CAPTIONS[0])
    with pytest.raises(ValueError, match=r"z must be \[B, 32\]"):
        G(randn(2, 7), CAPTIONS[:2])
    with pytest.raises(ValueError, match=r"images must be \[B, 3, 32, 32\], got \(2, 3, 64, 64\)"):
        D(randn(2, 3, 64, 64), CAPTIONS[:2])
    with pytest.raises(ValueError, match=r"images\[2\] must be \[B=2, 3, 8, 8\]"):
        D([randn(2, 3, 32 >> i, 32 >> i) if i != 2 else randn(2, 3, 7, 7) for i in range(4)], CAPTIONS[:2])
    with pytest.raises(ValueError, match="needs 4 levels, got 3"):
        D(image_pyramid(randn(2, 3, 32, 32), 3), CAPTIONS[:2])
    with pytest.raises(ValueError, match="3 captions for a batch of 2"):
        D(randn(2, 3, 32, 32), CAPTIONS)
    with pytest.raises(ValueError, match=r"Upsampler: images must be \[B, 3, 16, 16\]"):
        U(randn(1, 3, 32, 32), CAPTIONS[:1])
    with pytest.raises(ValueError, match="noise_mode"):
        G(randn(1, G.z_dim), CAPTIONS[:1], noise_mode="const")
    with pytest.raises(ValueError, match="preset must be one of"):
        get_preset("huge")


def test_upsample_tiled(tiny):
    U, R = tiny.upsampler, tiny.upsampler.in_resolution
    z = randn(1, U.z_dim)
    x = randn(1, 3, R, R)
    feats = U.text_encoder(CAPTIONS[:1])
    direct = U(x, feats, z, noise_augment_std=0.0, noise_mode="none")[0]
    tiled = upsample_tiled(U, x, feats, z, noise_augment_std=0.0, noise_mode="none")
    assert torch.allclose(tiled, direct, atol=1e-5)
    wide = randn(1, 3, R, R + R // 2)                   # tiles at columns 0 and R/2, overlap R/4
    out = upsample_tiled(U, wide, feats, z, noise_augment_std=0.0, noise_mode="none")
    assert out.shape == (1, 3, R * U.scale, (R + R // 2) * U.scale)
    first = U(wide[..., :R], feats, z, noise_augment_std=0.0, noise_mode="none")[0]
    only_first = R // 2 * U.scale                              # columns no other tile covers
    assert torch.allclose(out[..., :only_first], first[..., :only_first], atol=1e-5)
    last = U(wide[..., -R:], feats, z, noise_augment_std=0.0, noise_mode="none")[0]
    assert torch.allclose(out[..., -only_first:], last[..., -only_first:], atol=1e-5)


def test_clip_penultimate_features_and_local_checkpoint(tmp_path):
    cfg = TextConfig(clip_model="custom", context_length=16, clip_width=32, clip_heads=2, clip_layers=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = FrozenCLIPText(cfg)
    tokens = source.tokenize(["a red circle", "a blue square on green"])
    captured = {}
    source.tower.transformer.resblocks[-2].register_forward_hook(lambda m, i, o: captured.__setitem__("x", o))
    source.tower(tokens)
    feats = source(tokens)
    assert torch.allclose(feats.features, source.tower.ln_final(captured["x"]), atol=1e-6)
    assert feats.eot.tolist() == [(t == t.max()).nonzero()[0].item() for t in tokens]
    # a whole-CLIP checkpoint (vision keys, DDP prefix) loads the text tower from a local file
    state = {f"module.{k}": v for k, v in source.tower.state_dict().items()}
    state["module.visual.proj"] = torch.randn(4, 4)
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": state}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # loading weights must not warn
        loaded = FrozenCLIPText(dataclasses.replace(cfg, clip_pretrained=str(path)))
    assert loaded.pretrained_from == str(path)
    assert torch.equal(loaded(tokens).features, feats.features)
    with pytest.raises(FileNotFoundError, match="clip_pretrained"):
        FrozenCLIPText(dataclasses.replace(cfg, clip_pretrained=str(tmp_path / "missing.pt")))
    torch.save({"visual.proj": torch.randn(2)}, tmp_path / "vision_only.pt")
    with pytest.raises(ValueError, match="no CLIP text-tower weights"):
        FrozenCLIPText(dataclasses.replace(cfg, clip_pretrained=str(tmp_path / "vision_only.pt")))


def test_random_clip_warns_only_with_published_weights_and_tags_are_only_read_from_cache(tmp_path, monkeypatch):
    cfg = TextConfig(clip_model="custom", context_length=8, clip_width=24, clip_heads=1, clip_layers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FrozenCLIPText(cfg)                                   # a custom tower has no weights anywhere: quiet
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert _cached_checkpoint("ViT-B-32", "openai") is None   # not cached: None, never a download
    with pytest.raises(ValueError, match="no tag"):
        _cached_checkpoint("ViT-B-32", "not-a-tag")


def test_d_scores_each_image_under_several_captions_with_one_trunk_pass(tiny):
    """captions_per_image=2 equals scoring the images repeated twice, and runs the trunk once."""
    D = tiny.discriminator
    x = randn(4, 3, 32, 32)
    captions = (CAPTIONS * 3)[:4]
    text = tiny.clip.encode(captions + captions[::-1])
    repeated = D(torch.cat([x, x]), text)
    calls = []
    hook = D.blocks[0].register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    try:
        once = D(x, text, captions_per_image=2)
    finally:
        hook.remove()
    assert calls == [4]
    assert len(once) == len(repeated)
    for a, b in zip(once, repeated):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=max(1e-5, SAME_MATH_ATOL))
    with pytest.raises(ValueError, match="scored under 2 caption"):
        D(x, tiny.clip.encode(captions), captions_per_image=2)
    with pytest.raises(ValueError, match="parts must divide"):
        D(x, tiny.clip.encode(captions), parts=3)


def test_minibatch_std_groups_stay_inside_each_part():
    from gigagan.discriminator import minibatch_std
    same = randn(1, 3, 4, 4).expand(4, 3, 4, 4)          # a collapsed part: four identical samples
    varied = randn(4, 3, 4, 4)
    out = minibatch_std(torch.cat([same, varied]), group_size=4, part=4)
    assert out.shape == (8, 4, 4, 4) and torch.equal(out[:, :3], torch.cat([same, varied]))
    assert out[:4, 3].abs().max() < 1e-3                    # no variety within the collapsed part
    expected = varied.double().std(dim=0, unbiased=False).mean()
    assert torch.allclose(out[4:, 3].double(), expected.expand(4, 4, 4), rtol=1e-4)
    # A part of 6 with group 4: groups of 3 (the largest divisor), never 4 straddling parts.
    out = minibatch_std(torch.cat([same[:3].repeat(2, 1, 1, 1), varied[:3].repeat(2, 1, 1, 1)]), 4, part=6)
    assert out[:6, 3].abs().max() < 1e-3 and out[6:, 3].min() > 0.1
