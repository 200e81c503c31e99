"""GigaGAN's text-conditioned super-resolution network: an asymmetric U-Net (paper §3.4, docs/design.md §5).

    U = Upsampler(cfg, clip)
    pyramid = U(low_res, captions)                 # [B, 3, 4R, 4R] first, then 2R, R, ...
    pyramid = U.synthesize(low_res, z, clip.tokenize(captions))   # tensors only (compile, export)
    big = upsample_tiled(U, image, captions)       # inputs larger than cfg.in_resolution

Three down blocks take the (noise-augmented) input to 1/8 of its size; log2(scale) + 3 up blocks
bring it back and past, with skip connections where the resolutions match. Every block is two
adaptive modulated convolutions conditioned on w (mapping of z and t_global); at the attention
resolutions, L2 self-attention and cross-attention to t_local follow each of them. To-RGB layers
accumulate the output as in the generator, on top of the bilinearly upsampled input, so each up
block's image is a level of the output pyramid the MS-I/O discriminator consumes.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from gigagan_kernels.nn import AdaptiveModConv2d, CrossAttention, EqualizedConv2d, L2SelfAttention

from .config import UpsamplerConfig
from .discriminator import downsample2x
from .generator import NOISE_MODES, MappingNetwork, layer_noise, upsample2x
from .text import CLIPText, FrozenCLIPText, TextEncoder, TextFeatures


class UNetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_filters: int, w_dim: int, text_dim: int,
                 attention: bool, dim_head: int, conv_clamp):
        super().__init__()
        self.convs = nn.ModuleList(AdaptiveModConv2d(in_channels if i == 0 else out_channels, out_channels, 3,
                                                     num_filters, w_dim, activation="lrelu", clamp=conv_clamp,
                                                     use_noise=True) for i in range(2))
        heads = max(1, out_channels // dim_head)
        self.self_attns = nn.ModuleList(L2SelfAttention(out_channels, heads=heads, dim_head=dim_head, style_dim=w_dim)
                                        for _ in range(2 if attention else 0))
        self.cross_attns = nn.ModuleList(CrossAttention(out_channels, text_dim, heads=heads, dim_head=dim_head)
                                         for _ in range(2 if attention else 0))

    def forward(self, x, w, t_local, t_mask, noise_mode, noise=None):
        for i, conv in enumerate(self.convs):
            x = conv(x, w, layer_noise(x, noise_mode) if noise is None else noise[i])
            if self.self_attns:
                x = self.cross_attns[i](self.self_attns[i](x, w), t_local, t_mask)
        return x


class Upsampler(nn.Module):
    def __init__(self, cfg: UpsamplerConfig, clip: FrozenCLIPText):
        super().__init__()
        n_up = len(cfg.down_channels) + int(math.log2(cfg.scale))
        if cfg.scale < 2 or cfg.scale & (cfg.scale - 1):
            raise ValueError(f"UpsamplerConfig: scale must be a power of two >= 2, got {cfg.scale}")
        if len(cfg.up_channels) != n_up:
            raise ValueError(f"UpsamplerConfig: {len(cfg.down_channels)} down blocks and scale {cfg.scale} need "
                             f"{n_up} up_channels, got {len(cfg.up_channels)}")
        if cfg.in_resolution % 2 ** len(cfg.down_channels):
            raise ValueError(f"UpsamplerConfig: in_resolution {cfg.in_resolution} must divide by "
                             f"2^{len(cfg.down_channels)}")
        self.config = cfg
        self.in_resolution, self.out_resolution, self.scale = cfg.in_resolution, cfg.out_resolution, cfg.scale
        self.z_dim = cfg.z_dim
        self.text_encoder = TextEncoder(clip, cfg.text)
        self.mapping = MappingNetwork(cfg.z_dim, cfg.text.dim, cfg.w_dim, cfg.mapping_layers, cfg.mapping_lr_multiplier)
        block = dict(num_filters=cfg.num_filters, w_dim=cfg.w_dim, text_dim=cfg.text.dim, dim_head=cfg.attn_dim_head,
                     conv_clamp=cfg.conv_clamp)
        self.from_rgb = EqualizedConv2d(3, cfg.down_channels[0], 1, activation="lrelu")
        self.down, skip_channels, res, cin = nn.ModuleList(), {}, cfg.in_resolution, cfg.down_channels[0]
        for c in cfg.down_channels:
            self.down.append(UNetBlock(cin, c, attention=res in cfg.attn_resolutions, **block))
            skip_channels[res], cin, res = c, c, res // 2
        self.mid = UNetBlock(cin, cfg.mid_channels, attention=res in cfg.attn_resolutions, **block)
        self.up, self.to_rgb, self.up_resolutions, cin = nn.ModuleList(), nn.ModuleList(), [], cfg.mid_channels
        for c in cfg.up_channels:
            res *= 2
            self.up.append(UNetBlock(cin + skip_channels.get(res, 0), c, attention=res in cfg.attn_resolutions,
                                     **block))
            self.to_rgb.append(AdaptiveModConv2d(c, 3, 1, 1, cfg.w_dim, demodulate=False, activation=None))
            self.up_resolutions.append(res)
            cin = c
        self.skip_resolutions = set(skip_channels)

    def _check_images(self, images: torch.Tensor) -> None:
        R = self.in_resolution
        if images.dim() != 4 or images.shape[1:] != (3, R, R):
            raise ValueError(f"Upsampler: images must be [B, 3, {R}, {R}], got {tuple(images.shape)}; "
                             "use upsample_tiled for larger inputs")

    def forward(self, images: torch.Tensor, text: Union[CLIPText, TextFeatures, Sequence[str]],
                z: Optional[torch.Tensor] = None, noise_augment_std: Optional[float] = None,
                noise_mode: str = "random") -> list:
        """images [B, 3, in_res, in_res] in [-1, 1] -> pyramid of up-path images, out_res first.

        noise_augment_std (default: the config's) is the input noise augmentation; noise_mode "none"
        turns off the per-pixel noise of the convolutions, for deterministic output."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        self._check_images(images)
        B = images.shape[0]
        if isinstance(text, str):
            raise TypeError("Upsampler: text must be a list of captions (one per sample), not a single str")
        feats = text if isinstance(text, TextFeatures) else self.text_encoder(text)
        if feats.t_global.shape[0] != B:
            raise ValueError(f"Upsampler: got {feats.t_global.shape[0]} captions for a batch of {B} images")
        if z is None:
            z = torch.randn(B, self.z_dim, device=images.device, dtype=images.dtype)
        w = self.mapping(z, feats.t_global).to(images.dtype)
        std = self.config.noise_augment_std if noise_augment_std is None else noise_augment_std
        x = images + std * torch.randn_like(images) if std > 0 else images
        return self._unet(images, x, w, feats.t_local.to(images.dtype), feats.mask, noise_mode, None)

    # -- the tensor-only entry: encode (text tower and mapping, once per caption) and synthesize_from (per tile)
    def encode(self, z: torch.Tensor, tokens: torch.Tensor) -> tuple:
        """(w [B, w_dim], t_local [B, L, dim], t_mask [B, L]) for z [B, z_dim] and CLIP token ids [B, L] int64."""
        feats = self.text_encoder(self.text_encoder.clip(tokens))
        if feats.t_global.shape[0] != z.shape[0]:
            raise ValueError(f"Upsampler.encode: tokens has {feats.t_global.shape[0]} rows for a batch of "
                             f"{z.shape[0]} latents; pass one row of token ids per sample")
        return self.mapping(z, feats.t_global), feats.t_local, feats.mask

    def noise_shapes(self, batch_size: int) -> list:
        """The shape of each noisy layer's noise, in the order `noise` lists them (down, mid, up blocks)."""
        R, shapes = self.in_resolution, []
        for i, block in enumerate(self.down):
            shapes += [(batch_size, 1, R >> i, R >> i)] * len(block.convs)
        shapes += [(batch_size, 1, R >> len(self.down), R >> len(self.down))] * len(self.mid.convs)
        for block, res in zip(self.up, self.up_resolutions):
            shapes += [(batch_size, 1, res, res)] * len(block.convs)
        return shapes

    def synthesize_from(self, images: torch.Tensor, w: torch.Tensor, t_local: torch.Tensor, t_mask: torch.Tensor,
                        noise: Optional[Sequence[torch.Tensor]] = None,
                        input_noise: Optional[torch.Tensor] = None) -> list:
        """The U-Net on images [B, 3, in_res, in_res] for encode's (w, t_local, t_mask). input_noise: unit-normal,
        shaped like images, scaled by the config's noise_augment_std (the paper's test-time augmentation), or
        None for none; noise: one unit-normal tensor per noisy layer (noise_shapes), or None for none."""
        self._check_images(images)
        x = images if input_noise is None else images + self.config.noise_augment_std * input_noise.to(images.dtype)
        return self._unet(images, x, w.to(images.dtype), t_local.to(images.dtype), t_mask, "none", noise)

    def synthesize(self, images: torch.Tensor, z: torch.Tensor, tokens: torch.Tensor,
                   noise: Optional[Sequence[torch.Tensor]] = None, input_noise: Optional[torch.Tensor] = None) -> list:
        """The tensor-only entry: encode then synthesize_from. It draws no random numbers and takes no strings."""
        w, t_local, t_mask = self.encode(z, tokens)
        return self.synthesize_from(images, w, t_local, t_mask, noise, input_noise)

    def _unet(self, images, x, w, t_local, t_mask, noise_mode, noise) -> list:
        R = self.in_resolution
        if noise is not None:
            shapes = self.noise_shapes(images.shape[0])
            if len(noise) != len(shapes):
                raise ValueError(f"Upsampler: noise needs one tensor per noisy layer ({len(shapes)}), got {len(noise)}")
        layer = 0

        def take(block):           # this block's per-layer noise, or None
            nonlocal layer
            if noise is None:
                return None
            layer += len(block.convs)
            return noise[layer - len(block.convs):layer]
        x = self.from_rgb(x)
        skips = {}
        for block in self.down:
            x = block(x, w, t_local, t_mask, noise_mode, take(block))
            skips[x.shape[-1]] = x
            x = downsample2x(x)
        x = self.mid(x, w, t_local, t_mask, noise_mode, take(self.mid))
        rgb, pyramid = None, []
        for block, to_rgb, res in zip(self.up, self.to_rgb, self.up_resolutions):
            x = upsample2x(x)
            if res in skips:
                x = torch.cat([x, skips[res]], dim=1)
            x = block(x, w, t_local, t_mask, noise_mode, take(block))
            y = to_rgb(x, w)
            rgb = y if rgb is None else upsample2x(rgb) + y
            pyramid.append(rgb + F.interpolate(images, size=(res, res), mode="bilinear", align_corners=False,
                                               antialias=res < R))
        return pyramid[::-1]


def _blend_window(size: int, overlap: int, device, dtype) -> torch.Tensor:
    """A separable weight that ramps linearly over the overlap, so overlapping tiles cross-fade."""
    ramp = torch.ones(size, device=device, dtype=dtype)
    if overlap > 0:
        edge = torch.linspace(0, 1, overlap + 2, device=device, dtype=dtype)[1:-1]
        ramp[:overlap] = edge
        ramp[-overlap:] = edge.flip(0)
    return ramp[:, None] * ramp[None, :]


def tile_starts(length: int, tile: int, stride: int) -> list:
    starts = list(range(0, max(length - tile, 0) + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def blend_tiles(apply_tile: Callable[[int, int], torch.Tensor], size: tuple, tile: int, scale: int,
                overlap: int, like: torch.Tensor) -> torch.Tensor:
    """The [B, C, H * scale, W * scale] image made of apply_tile(top, left) (the upscaled input tile whose corner
    is (top, left)), over tiles of `tile` px that overlap by `overlap` px, cross-faded with linear ramps."""
    B, C, H, W = size
    out = torch.zeros(B, C, H * scale, W * scale, device=like.device, dtype=like.dtype)
    weight = torch.zeros(1, 1, H * scale, W * scale, device=like.device, dtype=like.dtype)
    window = _blend_window(tile * scale, overlap * scale, like.device, like.dtype)
    for top in tile_starts(H, tile, tile - overlap):
        for left in tile_starts(W, tile, tile - overlap):
            out[:, :, top * scale:(top + tile) * scale, left * scale:(left + tile) * scale] += \
                apply_tile(top, left) * window
            weight[:, :, top * scale:(top + tile) * scale, left * scale:(left + tile) * scale] += window
    return out / weight


def check_tiling(upsampler: Upsampler, images: torch.Tensor, overlap: Optional[int]) -> int:
    """The overlap to use (default in_resolution / 4), after checking images and overlap."""
    R = upsampler.in_resolution
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] < R or images.shape[3] < R:
        raise ValueError(f"upsample_tiled: images must be [B, 3, H, W] with H, W >= {R}, got {tuple(images.shape)}")
    overlap = R // 4 if overlap is None else overlap
    if not 0 <= overlap < R:
        raise ValueError(f"upsample_tiled: overlap must be in [0, {R}), got {overlap}")
    return overlap


@torch.no_grad()
def upsample_tiled(upsampler: Upsampler, images: torch.Tensor, text: Union[CLIPText, TextFeatures, Sequence[str]],
                   z: Optional[torch.Tensor] = None, overlap: Optional[int] = None,
                   noise_augment_std: Optional[float] = None, noise_mode: str = "random") -> torch.Tensor:
    """Upsample images of any size >= in_resolution by `scale`, in overlapping tiles of in_resolution.

    Every tile uses the same z and caption; overlaps are cross-faded with linear ramps. Re-applying
    the result (with a larger input) is how the paper goes past 1K.
    """
    R, s = upsampler.in_resolution, upsampler.scale
    overlap = check_tiling(upsampler, images, overlap)
    feats = text if isinstance(text, TextFeatures) else upsampler.text_encoder(text)
    if z is None:
        z = torch.randn(images.shape[0], upsampler.z_dim, device=images.device, dtype=images.dtype)
    return blend_tiles(lambda top, left: upsampler(images[:, :, top:top + R, left:left + R], feats, z,
                                                   noise_augment_std, noise_mode)[0],
                       tuple(images.shape), R, s, overlap, images)
