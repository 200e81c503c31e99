"""GigaGAN's losses (paper §3.3-3.4, eqs. 6-9; docs/design.md §6).

All adversarial terms are non-saturating logistic losses, summed with equal weight over every MS-I/O
prediction (i, j); each prediction is a patch logit map, averaged over its positions and the batch.

Matching-aware loss (eq. 8): with a mismatched caption c' (the batch rolled by one), a real image
and a generated image both count as fake for D, and G is pushed to make D(G(c), c') low.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .discriminator import Discriminator
from .text import CLIPText


def _sum_logits(logits: Sequence[torch.Tensor], sign: float) -> torch.Tensor:
    """sum_ij mean softplus(sign * D_ij): sign -1 scores "real", +1 scores "fake"."""
    return sum(F.softplus(sign * lg.float()).mean() for lg in logits)


def generator_loss(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Non-saturating: -log sigmoid(D(G(c), c)) over every prediction."""
    return _sum_logits(fake_logits, -1.0)


def discriminator_loss(real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    return _sum_logits(real_logits, -1.0) + _sum_logits(fake_logits, 1.0)


def mismatched(text: CLIPText, shift: int = 1) -> CLIPText:
    """Captions rolled along the batch, so sample b is paired with sample b+shift's caption."""
    idx = torch.roll(torch.arange(len(text), device=text.features.device), shifts=shift)
    return text.index(idx)


def matching_aware_d_loss(real_mismatched_logits, fake_mismatched_logits) -> torch.Tensor:
    """Real images under wrong captions and generated images under wrong captions are both fake for D."""
    return _sum_logits(real_mismatched_logits, 1.0) + _sum_logits(fake_mismatched_logits, 1.0)


def matching_aware_g_loss(fake_mismatched_logits) -> torch.Tensor:
    """G lowers D(G(c), c'): its images should not pass for a caption they were not made from."""
    return _sum_logits(fake_mismatched_logits, 1.0)


def r1_score(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """What R1 differentiates: per image, the sum over predictions of each patch map's mean (the same
    reduction as the losses), summed over the batch so each image's gradient is its own."""
    return sum(lg.float().mean(dim=(1, 2, 3)).sum() for lg in logits)


def r1_from_logits(real_logits: Sequence[torch.Tensor], reals: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma/2 * E ||grad_x sum_ij mean D_ij(x)||^2, for logits already computed from `reals` (which
    must require grad), with create_graph so it backpropagates into D (double backward through the ops)."""
    (grad,) = torch.autograd.grad(r1_score(real_logits), reals, create_graph=True)
    return 0.5 * gamma * grad.float().square().sum(dim=(1, 2, 3)).mean()


def r1_penalty(D: Discriminator, reals: torch.Tensor, text, gamma: float) -> torch.Tensor:
    """R1 on real images: one D forward, then r1_from_logits."""
    reals = reals.detach().requires_grad_(True)
    return r1_from_logits(D(reals, text), reals, gamma)


def clip_contrastive_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
                          logit_scale: float = 100.0, gather: bool = True) -> torch.Tensor:
    """InfoNCE between CLIP embeddings of G(c) and of the captions (eq. 9), with the text side gathered
    across ranks so each image is contrasted with every caption of the global batch."""
    img = F.normalize(image_embeddings.float(), dim=-1)
    txt = F.normalize(text_embeddings.float(), dim=-1)
    offset = 0
    if gather and torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        parts = [torch.empty_like(txt) for _ in range(world)]
        torch.distributed.all_gather(parts, txt.detach())
        parts[rank] = txt                        # keep the local slice differentiable
        txt, offset = torch.cat(parts), rank * img.shape[0]
    logits = logit_scale * img @ txt.t()
    target = torch.arange(img.shape[0], device=img.device) + offset
    return F.cross_entropy(logits, target)


def perceptual_loss(features_fn, fake: torch.Tensor, real: torch.Tensor,
                    weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """LPIPS-style distance: per-layer channel-normalised features, squared difference, averaged.

    features_fn(x) returns a list of [B, C, H, W] feature maps (e.g. a frozen network's stages)."""
    total = 0.0
    fake_feats, real_feats = features_fn(fake), features_fn(real)
    weights = weights or [1.0] * len(fake_feats)
    for w, a, b in zip(weights, fake_feats, real_feats):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        total = total + w * (a - b).square().sum(dim=1).mean()
    return total
