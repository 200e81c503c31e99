"""GigaGAN's generator: text encoder, mapping network M, and the synthesis network with an image pyramid.

    G = Generator(cfg, clip)
    pyramid = G(z, ["a red circle", ...])        # [img_64, img_32, img_16, img_8, img_4], level 0 first
    pyramid = G.synthesize(z, clip.tokenize(["a red circle", ...]))   # the same, tensors only (compile, export)

Each synthesis block upsamples, runs adaptive modulated convolutions (noise, bias and lrelu in the
fused epilogue) and, at the attention resolutions, L2 self-attention with w as an extra token and
cross-attention to t_local after every convolution (paper eq. 5). A to-RGB layer (the op with N=1,
k=1 and no demodulation) adds the block's colour to the upsampled image of the block below,
StyleGAN2's skip architecture, so every level of the pyramid is an image.

w is given per block ([B, num_ws, w_dim], one w per block) and t_local may be given per block, which
is what style mixing and prompt mixing need (gigagan/latent.py).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from gigagan_kernels.nn import AdaptiveModConv2d, CrossAttention, EqualizedLinear, L2SelfAttention

from .config import GeneratorConfig
from .text import CLIPText, FrozenCLIPText, TextEncoder, TextFeatures

NOISE_MODES = ("random", "none")


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def layer_noise(x: torch.Tensor, noise_mode: str):
    """The noise argument of a noisy conv layer: None draws fresh noise inside it, zeros turn it off."""
    if noise_mode == "none":
        return torch.zeros((x.shape[0], 1, x.shape[2], x.shape[3]), device=x.device, dtype=x.dtype)
    return None


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


class MappingNetwork(nn.Module):
    """w = MLP([normalize(z), t_global]), 4 equalised-lr layers with an lr multiplier (StyleGAN2: 0.01).

    Keeps ``w_avg``, the running mean of w over training, for truncation.
    """

    def __init__(self, z_dim: int, text_dim: int, w_dim: int, num_layers: int = 4, lr_multiplier: float = 0.01,
                 w_avg_beta: float = 0.995):
        super().__init__()
        self.z_dim, self.text_dim, self.w_dim, self.w_avg_beta = z_dim, text_dim, w_dim, w_avg_beta
        self.embed_text = EqualizedLinear(text_dim, w_dim)
        dims = [z_dim + w_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(EqualizedLinear(dims[i], dims[i + 1], lr_multiplier=lr_multiplier)
                                    for i in range(num_layers))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, t_global: torch.Tensor, update_w_avg: bool = False) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"MappingNetwork: z must be [B, {self.z_dim}], got {tuple(z.shape)}")
        if t_global.shape != (z.shape[0], self.text_dim):
            raise ValueError(f"MappingNetwork: t_global must be [B, {self.text_dim}] = {(z.shape[0], self.text_dim)}, "
                             f"got {tuple(t_global.shape)}")
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        t = self.embed_text(t_global.to(z.dtype))
        t = t * torch.rsqrt(t.square().mean(dim=1, keepdim=True) + 1e-8)
        x = torch.cat([z, t], dim=1)
        for layer in self.layers:
            x = lrelu(layer(x))
        if update_w_avg and self.training:
            with torch.no_grad():
                self.w_avg.lerp_(x.detach().float().mean(dim=0).to(self.w_avg.dtype), 1.0 - self.w_avg_beta)
        return x


def truncate(w: torch.Tensor, w_mean: torch.Tensor, w_mean_c: torch.Tensor, psi: float) -> torch.Tensor:
    """Text-conditioned truncation: w' = lerp(w_mean_c, lerp(w_mean, w, psi), psi)."""
    return torch.lerp(w_mean_c.to(w.dtype), torch.lerp(w_mean.to(w.dtype).expand_as(w), w, psi), psi)


def truncation_samples(z_dim: int, num_samples: int = 256, seed: int = 0) -> torch.Tensor:
    """The z ~ N(0, I) that conditional_w_mean averages over: the same for every caption and call."""
    return torch.randn(num_samples, z_dim, generator=torch.Generator(device="cpu").manual_seed(seed), device="cpu")


@torch.no_grad()
def conditional_w_mean(mapping: MappingNetwork, t_global: torch.Tensor, num_samples: int = 256,
                       seed: int = 0, z: Optional[torch.Tensor] = None) -> torch.Tensor:
    """w_mean_c: the mean of M(z, t) over z ~ N(0, I), for each caption's t_global [B, dim] -> [B, w_dim].

    z [S, z_dim]: the samples (default: truncation_samples(num_samples, seed)). One batched mapping call with
    no loop over captions, so the batch may be symbolic (torch.export)."""
    if z is None:
        z = truncation_samples(mapping.z_dim, num_samples, seed)
    z = z.to(t_global.device, t_global.dtype)
    B, S = t_global.shape[0], z.shape[0]
    w = mapping(z.repeat(B, 1), t_global.repeat_interleave(S, dim=0))
    return w.reshape(B, S, -1).mean(dim=1)


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, resolution: int, num_convs: int, num_filters: int,
                 w_dim: int, text_dim: int, attention: bool, dim_head: int, conv_clamp: Optional[float]):
        super().__init__()
        self.resolution, self.first = resolution, resolution == 4
        self.convs = nn.ModuleList()
        self.self_attns = nn.ModuleList()
        self.cross_attns = nn.ModuleList()
        for i in range(num_convs):
            cin = in_channels if i == 0 else out_channels
            self.convs.append(AdaptiveModConv2d(cin, out_channels, 3, num_filters, w_dim, activation="lrelu",
                                                clamp=conv_clamp, use_noise=True))
            if attention:
                heads = max(1, out_channels // dim_head)
                self.self_attns.append(L2SelfAttention(out_channels, heads=heads, dim_head=dim_head, style_dim=w_dim))
                self.cross_attns.append(CrossAttention(out_channels, text_dim, heads=heads, dim_head=dim_head))
        self.to_rgb = AdaptiveModConv2d(out_channels, 3, 1, 1, w_dim, demodulate=False, activation=None,
                                        clamp=conv_clamp)

    def forward(self, x, rgb, w, t_local, t_mask, noise_mode, noise=None):
        if not self.first:
            x = upsample2x(x)
        for i, conv in enumerate(self.convs):
            x = conv(x, w, layer_noise(x, noise_mode) if noise is None else noise[i])
            if self.self_attns:
                x = self.self_attns[i](x, w)
                x = self.cross_attns[i](x, t_local, t_mask)
        y = self.to_rgb(x, w)
        rgb = y if rgb is None else upsample2x(rgb) + y
        return x, rgb


class SynthesisNetwork(nn.Module):
    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        n = len(cfg.channels)
        if cfg.resolution != 4 * 2 ** (n - 1):
            raise ValueError(f"GeneratorConfig: resolution {cfg.resolution} needs {int(math.log2(cfg.resolution)) - 1} "
                             f"blocks (4 .. {cfg.resolution} px), but channels has {n} entries")
        for name in ("num_filters", "convs_per_block"):
            if len(getattr(cfg, name)) != n:
                raise ValueError(f"GeneratorConfig: {name} needs one entry per block ({n}), got {getattr(cfg, name)}")
        self.resolution, self.w_dim, self.text_dim = cfg.resolution, cfg.w_dim, cfg.text.dim
        self.const = nn.Parameter(torch.randn(cfg.channels[0], 4, 4))
        self.blocks = nn.ModuleList()
        for i, res in enumerate(cfg.resolutions):
            cin = cfg.channels[max(i - 1, 0)]
            self.blocks.append(SynthesisBlock(cin, cfg.channels[i], res, cfg.convs_per_block[i], cfg.num_filters[i],
                                              cfg.w_dim, cfg.text.dim, res in cfg.attn_resolutions,
                                              cfg.attn_dim_head, cfg.conv_clamp))
        self.num_ws = len(self.blocks)

    def noise_shapes(self, batch_size: int) -> list:
        """The shape of each noisy layer's noise, in the order `noise` lists them: [B, 1, res, res] per conv."""
        return [(batch_size, 1, b.resolution, b.resolution) for b in self.blocks for _ in b.convs]

    def forward(self, ws: torch.Tensor, t_local: Union[torch.Tensor, Sequence[torch.Tensor]],
                t_mask: Union[torch.Tensor, Sequence[torch.Tensor], None] = None,
                noise_mode: str = "random", noise: Optional[Sequence[torch.Tensor]] = None) -> list:
        """ws [B, num_ws, w_dim] (or [B, w_dim] for all blocks); t_local [B, L, text_dim] or one per block.

        noise: unit-normal per-pixel noise for every noisy layer (noise_shapes), which each layer scales by its
        learned strength; given, it replaces noise_mode."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        per_layer = None
        if noise is not None:
            shapes = self.noise_shapes(ws.shape[0])
            if len(noise) != len(shapes):
                raise ValueError(f"SynthesisNetwork: noise needs one tensor per noisy layer ({len(shapes)}), "
                                 f"got {len(noise)}")
            per_layer, start = [], 0
            for block in self.blocks:
                per_layer.append(list(noise[start:start + len(block.convs)]))
                start += len(block.convs)
        if ws.dim() == 2:
            ws = ws[:, None].expand(-1, self.num_ws, -1)
        if ws.dim() != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"SynthesisNetwork: ws must be [B, {self.num_ws}, {self.w_dim}] or [B, {self.w_dim}], "
                             f"got {tuple(ws.shape)}")
        per_block_text = not isinstance(t_local, torch.Tensor)
        texts = list(t_local) if per_block_text else [t_local] * self.num_ws
        masks = list(t_mask) if per_block_text and t_mask is not None else [t_mask] * self.num_ws
        if len(texts) != self.num_ws or len(masks) != self.num_ws:
            raise ValueError(f"SynthesisNetwork: t_local given per block needs {self.num_ws} entries, got {len(texts)}")
        B = ws.shape[0]
        for t in texts:
            if t.dim() != 3 or t.shape[0] != B or t.shape[2] != self.text_dim:
                raise ValueError(f"SynthesisNetwork: t_local must be [B={B}, L, {self.text_dim}], got {tuple(t.shape)}")
        x = self.const.to(ws.dtype)[None].expand(B, -1, -1, -1)
        rgb, pyramid = None, []
        for i, block in enumerate(self.blocks):
            with record_function(f"G.level{block.resolution}px"):
                x, rgb = block(x, rgb, ws[:, i], texts[i], masks[i], noise_mode,
                               None if per_layer is None else per_layer[i])
            pyramid.append(rgb)
        return pyramid[::-1]


class Generator(nn.Module):
    """Text encoder + mapping + synthesis. Returns the image pyramid, the full-resolution image first."""

    def __init__(self, cfg: GeneratorConfig, clip: FrozenCLIPText):
        super().__init__()
        self.config = cfg
        self.text_encoder = TextEncoder(clip, cfg.text)
        self.mapping = MappingNetwork(cfg.z_dim, cfg.text.dim, cfg.w_dim, cfg.mapping_layers, cfg.mapping_lr_multiplier)
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws, self.z_dim, self.resolution = self.synthesis.num_ws, cfg.z_dim, cfg.resolution
        # Truncation's z samples as a buffer (not saved: drawn from a fixed seed), so no entry draws them.
        self.register_buffer("truncation_z", truncation_samples(cfg.z_dim).to(torch.get_default_device()),
                             persistent=False)

    def encode_text(self, text: Union[CLIPText, Sequence[str], str]) -> TextFeatures:
        return self.text_encoder(text)

    def tokenize(self, captions: Union[Sequence[str], str]) -> torch.Tensor:
        """The CLIP tokenizer's int64 ids [B, context_length], what synthesize takes."""
        return self.text_encoder.clip.tokenize(captions)

    def noise_shapes(self, batch_size: int) -> list:
        return self.synthesis.noise_shapes(batch_size)

    def synthesize(self, z: torch.Tensor, tokens: torch.Tensor, noise: Optional[Sequence[torch.Tensor]] = None,
                   truncation: float = 1.0) -> list:
        """The tensor-only entry: z [B, z_dim] and CLIP token ids [B, L] (int64, from tokenize) -> the image
        pyramid, level 0 first. noise: one unit-normal tensor per noisy layer (noise_shapes), or None for no
        per-pixel noise. It draws no random numbers and takes no strings, so torch.compile and torch.export
        trace it whole and a compiled call is reproducible from its inputs."""
        feats = self.text_encoder(self.text_encoder.clip(tokens))
        if feats.t_global.shape[0] != z.shape[0]:
            raise ValueError(f"Generator.synthesize: tokens has {feats.t_global.shape[0]} rows for a batch of "
                             f"{z.shape[0]} latents; pass one row of token ids per sample")
        w = self.mapping(z, feats.t_global)
        if truncation != 1.0:
            w_mean_c = conditional_w_mean(self.mapping, feats.t_global, z=self.truncation_z)
            w = truncate(w, self.mapping.w_avg, w_mean_c, truncation)
        return self.synthesis(w, feats.t_local, feats.mask, noise_mode="none", noise=noise)

    def forward(self, z: torch.Tensor, text: Union[CLIPText, TextFeatures, Sequence[str]],
                truncation_psi: float = 1.0, noise_mode: str = "random", update_w_avg: bool = False) -> list:
        if isinstance(text, str):
            raise TypeError("Generator: text must be a list of captions (one per sample), not a single str")
        with record_function("G.text_encoder"):
            feats = text if isinstance(text, TextFeatures) else self.encode_text(text)
        if feats.t_global.shape[0] != z.shape[0]:
            raise ValueError(f"Generator: got {feats.t_global.shape[0]} captions for a batch of {z.shape[0]} latents; "
                             "pass one caption per sample")
        with record_function("G.mapping"):
            w = self.mapping(z, feats.t_global, update_w_avg=update_w_avg)
        if truncation_psi != 1.0:
            w_mean_c = conditional_w_mean(self.mapping, feats.t_global, z=self.truncation_z)
            w = truncate(w, self.mapping.w_avg, w_mean_c, truncation_psi)
        return self.synthesis(w, feats.t_local, feats.mask, noise_mode=noise_mode)
