"""A frozen whole CLIP (image and text towers) for the two optional CLIP losses (docs/design.md §6).

- The CLIP contrastive loss on G (paper eq. 9): InfoNCE between CLIP's embedding of G(c) and the
  embeddings of the batch's captions, gathered across ranks (losses.clip_contrastive_loss).
- The vision-aided loss (Kumari et al., used by GigaGAN): a small trainable head on frozen CLIP
  ViT-B/32 image features is an extra discriminator, conditioned on the caption's CLIP embedding by a
  projection term.

Both need pretrained CLIP weights: with a random CLIP they only add noise, so the trainer refuses them
without weights unless told otherwise (allow_random, for smoke tests). Weights come from a local file
or an open_clip tag already in the cache; nothing is downloaded.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .extras import require

# A tiny architecture for tests and CPU smoke runs (32 px input, one layer per tower).
TINY_TEST_MODEL = "tiny-test"
_TINY_TEST_CFG = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=64, patch_size=8, head_width=32),
                      text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=1))


class FrozenCLIP(nn.Module):
    """open_clip's CLIP, frozen. encode_image takes images in [-1, 1] at any size."""

    def __init__(self, model: str = "ViT-B-32", pretrained: Optional[str] = None):
        super().__init__()
        open_clip = require("open_clip", "the CLIP guidance losses")
        if model == TINY_TEST_MODEL:
            self.clip = open_clip.CLIP(**_TINY_TEST_CFG)
        else:
            if open_clip.get_model_config(model) is None:
                raise ValueError(f"FrozenCLIP: unknown open_clip architecture {model!r}")
            self.clip = open_clip.create_model(model, pretrained=None)
        self.pretrained_from = None
        if pretrained:
            path = pretrained
            if not os.path.isfile(path):
                from .text import _cached_checkpoint
                path = _cached_checkpoint(model, pretrained) if model != TINY_TEST_MODEL else None
                if path is None:
                    raise FileNotFoundError(f"FrozenCLIP: {pretrained!r} is neither a file nor an open_clip tag "
                                            f"of {model!r} in the local cache (nothing is downloaded)")
            from .text import read_state_dict
            self.clip.load_state_dict(read_state_dict(path))
            self.pretrained_from = path
        self.context_length = self.clip.context_length
        size = self.clip.visual.image_size
        self.image_size = size if isinstance(size, int) else size[0]
        self.embed_dim = self.clip.visual.output_dim
        self.register_buffer("mean", torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, embed_dim]; differentiable with respect to the images."""
        x = F.interpolate(images.float(), size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=False, antialias=images.shape[-1] > self.image_size)
        x = ((x + 1) / 2 - self.mean) / self.std
        return self.clip.encode_image(x)

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        from .text import _tokenizer
        tokens = _tokenizer(self.context_length)(list(captions)).to(self.mean.device)
        return self.clip.encode_text(tokens)


class VisionAidedHead(nn.Module):
    """A small discriminator head on frozen CLIP image features, conditioned on the caption embedding:
    logit = mlp(f) + <proj(f), t> / sqrt(dim)  (a projection discriminator)."""

    def __init__(self, embed_dim: int, hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))
        self.proj = nn.Linear(embed_dim, embed_dim, bias=False)

    def forward(self, image_features: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        f = F.normalize(image_features.float(), dim=-1) * image_features.shape[-1] ** 0.5
        t = F.normalize(text_embeddings.float(), dim=-1)
        return self.mlp(f).squeeze(-1) + (self.proj(f) * t).sum(-1)
