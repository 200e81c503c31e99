"""Metrics during training, as StyleGAN3's --metrics: the FID of the EMA generator against the real images of
--fid-real, and the CLIP score of its images and their prompts when --metrics-clip-weights is given, every
--fid-every steps and after the last step. Each measurement is one log.jsonl record

    {"step", "fid", "num_real", "num_fake", "clip_score" (with CLIP weights), "metric_seconds", "time"}

which TensorBoard gets too and which the model card reads (the newest of each metric, at gigagan export).

The generated images are the same every measurement (image i: z from seed cfg.seed + 2 + i, the prompt of real
image i mod the captioned ones), so measurements compare. Under torchrun every rank takes its share (images i
with i % world == rank, of both sets) and the feature sums are added over the ranks (all_reduce): every rank
gets the same FID, rank 0 writes it. The real set's sums are computed once per fit, at the first measurement.
The feature extractor comes from gigagan.evaluation (the tests replace it with a small one).
"""
from __future__ import annotations

import os
import time
from typing import Optional

import torch
import torch.distributed as dist

from .. import evaluation as ev
from ..data import fixed_prompts

BATCH = 16                         # images per generator and Inception call: small next to a training step's memory
FID_RESOLUTION = 299               # Inception's input, as gigagan eval's default: the two commands' FIDs compare


def _caption(image_path: str) -> Optional[str]:
    sidecar = os.path.splitext(image_path)[0] + ".txt"
    try:
        with open(sidecar, encoding="utf-8") as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


class TrainingMetrics:
    """The measurements of one run (none when cfg.metrics is empty). Built before training, so that a bad
    folder or weights file fails before the first step; measure() is called on every rank."""

    def __init__(self, cfg, rank: int, world: int, device, log, z_dim: int, feature=None):
        self.cfg, self.rank, self.world, self.device, self.log = cfg, rank, world, device, log
        self.enabled = bool(cfg.metrics)
        if not self.enabled:
            return
        self.real_paths = ev.image_files(cfg.fid_real, "--fid-real")
        self.num_fake = cfg.fid_images or len(self.real_paths)
        if cfg.unconditional:
            self.prompts = [""]
        else:
            self.prompts = [c for c in map(_caption, self.real_paths) if c is not None]
            if not self.prompts and cfg.data == "builtin":
                self.prompts = fixed_prompts(min(self.num_fake, 64))   # the shapes' own captions
            if not self.prompts:
                raise ev.EvaluationError(f"--fid-real {cfg.fid_real}: none of its images has a .txt caption, which "
                                         "the generated images of a text-conditioned run need as prompts (as --data "
                                         "folders have them)")
        # feature: any module from [B, 3, 299, 299] uint8 images to [B, F] features (the tests' small ones).
        self.feature = (feature or ev.inception_features(cfg.inception_weights)).to(device).eval()
        self.clip = (ev.load_clip(cfg.metrics_clip_model, cfg.metrics_clip_weights, device)
                     if cfg.metrics_clip_weights else None)
        self.z_dim = z_dim
        self.real_stats, self.num_features, self.warned = None, None, False

    def due(self, step: int) -> bool:
        """Whether to measure after `step` (the loop also measures after a fit's last step)."""
        return self.enabled and step % self.cfg.fid_every == 0

    def _stats(self) -> ev.FeatureStats:
        if self.num_features is None:                     # the extractor's width, from one image
            self.num_features = self._features(torch.zeros(1, 3, 8, 8)).shape[-1]
        return ev.FeatureStats(self.num_features, self.device)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature(ev.to_uint8(images.to(self.device), FID_RESOLUTION))

    def _real(self) -> ev.FeatureStats:
        stats = self._stats()
        mine = self.real_paths[self.rank::self.world]
        skipped = []
        for images, _ in ev.load_images(mine, BATCH, FID_RESOLUTION, skipped):
            stats.add(self._features(images))
        if skipped:
            self.log(f"--fid-real: skipped {len(skipped)} unreadable images on rank {self.rank} (first: {skipped[0]})")
        stats.reduce()
        return stats

    @torch.no_grad()
    def measure(self, G_ema, step: int) -> dict:
        """The log record of one measurement of G_ema (every rank calls it; every rank gets the record)."""
        t0 = time.perf_counter()
        if self.real_stats is None:
            self.real_stats = self._real()
        fake = self._stats()
        clip_sum = torch.zeros(2, dtype=torch.float64, device=self.device)       # sum of scores, count
        mine = list(range(self.rank, self.num_fake, self.world))
        was_training = G_ema.training
        G_ema.eval()
        try:
            for i in range(0, len(mine), BATCH):
                index = mine[i:i + BATCH]
                z = torch.stack([torch.randn(self.z_dim, generator=torch.Generator().manual_seed(self.cfg.seed + 2 + j))
                                 for j in index]).to(self.device)
                prompts = [self.prompts[j % len(self.prompts)] for j in index]
                images = G_ema(z, prompts, noise_mode="none")[0].float().clamp(-1, 1)
                fake.add(self._features(images))
                if self.clip is not None:
                    model, tokenizer = self.clip
                    size = model.visual.image_size
                    size = size[0] if isinstance(size, (tuple, list)) else size
                    score = ev.clip_score([(images, prompts)], model.encode_image,
                                          lambda texts: model.encode_text(tokenizer(texts).to(self.device)), size,
                                          self.device)
                    clip_sum += torch.tensor([score * len(index), len(index)], dtype=torch.float64,
                                             device=self.device)
        finally:
            G_ema.train(was_training)
        fake.reduce()
        record = {"step": step, "fid": ev.fid_from_stats(self.real_stats, fake),
                  "num_real": int(self.real_stats.count.item()), "num_fake": int(fake.count.item())}
        if self.clip is not None:
            if self.world > 1:
                dist.all_reduce(clip_sum)
            record["clip_score"] = float(clip_sum[0] / clip_sum[1])
        warning = ev.bias_warning(record["num_real"], record["num_fake"])
        if warning and not self.warned:
            self.warned = True                                # once per fit: every measurement has the same sizes
            self.log(f"--metrics: warning: {warning}")
        record["metric_seconds"] = time.perf_counter() - t0
        record["time"] = time.time()
        self.log(f"--metrics: step {step}: FID {record['fid']:.3f}"
                 + (f", CLIP score {record['clip_score']:.2f}" if "clip_score" in record else "")
                 + f" ({record['num_fake']} generated against {record['num_real']} real images, "
                 f"{record['metric_seconds']:.1f} s)")
        return record
