"""Latent-space tools (paper Figs. 6-8, docs/design.md §6-7): truncation, style mixing, prompt interpolation
and mixing.

Every function takes a Generator and returns its image pyramid's level 0 ([B, 3, R, R] in about [-1, 1])
unless noted. ``crossover`` is the first block that takes B's input: blocks [0, crossover) are the
coarse ones (4 px up), [crossover, num_ws) the fine ones.
"""
from __future__ import annotations

from typing import Sequence

import torch

# Truncation lives beside MappingNetwork, whose w_avg it uses (the generator truncates too); still importable here.
from .generator import Generator, conditional_w_mean, truncate


def _check_crossover(G: Generator, crossover: int) -> None:
    if not 0 <= crossover <= G.num_ws:
        raise ValueError(f"crossover must be in [0, {G.num_ws}] (the generator has {G.num_ws} blocks), got {crossover}")


@torch.no_grad()
def style_mix(G: Generator, z_a: torch.Tensor, z_b: torch.Tensor, captions: Sequence[str], crossover: int,
              truncation_psi: float = 1.0, noise_mode: str = "none") -> torch.Tensor:
    """Coarse blocks take w of sample A, fine blocks w of sample B; both under the same captions."""
    _check_crossover(G, crossover)
    feats = G.encode_text(list(captions))
    w_a, w_b = (G.mapping(z, feats.t_global) for z in (z_a, z_b))
    if truncation_psi != 1.0:
        w_c = conditional_w_mean(G.mapping, feats.t_global)
        w_a, w_b = (truncate(w, G.mapping.w_avg, w_c, truncation_psi) for w in (w_a, w_b))
    ws = torch.stack([w_a if i < crossover else w_b for i in range(G.num_ws)], dim=1)
    return G.synthesis(ws, feats.t_local, feats.mask, noise_mode=noise_mode)[0]


@torch.no_grad()
def prompt_interpolation(G: Generator, z: torch.Tensor, prompt_a: str, prompt_b: str, steps: int,
                         truncation_psi: float = 1.0, noise_mode: str = "none") -> torch.Tensor:
    """For one z [1, z_dim], interpolate t_local, t_global and w linearly from prompt A to prompt B.

    Returns [steps, 3, R, R]. Both prompts are tokenised to the same length, so t_local lerps token-wise;
    in between, tokens of either prompt are attended, and the end points are exactly prompt A and B.
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    if z.shape[0] != 1:
        raise ValueError(f"z must be a single latent [1, z_dim], got {tuple(z.shape)}")
    feats = G.encode_text([prompt_a, prompt_b])
    alphas = torch.linspace(0, 1, steps, device=z.device, dtype=feats.t_local.dtype)
    t_local = torch.stack([torch.lerp(feats.t_local[0], feats.t_local[1], a) for a in alphas])
    t_global = torch.stack([torch.lerp(feats.t_global[0], feats.t_global[1], a) for a in alphas])
    mask = (feats.mask[0] | feats.mask[1])[None].repeat(steps, 1)
    mask[0], mask[-1] = feats.mask[0], feats.mask[1]
    zs = z.expand(steps, -1)
    w = G.mapping(zs, t_global)
    if truncation_psi != 1.0:
        w = truncate(w, G.mapping.w_avg, conditional_w_mean(G.mapping, t_global), truncation_psi)
    return G.synthesis(w, t_local, mask, noise_mode=noise_mode)[0]


@torch.no_grad()
def prompt_mix(G: Generator, z: torch.Tensor, prompts_a: Sequence[str], prompts_b: Sequence[str], crossover: int,
               truncation_psi: float = 1.0, noise_mode: str = "none") -> torch.Tensor:
    """Coarse blocks use prompt A's w and t_local (layout); fine blocks prompt B's (texture, style)."""
    _check_crossover(G, crossover)
    if len(prompts_a) != len(prompts_b) or len(prompts_a) != z.shape[0]:
        raise ValueError(f"prompts_a ({len(prompts_a)}), prompts_b ({len(prompts_b)}) and z ({z.shape[0]}) "
                         "must have the same length")
    feats_a, feats_b = G.encode_text(list(prompts_a)), G.encode_text(list(prompts_b))
    w_a, w_b = G.mapping(z, feats_a.t_global), G.mapping(z, feats_b.t_global)
    if truncation_psi != 1.0:
        w_a = truncate(w_a, G.mapping.w_avg, conditional_w_mean(G.mapping, feats_a.t_global), truncation_psi)
        w_b = truncate(w_b, G.mapping.w_avg, conditional_w_mean(G.mapping, feats_b.t_global), truncation_psi)
    coarse = [i < crossover for i in range(G.num_ws)]
    ws = torch.stack([w_a if c else w_b for c in coarse], dim=1)
    t_local = [feats_a.t_local if c else feats_b.t_local for c in coarse]
    masks = [feats_a.mask if c else feats_b.mask for c in coarse]
    return G.synthesis(ws, t_local, masks, noise_mode=noise_mode)[0]
