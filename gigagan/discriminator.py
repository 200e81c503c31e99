"""GigaGAN's multi-scale-input, multi-scale-output (MS-I/O) discriminator (paper §3.3, docs/design.md §5).

    D = Discriminator(cfg, clip)
    logits = D(pyramid, captions)      # a list of [B, 1, h_j, w_j] maps, one per pair (i, j), j > i
    D.prediction_pairs                 # [(0, 1), (0, 2), ..., (4, 5)]: 15 for a 5-level pyramid

Pyramid level i (resolution R / 2^i) enters the shared trunk phi at scale i through its own 1x1
from-RGB layer. Trunk block j (conv, L2 self-attention at the attention resolutions, conv,
stride-2 average pooling, with a 1x1 residual path) takes scale j to scale j+1. At every later
scale j a prediction is made from each level i < j:

    D_ij = psi_j(phi_{i->j}(x_i), t_D) + conv1x1(phi_{i->j}(x_i))

psi_j is a two-layer modulated-conv predictor conditioned on t_D, D's own text descriptor (CLIP
plus D's learned transformer). The trunk runs each block once on the levels that reached it,
stacked along the batch, rather than once per level, and once for all the captions an image is
scored under (captions_per_image: the matching-aware loss scores each image twice).
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from gigagan_kernels.nn import AdaptiveModConv2d, EqualizedConv2d, EqualizedLinear, L2SelfAttention

from .config import DiscriminatorConfig
from .text import CLIPText, FrozenCLIPText, TextEncoder, TextFeatures


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


def image_pyramid(images: torch.Tensor, num_levels: int) -> list:
    """[B, C, R, R] -> [R, R/2, ..., R/2^(num_levels-1)] by 2x2 average pooling (for real images)."""
    levels = [images]
    for _ in range(num_levels - 1):
        levels.append(downsample2x(levels[-1]))
    return levels


def minibatch_std(x: torch.Tensor, group_size: int, part: int) -> torch.Tensor:
    """StyleGAN2's minibatch standard deviation as one more channel: the features' std over groups of
    consecutive samples, averaged, so D can see a batch's lack of variety (mode collapse). Groups never
    straddle the `part`-sized chunks the batch is made of ([real, fake, ...] stacked by the trainer)."""
    N, C, H, W = x.shape
    G = max(g for g in range(1, min(group_size, part) + 1) if part % g == 0)
    y = x.float().reshape(N // G, G, C, H, W)
    y = (y - y.mean(dim=1, keepdim=True)).square().mean(dim=1).add(1e-8).sqrt()     # [N/G, C, H, W]
    y = y.mean(dim=(1, 2, 3)).repeat_interleave(G).view(N, 1, 1, 1).expand(N, 1, H, W)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorBlock(nn.Module):
    """conv3x3 -> [L2 self-attention] -> conv3x3 -> avgpool 2x, plus a pooled 1x1 skip, over sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int, attention: bool, dim_head: int, conv_clamp):
        super().__init__()
        self.conv0 = EqualizedConv2d(in_channels, in_channels, 3, activation="lrelu", clamp=conv_clamp)
        self.attn = (L2SelfAttention(in_channels, heads=max(1, in_channels // dim_head), dim_head=dim_head)
                     if attention else None)
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, activation="lrelu", clamp=conv_clamp)
        self.skip = EqualizedConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(downsample2x(x))
        x = self.conv0(x)
        if self.attn is not None:
            x = self.attn(x)
        x = downsample2x(self.conv1(x))
        return (x + skip) * (1.0 / math.sqrt(2.0))


class Predictor(nn.Module):
    """psi_j(h, t_D) + conv1x1(h): a text-conditioned modulated-conv head and an unconditional 1x1 skip."""

    def __init__(self, channels: int, t_dim: int, conv_clamp):
        super().__init__()
        self.mod0 = AdaptiveModConv2d(channels, channels, 3, 1, t_dim, activation="lrelu", clamp=conv_clamp)
        self.mod1 = AdaptiveModConv2d(channels, 1, 1, 1, t_dim, demodulate=False, activation=None)
        self.skip = EqualizedConv2d(channels, 1, 1)

    def forward(self, h: torch.Tensor, t_d: torch.Tensor) -> torch.Tensor:
        return self.mod1(self.mod0(h, t_d), t_d) + self.skip(h)


class Discriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig, clip: FrozenCLIPText):
        super().__init__()
        if cfg.resolution != 4 * 2 ** (cfg.num_levels - 1):
            raise ValueError(f"DiscriminatorConfig: resolution {cfg.resolution} needs channels for "
                             f"{int(math.log2(cfg.resolution))} scales ({cfg.resolution} .. 2 px), "
                             f"got {len(cfg.channels)}")
        self.config = cfg
        self.resolution, self.num_levels = cfg.resolution, cfg.num_levels
        self.text_encoder = TextEncoder(clip, cfg.text)
        self.to_t_d = EqualizedLinear(cfg.text.dim, cfg.t_dim)
        ch, res = cfg.channels, cfg.resolutions
        self.from_rgb = nn.ModuleList(EqualizedConv2d(3, ch[i], 1, activation="lrelu", clamp=cfg.conv_clamp)
                                      for i in range(self.num_levels))
        self.blocks = nn.ModuleList(DiscriminatorBlock(ch[j], ch[j + 1], res[j] in cfg.attn_resolutions,
                                                       cfg.attn_dim_head, cfg.conv_clamp)
                                    for j in range(self.num_levels))
        # The last (coarsest) predictor also sees the minibatch-std channel.
        self.mbstd_group = cfg.mbstd_group
        self.predictors = nn.ModuleList(
            Predictor(ch[j] + (1 if j == self.num_levels and cfg.mbstd_group > 0 else 0), cfg.t_dim, cfg.conv_clamp)
            for j in range(1, self.num_levels + 1))
        self.prediction_pairs = [(i, j) for j in range(1, self.num_levels + 1) for i in range(j)]

    def encode_text(self, text: Union[CLIPText, Sequence[str]]) -> torch.Tensor:
        """t_D [B, t_dim]: D's own text descriptor."""
        feats = text if isinstance(text, TextFeatures) else self.text_encoder(text)
        return self.to_t_d(feats.t_global)

    def check_pyramid(self, images: Union[torch.Tensor, Sequence[torch.Tensor]]) -> list:
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1:] != (3, self.resolution, self.resolution):
                raise ValueError(f"Discriminator: images must be [B, 3, {self.resolution}, {self.resolution}], "
                                 f"got {tuple(images.shape)}")
            return image_pyramid(images, self.num_levels)
        images = list(images)
        if len(images) != self.num_levels:
            raise ValueError(f"Discriminator: the image pyramid needs {self.num_levels} levels, got {len(images)}")
        B = images[0].shape[0]
        for i, x in enumerate(images):
            r = self.resolution >> i
            if x.dim() != 4 or x.shape != (B, 3, r, r):
                raise ValueError(f"Discriminator: images[{i}] must be [B={B}, 3, {r}, {r}], got {tuple(x.shape)}")
        return images

    def forward(self, images: Union[torch.Tensor, Sequence[torch.Tensor]],
                text: Union[CLIPText, TextFeatures, Sequence[str], torch.Tensor], captions_per_image: int = 1,
                parts: int = 1) -> list:
        """images: a pyramid (level 0 first) or one full-resolution batch, pooled here into a pyramid.
        text: captions, their CLIP features, or t_D itself [B, t_dim]. Returns one logit map per pair (i, j).

        captions_per_image m > 1 scores each of the B images under m captions: text then has m * B rows
        (caption set 0 for every image, then set 1, ...) and each map has m * B rows in that order, as if
        the images had been repeated m times. The trunk, which does not read the text, runs once.
        parts: the image batch is that many equal chunks (e.g. real, then fake) that minibatch-std groups
        never straddle."""
        pyramid = self.check_pyramid(images)
        B = pyramid[0].shape[0]
        m = int(captions_per_image)
        if m < 1:
            raise ValueError(f"Discriminator: captions_per_image must be >= 1, got {captions_per_image}")
        if parts < 1 or B % parts:
            raise ValueError(f"Discriminator: parts must divide the batch of {B} images, got {parts}")
        if isinstance(text, str):
            raise TypeError("Discriminator: text must be a list of captions (one per sample), not a single str")
        t_d = text if isinstance(text, torch.Tensor) else self.encode_text(text)
        if t_d.shape[0] != m * B:
            raise ValueError(f"Discriminator: got {t_d.shape[0]} captions for a batch of {B} images scored under "
                             f"{m} caption(s) each; pass {m * B}")
        t_d = t_d.to(pyramid[0].dtype)
        outputs, h = [], None
        for j, block in enumerate(self.blocks):
            with record_function(f"D.level{self.resolution >> j}px"):
                entering = self.from_rgb[j](pyramid[j])
                h = entering if h is None else torch.cat([h, entering], dim=0)     # levels 0..j, stacked on batch
                h = block(h)
                last = j == self.num_levels - 1 and self.mbstd_group > 0
                feats = minibatch_std(h, self.mbstd_group, B // parts) if last else h
                if m > 1:                              # [level, image] -> [level, caption set, image]
                    feats = feats.unflatten(0, (j + 1, 1, B)).expand(-1, m, -1, -1, -1, -1).flatten(0, 2)
                logits = self.predictors[j](feats, t_d.repeat(j + 1, 1))
                outputs.extend(logits.split(m * B, dim=0))                         # pairs (0, j+1) .. (j, j+1)
        return outputs
