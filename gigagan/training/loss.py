"""The GAN objectives as objects with one entry, accumulate_gradients(phase, batch) (after StyleGAN3's loss.py):
one micro-batch of one phase, forward, loss and backward.

- "D": G (no grad) makes fakes; D scores [real, fake] under the true captions and, matching-aware, under
  mismatched ones, in one batch (its trunk runs once on the images); on R1 steps the lazy R1 penalty on
  the real part joins the same backward, scaled by the interval; the vision-aided head joins D.
- "G": D (frozen) scores G(z, c) under c (and c'); the CLIP contrastive and vision-aided terms, and for the
  upsampler the perceptual distance to the real image, join G's loss.

Every term comes back as a 0-d tensor: nothing here waits for the device.
"""
from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..augment import augment_pyramid
from ..losses import (clip_contrastive_loss, discriminator_loss, generator_loss, matching_aware_d_loss,
                      matching_aware_g_loss, mismatched, perceptual_loss, r1_from_logits)
from ..text import CLIPText
from .distributed import maybe_no_sync

PHASES = ("D", "G")


@dataclass
class MicroBatch:
    real: torch.Tensor                      # images in [-1, 1] at D's resolution
    text: CLIPText                          # the frozen text tower's outputs for the captions
    wrong: Optional[CLIPText] = None        # the same under mismatched captions (matching-aware), or None
    text_emb: Optional[torch.Tensor] = None  # the guidance CLIP's caption embeddings, or None


class CaptionPool:
    """Mismatched captions for the matching-aware loss: the batch rolled by one where that gives every sample
    a different caption, else, per sample, another caption of the batch or of the recent ones seen."""

    def __init__(self, clip, log=print, size: int = 256):
        self.clip, self.log = clip, log
        self.recent = collections.deque(maxlen=size)
        self._warned = False

    def mismatched(self, text: CLIPText, captions: list) -> Optional[CLIPText]:
        """Each sample's text under another caption; None when there is none yet (the matching-aware terms
        are then left out of this step)."""
        rolled = captions[-1:] + captions[:-1]
        if all(r != c for r, c in zip(rolled, captions)):
            return mismatched(text)
        picks = []
        for own, other in zip(captions, rolled):
            if other == own:
                candidates = [p for p in dict.fromkeys(list(captions) + list(self.recent)) if p != own]
                if not candidates:
                    if not self._warned:
                        self.log("warning: no caption different from the batch's own yet (a batch of one, or one "
                                 "caption repeated); the matching-aware terms wait for one")
                        self._warned = True
                    return None
                other = random.choice(candidates)
            picks.append(other)
        return self.clip.encode(picks)

    def remember(self, captions: list) -> None:
        for caption in captions:
            if caption in self.recent:
                self.recent.remove(caption)
            self.recent.append(caption)


class GigaGANLoss:
    """The base generator's objective: non-saturating GAN loss over D's multi-scale outputs, matching-aware
    terms, lazy R1, and optionally the CLIP contrastive and vision-aided terms.

    G, D: the networks; G_ddp, D_ddp, vision_head_ddp: the same under DDP (or themselves); backward: the
    trainer's (it applies the fp16 loss scale); autocast: the precision context of the forward passes."""

    def __init__(self, *, G, D, G_ddp, D_ddp, cfg, augment_policy, autocast, backward: Callable,
                 guidance=None, vision_head=None, vision_head_ddp=None):
        self.G, self.D, self.G_ddp, self.D_ddp = G, D, G_ddp, D_ddp
        self.cfg, self.augment_policy, self.autocast, self.backward = cfg, augment_policy, autocast, backward
        self.guidance, self.vision_head, self.vision_head_ddp = guidance, vision_head, vision_head_ddp
        self.separate_r1 = False

    def compile(self, backend) -> None:
        """G and D under torch.compile, in place, with static shapes. The lazy-R1 term then takes a pass of its own,
        eager (StyleGAN2's "Dreg" phase): R1 differentiates a gradient, and AOTAutograd has no double backward."""
        self.separate_r1 = True
        for net in (self.G, self.D):
            net.compile(backend=backend, dynamic=False)

    def generate(self, G, real: torch.Tensor, text: CLIPText, z: torch.Tensor, update_w_avg: bool = False) -> list:
        """G's image pyramid, as many levels as D takes."""
        pyramid = G(z, text, update_w_avg=True) if update_w_avg else G(z, text)
        return pyramid[:self.D.num_levels]

    def accumulate_gradients(self, phase: str, batch: MicroBatch, *, sync: bool = True, r1: bool = False,
                             scale: float = 1.0) -> tuple:
        """Forward and backward of one micro-batch of one phase; gradients of loss * scale add up in the phase's
        parameters (sync=False: DDP's all-reduce waits for the last micro-batch). Returns the total loss and its
        logged terms, as detached 0-d tensors."""
        if phase == "D":
            return self._discriminator_phase(batch, sync, r1, scale)
        if phase == "G":
            return self._generator_phase(batch, sync, scale)
        raise ValueError(f"accumulate_gradients: phase must be one of {PHASES}, got {phase!r}")

    def _discriminator_phase(self, batch: MicroBatch, sync: bool, do_r1: bool, scale: float) -> tuple:
        cfg, real, text, wrong = self.cfg, batch.real, batch.text, batch.wrong
        B = real.shape[0]
        stats = {}
        z = torch.randn(B, self.G.z_dim, device=real.device)
        with torch.no_grad(), self.autocast:
            fake = [f.float() for f in self.generate(self.G, real, text, z)]
        r1_here = do_r1 and not self.separate_r1
        with maybe_no_sync(self.D_ddp, not sync), self.autocast:
            real_in = real.detach().requires_grad_(r1_here)
            real_pyramid = self.D.check_pyramid(real_in)
            pyramid = augment_pyramid([torch.cat([r, f]) for r, f in zip(real_pyramid, fake)], self.augment_policy)
            texts = [text, text] + ([wrong] * 2 if wrong is not None else [])
            logits = self.D_ddp(pyramid, CLIPText.cat(texts), captions_per_image=len(texts) // 2, parts=2)
            split = [lg.split(B) for lg in logits]
            loss = discriminator_loss([s[0] for s in split], [s[1] for s in split])
            if wrong is not None:
                loss = loss + matching_aware_d_loss([s[2] for s in split], [s[3] for s in split])
            stats["loss_d"] = loss.detach()
            if self.vision_head is not None:
                with torch.no_grad():                           # frozen CLIP features of real and fake
                    feats = self.guidance.encode_image(torch.cat([real, fake[0]]))
                va_real, va_fake = self.vision_head_ddp(feats, torch.cat([batch.text_emb, batch.text_emb])).split(B)
                va = F.softplus(-va_real).mean() + F.softplus(va_fake).mean()
                stats["vision_aided_d"] = va.detach()
                loss = loss + cfg.vision_aided_weight * va
            if r1_here:
                r1 = r1_from_logits([s[0] for s in split], real_in, cfg.r1_gamma)
                stats["r1"] = r1.detach()
                loss = loss + r1 * cfg.r1_interval                # lazy regularisation
            self.backward(loss * scale)
        if do_r1 and not r1_here:
            with self.autocast:                                   # D's eager forward: its compiled call is bypassed
                real_in = real.detach().requires_grad_(True)
                pyramid = augment_pyramid(self.D.check_pyramid(real_in), self.augment_policy)
                r1 = r1_from_logits(self.D.forward(pyramid, text), real_in, cfg.r1_gamma)
                stats["r1"] = r1.detach()
                self.backward(r1 * cfg.r1_interval * scale)
            loss = loss + r1.detach() * cfg.r1_interval
        return loss.detach(), stats

    def _generator_phase(self, batch: MicroBatch, sync: bool, scale: float) -> tuple:
        cfg, real, text, wrong = self.cfg, batch.real, batch.text, batch.wrong
        B = real.shape[0]
        stats = {}
        z = torch.randn(B, self.G.z_dim, device=real.device)
        with maybe_no_sync(self.G_ddp, not sync), self.autocast:
            fake = self.generate(self.G_ddp, real, text, z, update_w_avg=True)
            seen = augment_pyramid([f.float() for f in fake], self.augment_policy)
            if wrong is not None:
                split = [lg.split(B) for lg in self.D(seen, CLIPText.cat([text, wrong]), captions_per_image=2)]
                loss = generator_loss([s[0] for s in split]) + matching_aware_g_loss([s[1] for s in split])
            else:
                loss = generator_loss(self.D(seen, text))
            if self.guidance is not None:
                img_emb = self.guidance.encode_image(fake[0])
                if cfg.clip_weight > 0:
                    clip = clip_contrastive_loss(img_emb, batch.text_emb)
                    stats["clip"] = clip.detach()
                    loss = loss + cfg.clip_weight * clip
                if self.vision_head is not None:
                    va = F.softplus(-self.vision_head(img_emb, batch.text_emb)).mean()
                    stats["vision_aided_g"] = va.detach()
                    loss = loss + cfg.vision_aided_weight * va
            loss = loss + self.reconstruction_terms(fake, real, stats)
            stats["loss_g"] = loss.detach()
            self.backward(loss * scale)
        return loss.detach(), stats

    def reconstruction_terms(self, fake: list, real: torch.Tensor, stats: dict):
        """Terms that compare G's output with the real image; the base model has none."""
        return 0.0


class UpsamplerLoss(GigaGANLoss):
    """The text-conditioned upsampler's objective: the same GAN terms on an MS-I/O D at its output resolution,
    G's input the real image downsampled to its input resolution, plus the perceptual distance to the real
    image (weight cfg.perceptual_weight; 10 in the paper)."""

    def __init__(self, *, perceptual=None, **kwargs):
        super().__init__(**kwargs)
        self.perceptual = perceptual

    def low_res(self, images: torch.Tensor) -> torch.Tensor:
        R = self.G.in_resolution
        return F.interpolate(images, size=(R, R), mode="bilinear", align_corners=False, antialias=True)

    def generate(self, G, real, text, z, update_w_avg=False):
        return G(self.low_res(real), text, z)[:self.D.num_levels]

    def reconstruction_terms(self, fake, real, stats):
        if self.perceptual is None:
            return 0.0
        lpips = perceptual_loss(self.perceptual, fake[0].float(), real)
        stats["perceptual"] = lpips.detach()
        return self.cfg.perceptual_weight * lpips
