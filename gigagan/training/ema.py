"""G's exponential moving average, the network that samples and checkpoints export."""
from __future__ import annotations

import copy

import torch


class EMA:
    """A frozen copy of `model` that follows it with a half-life counted in images (StyleGAN2-ADA), ramped up
    early in training to at most `rampup` times the images seen. Buffers (w_avg) are copied as they are."""

    def __init__(self, model: torch.nn.Module, half_life_images: float, rampup: float):
        self.source = model
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.half_life_images, self.rampup = half_life_images, rampup

    def beta(self, step: int, images_this_step: int) -> float:
        """The weight of the average at this step (0-based: the step just taken)."""
        half_life = self.half_life_images
        if self.rampup:
            half_life = min(half_life, (step + 1) * images_this_step * self.rampup)
        return 0.5 ** (images_this_step / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, step: int, images_this_step: int) -> None:
        beta = self.beta(step, images_this_step)
        for p_ema, p in zip(self.model.parameters(), self.source.parameters()):
            if p.requires_grad:
                p_ema.lerp_(p.detach(), 1.0 - beta)
        for b_ema, b in zip(self.model.buffers(), self.source.buffers()):
            b_ema.copy_(b)
