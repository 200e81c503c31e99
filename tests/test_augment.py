"""DiffAugment on D's inputs: exact transforms, one transform per sample across pyramid levels, gradients that
are the transforms' adjoints, and training with it on."""
import pytest
import torch
import torch.nn.functional as F

from gigagan.augment import apply, augment_pyramid, draw, parse_policy
from gigagan.training import ConfigError, TrainConfig, Trainer


def test_translation_shifts_whole_pixels_and_pads_with_zeros():
    x = torch.arange(2 * 8 * 8, dtype=torch.float64).reshape(2, 1, 8, 8) + 1
    y = apply(x, {"shift": torch.tensor([[0.25, 0.0], [0.0, -0.125]], dtype=torch.float64)})
    assert torch.equal(y[0, 0, :, 2:], x[0, 0, :, :6]) and not y[0, 0, :, :2].any()      # 2 px right
    assert torch.equal(y[1, 0, :7], x[1, 0, 1:]) and not y[1, 0, 7].any()                # 1 px up


def test_flip_and_cutout():
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    y = apply(x, {"flip": torch.tensor([True, False, True])})
    assert torch.equal(y[0], x[0].flip(-1)) and torch.equal(y[1], x[1])
    z = apply(torch.ones(1, 1, 8, 8), {"centre": torch.tensor([[0.5, 0.5]])})
    assert z.sum() == 64 - 16 and not z[0, 0, 2:6, 2:6].any()                             # a 4 x 4 hole


def test_one_transform_per_sample_on_every_level():
    """Flips and even shifts commute with 2x average pooling: level 1 of the augmented pyramid is the pooled
    level 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64)
    levels = [x, F.avg_pool2d(x, 2)]
    params = {"flip": torch.tensor([True, False] * 3), "shift": torch.tensor([[0.25, -0.125]] * 6, dtype=torch.float64)}
    out = [apply(level, params) for level in levels]
    assert torch.allclose(out[1], F.avg_pool2d(out[0], 2))


def test_gradients_are_the_adjoint():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    params = draw(4, ("flip", "translation", "cutout"), "cpu", torch.Generator().manual_seed(2))
    (gx,) = torch.autograd.grad((apply(x, params) * w).sum(), x)
    v = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    # <A x, w> = <x, A^T w> for a linear A: check <A v, w> == <v, grad>.
    assert torch.allclose((apply(v, params) * w).sum(), (v * gx).sum())


def test_policy_parsing_and_training_with_augmentation(tmp_path):
    assert parse_policy("") == () and parse_policy("flip, cutout") == ("flip", "cutout")
    with pytest.raises(ConfigError, match="augment"):
        TrainConfig(augment="rotate").validate()
    x = torch.ones(1, 3, 4, 4)
    assert augment_pyramid([x], ())[0] is x                                   # off: D sees the images as they are
    cfg = TrainConfig(preset="tiny", steps=2, batch_size=2, out=str(tmp_path / "run"), impl="ref", log_every=1,
                      sample_every=0, ckpt_every=2, progress=False, seed=3, device="cpu", r1_interval=1,
                      augment="flip,translation,cutout")
    assert Trainer(cfg).fit()["bad_steps"] == 0
