"""Losses: adversarial and matching-aware, R1, the perceptual distance, and the CLIP contrastive and
vision-aided losses in training."""
import json

import pytest
import torch

pytest.importorskip("open_clip", reason="the model needs open_clip_torch (requirements.txt)")
import torch.nn.functional as F

from gigagan.losses import (discriminator_loss, generator_loss, matching_aware_d_loss, matching_aware_g_loss,
                            mismatched, r1_penalty)
from gigagan.text import CLIPText
from gigagan.training import Trainer
from tests.helpers import tiny_train_config as _cfg


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
