"""Differentiable augmentation of D's inputs (DiffAugment, Zhao et al. 2020): horizontal flips, translations
and cutout, applied to real and generated images alike in both phases, so D never sees an image the
generator cannot also be judged on. Off by default (`gigagan train --augment flip,translation,cutout`).

D takes an image pyramid; each sample's transform is drawn once and applied to every level at that level's
scale (a shift of 1/8 of the image is 4 px at 32 px and 1 px at 8 px), so the levels stay one image.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

POLICIES = ("flip", "translation", "cutout")
TRANSLATION = 0.125          # at most 1/8 of the image each way (DiffAugment's default)
CUTOUT = 0.5                 # a square of half the image side, zeroed


def parse_policy(text: str) -> tuple:
    """'flip,translation' -> ("flip", "translation"); '' -> ()."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"augment: unknown {unknown}; choose from {POLICIES}")
    return names


def draw(batch: int, policy: Sequence[str], device, generator=None) -> dict:
    """One transform per sample: flip flags, translations (fractions of the side) and cutout centres."""
    params = {}
    if "flip" in policy:
        params["flip"] = torch.rand(batch, device=device, generator=generator) < 0.5
    if "translation" in policy:
        params["shift"] = (torch.rand(batch, 2, device=device, generator=generator) * 2 - 1) * TRANSLATION
    if "cutout" in policy:
        params["centre"] = torch.rand(batch, 2, device=device, generator=generator)
    return params


def apply(x: torch.Tensor, params: dict) -> torch.Tensor:
    """One pyramid level [B, C, R, R] under the drawn transforms; differentiable in x."""
    B, _, H, W = x.shape
    if "flip" in params:
        x = torch.where(params["flip"][:, None, None, None], x.flip(-1), x)
    if "shift" in params:
        # Whole-pixel shifts at this level, zeros shifted in: a nearest-neighbour resample on an integer grid.
        shift = torch.round(params["shift"] * torch.tensor([W, H], device=x.device)).to(x.dtype)   # [B, 2] px
        ys = torch.arange(H, device=x.device, dtype=x.dtype)
        xs = torch.arange(W, device=x.device, dtype=x.dtype)
        src_x = xs[None, None, :] - shift[:, 0, None, None]                                       # [B, 1, W]
        src_y = ys[None, :, None] - shift[:, 1, None, None]                                       # [B, H, 1]
        grid = torch.stack([((2 * src_x + 1) / W - 1).expand(B, H, W), ((2 * src_y + 1) / H - 1).expand(B, H, W)],
                           dim=-1)
        x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if "centre" in params:
        half_w, half_h = CUTOUT * W / 2, CUTOUT * H / 2
        cx = params["centre"][:, 0, None, None] * W
        cy = params["centre"][:, 1, None, None] * H
        xs = torch.arange(W, device=x.device, dtype=x.dtype)[None, None, :] + 0.5
        ys = torch.arange(H, device=x.device, dtype=x.dtype)[None, :, None] + 0.5
        keep = ((xs - cx).abs() >= half_w) | ((ys - cy).abs() >= half_h)                          # [B, H, W]
        x = x * keep[:, None].to(x.dtype)
    return x


def augment_pyramid(levels: Sequence[torch.Tensor], policy: Sequence[str], generator=None) -> list:
    """The same per-sample transform on every level of a pyramid (level 0 the full resolution)."""
    if not policy:
        return list(levels)
    params = draw(levels[0].shape[0], policy, levels[0].device, generator)
    return [apply(x, params) for x in levels]
