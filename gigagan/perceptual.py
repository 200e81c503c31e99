"""Frozen VGG16 features for the upsampler's LPIPS-style perceptual term (paper: weight 10).

The stages are LPIPS's: relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 of torchvision's VGG16, on
ImageNet-normalised input. Weights come from a local file (a torchvision VGG16 state dict, whole or
`features.*` only) or from torchvision's cache when it already holds them; nothing is downloaded. With
neither, the network keeps a seeded random initialisation and says so once, loudly: random conv
features still give a smooth multi-scale distance, but not LPIPS.
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch
from torch import nn

from .extras import require

# Indices into torchvision's vgg16().features where each LPIPS stage ends (after its ReLU).
_STAGE_ENDS = (4, 9, 16, 23, 30)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_warned = False


def cached_vgg16_weights() -> Optional[str]:
    """torchvision's cached ImageNet VGG16 file, if a previous download left it; never downloads."""
    VGG16_Weights = require("torchvision.models", "the perceptual loss").VGG16_Weights
    name = os.path.basename(VGG16_Weights.IMAGENET1K_V1.url)
    path = os.path.join(torch.hub.get_dir(), "checkpoints", name)
    return path if os.path.isfile(path) else None


class PerceptualFeatures(nn.Module):
    """x in [-1, 1], [B, 3, H, W] -> the five VGG16 stage activations. Frozen; eval mode always."""

    def __init__(self, weights: Optional[str] = None, seed: int = 0):
        super().__init__()
        vgg16 = require("torchvision.models", "the perceptual loss").vgg16
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)                           # a random fallback is the same in every run
            features = vgg16(weights=None).features[:_STAGE_ENDS[-1]]
        path = weights or cached_vgg16_weights()
        if weights is not None and not os.path.isfile(weights):
            raise FileNotFoundError(f"PerceptualFeatures: weights file {weights} does not exist")
        if path is not None:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
            features.load_state_dict({k: v for k, v in state.items() if int(k.split(".")[0]) < _STAGE_ENDS[-1]})
        else:
            global _warned
            if not _warned:
                warnings.warn("PerceptualFeatures: no VGG16 weights (pass a local file, or have torchvision's cache "
                              "hold them); the perceptual term uses a seeded RANDOM VGG16, which is not LPIPS",
                              stacklevel=2)
                _warned = True
        self.weights_path = path
        starts = (0,) + _STAGE_ENDS[:-1]
        self.stages = nn.ModuleList(features[a:b] for a, b in zip(starts, _STAGE_ENDS))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list:
        h = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out
