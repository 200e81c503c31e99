"""TrainConfig: every setting of a training run, with its default, range and command-line flag stated once
(`gigagan train` is generated from the field metadata)."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Optional

from gigagan_kernels.backend import IMPLS

from ..augment import POLICIES, parse_policy
from ..config import PRESETS, apply_overrides, get_preset
from ..entry import COMPILE_CHOICES
from ..evaluation import INCEPTION_HELP
from .errors import ConfigError

MODELS = ("base", "upsampler")
METRICS = ("", "fid")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def _option(default, help: str, *, flag: Optional[str] = None, choices: Optional[tuple] = None,
            nargs: Optional[str] = None, const=None):
    """A TrainConfig field with what its command-line flag needs: the help text, the flag when it is not
    "--" + the name with dashes, the allowed values, nargs for a list of strings, and const, the value of the flag
    given bare. `gigagan train` is generated from these."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "choices": choices,
                                                        "nargs": nargs, "const": const})


def config_flag(field) -> str:
    """The command-line flag of a config dataclass field."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


@dataclass
class TrainConfig:
    preset: str = _option("tiny", "the model preset: tiny, small or paper")
    model_overrides: tuple = _option((), "fields of the preset's model config to replace, PATH=VALUE with VALUE in "
                                     "JSON, e.g. generator.mapping_lr_multiplier=0.1 generator.attn_resolutions=[8]",
                                     flag="--set", nargs="*")
    model: str = _option("base", "base: the generator; upsampler: the text-conditioned upsampler (GAN + "
                         "perceptual loss)", choices=MODELS)
    data: str = _option("builtin", "builtin (procedural shapes), a folder of images with .txt captions, or tar "
                        "shards ('data/{00000..00099}.tar')")
    steps: int = _option(1000, "training steps")
    max_minutes: Optional[float] = _option(None, "also stop after this many minutes of training, counted from this "
                                           "invocation's first step (checkpoint and final samples are written)")
    batch_size: int = _option(4, "images per rank and step (split into grad_accum micro-batches)")
    grad_accum: int = _option(1, "micro-batches per step")
    lr: float = _option(0.0025, "AdamW learning rate of G and D")
    betas: tuple = _option((0.0, 0.99), "AdamW betas, two comma-separated numbers")
    attention_weight_decay: float = _option(0.01, "weight decay on attention weights (the rest has none)")
    r1_gamma: float = _option(0.2048, "R1 weight gamma")
    r1_interval: int = _option(16, "lazy R1 every this many steps (0: off)")
    matching_aware: bool = _option(True, "turn off the matching-aware loss", flag="--no-matching-aware")
    ema_half_life_images: float = _option(10_000.0, "EMA of G: half-life in images")
    ema_rampup: float = _option(0.05, "EMA half-life at most this fraction of the images seen (StyleGAN2-ADA)")
    impl: str = _option("auto", "the ops' backend (default: $GIGAGAN_KERNELS_IMPL, else auto)",
                        choices=("auto",) + IMPLS)
    device: Optional[str] = _option(None, "cuda or cpu (default: CUDA when available)", choices=("cuda", "cpu"))
    out: str = _option("runs/gigagan", "the run directory")
    seed: int = _option(0, "seed of the initial weights, the data order and the noise")
    log_every: int = _option(10, "log.jsonl record every this many steps")
    sample_every: int = _option(200, "sample grid every this many steps (0: only at the end)")
    ckpt_every: int = _option(200, "checkpoint every this many steps (0: only at the end)")
    keep_checkpoints: int = _option(3, "how many of the newest whole checkpoints to keep")
    max_bad_steps: int = _option(20, "non-finite steps in a row before stopping")
    max_bad_batches: int = _option(50, "batches in a row without a usable sample before stopping")
    num_workers: int = _option(0, "dataloader worker processes", flag="--workers")
    tensorboard: bool = _option(False, "also write TensorBoard logs under OUT/tb")
    progress: bool = _option(True, "no progress bar", flag="--no-progress")
    perceptual_weight: float = _option(10.0, "upsampler: weight of the perceptual term (paper: 10)")
    perceptual_weights: Optional[str] = _option(None, "upsampler: a local torchvision VGG16 state dict (default: "
                                                "torchvision's cache, else random)")
    clip_weight: float = _option(0.0, "CLIP contrastive loss on G (paper eq. 9); needs --guidance-clip-pretrained")
    vision_aided_weight: float = _option(0.0, "vision-aided loss (a head on frozen CLIP features); needs "
                                         "--guidance-clip-pretrained")
    guidance_clip: str = _option("ViT-B-32", "open_clip architecture for those two losses")
    guidance_clip_pretrained: Optional[str] = _option(None, "a local CLIP checkpoint file, or an open_clip tag "
                                                      "already in the cache")
    allow_random_clip: bool = _option(False, "run the CLIP losses with a random CLIP (smoke tests only: the losses "
                                      "are noise)")
    text_encoder_pretrained: Optional[str] = _option(None, "local open_clip weights for the frozen CLIP text tower "
                                                     "(else it stays random, with a warning)")
    unconditional: bool = _option(False, "train without text: every caption empty (image folders need no .txt "
                                  "sidecars; the matching-aware loss is off)")
    precision: str = _option("auto", "autocast precision (auto: bf16 on CUDA, fp32 on CPU); fp16 adds dynamic loss "
                             "scaling", choices=PRECISIONS)
    augment: str = _option("", "augment D's inputs (real and generated): any of flip,translation,cutout "
                           "(DiffAugment; off by default)")
    compile: str = _option("off", "run G and D under torch.compile (static shapes; the lazy-R1 term in a pass of its "
                           "own, eager): on (also the bare flag), off, or auto (on one CUDA process, when the steps to "
                           "come repay the compile)", choices=COMPILE_CHOICES, const="on")
    profile_steps: int = _option(0, "trace this many steps (after one warm-up) with torch.profiler into "
                                 "OUT/profile/")
    metrics: str = _option("", "fid: measure the EMA generator's FID against --fid-real every --fid-every steps and "
                           "at the end, into log.jsonl, TensorBoard and the model card")
    fid_real: Optional[str] = _option(None, "a folder of real images for --metrics fid; their .txt captions, when "
                                      "there, are the generated images' prompts")
    fid_every: int = _option(1000, "--metrics: measure every this many steps")
    fid_images: int = _option(0, "--metrics: images generated per measurement (0: as many as --fid-real holds)")
    inception_weights: Optional[str] = _option(None, INCEPTION_HELP)
    metrics_clip_weights: Optional[str] = _option(None, "--metrics: a local open_clip checkpoint; adds the CLIP "
                                                  "score of the generated images and their prompts")
    metrics_clip_model: str = _option("ViT-B-32", "the open_clip architecture of --metrics-clip-weights")

    def validate(self) -> None:
        """Every field's range, checked before any work; a ConfigError names the field."""
        def need(ok, field, what):
            if not ok:
                raise ConfigError(field, f"must be {what}, got {getattr(self, field)!r}")
        finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
        for field in ("steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints", "max_bad_steps",
                      "max_bad_batches"):
            need(isinstance(getattr(self, field), int) and getattr(self, field) >= 1, field, "an integer >= 1")
        for field in ("r1_interval", "sample_every", "ckpt_every", "num_workers", "profile_steps"):
            need(isinstance(getattr(self, field), int) and getattr(self, field) >= 0, field, "an integer >= 0")
        need(finite(self.lr) and self.lr > 0, "lr", "a finite number > 0")
        for field in ("r1_gamma", "attention_weight_decay", "perceptual_weight", "clip_weight", "vision_aided_weight",
                      "ema_rampup"):
            need(finite(getattr(self, field)) and getattr(self, field) >= 0, field, "a finite number >= 0")
        need(finite(self.ema_half_life_images) and self.ema_half_life_images > 0, "ema_half_life_images",
             "a finite number > 0")
        need(self.max_minutes is None or (finite(self.max_minutes) and self.max_minutes > 0), "max_minutes",
             "a finite number > 0, or None for no time limit")
        need(len(self.betas) == 2 and all(finite(b) and 0 <= b < 1 for b in self.betas), "betas",
             "two numbers in [0, 1)")
        need(self.model in MODELS, "model", f"one of {MODELS}")
        need(self.device in (None, "cuda", "cpu"), "device", "'cuda', 'cpu' or None")
        need(self.precision in PRECISIONS, "precision", f"one of {PRECISIONS}")
        need(self.compile in COMPILE_CHOICES, "compile", f"one of {COMPILE_CHOICES}")
        if self.batch_size % self.grad_accum:
            raise ConfigError("grad_accum", f"must divide batch_size ({self.batch_size}), got {self.grad_accum}")
        need(self.preset in PRESETS, "preset", f"one of {sorted(PRESETS)}")
        try:
            apply_overrides(get_preset(self.preset), self.model_overrides)
        except ValueError as e:
            raise ConfigError("model_overrides", f"must name fields of the model config: {e}") from None
        try:
            parse_policy(self.augment)
        except ValueError:
            raise ConfigError("augment", f"must be a comma-separated subset of {POLICIES}, got {self.augment!r}") \
                from None
        need(self.text_encoder_pretrained is None or os.path.isfile(self.text_encoder_pretrained),
             "text_encoder_pretrained", "a local open_clip checkpoint file (nothing is downloaded)")
        need(self.metrics in METRICS, "metrics", f"one of {METRICS}")
        for field in ("fid_every", "fid_images"):
            need(isinstance(getattr(self, field), int) and getattr(self, field) >= (field == "fid_every"), field,
                 f"an integer >= {int(field == 'fid_every')}")
        if self.metrics:
            need(self.fid_real is not None and os.path.isdir(self.fid_real), "fid_real",
                 "a folder of real images (--metrics fid compares with it)")
            need(self.model == "base", "metrics", "off for an upsampler run (FID measures the base generator)")
        else:
            for field in ("fid_real", "metrics_clip_weights"):
                need(getattr(self, field) is None, field, "given only with --metrics fid")
        need(self.metrics_clip_weights is None or os.path.isfile(self.metrics_clip_weights), "metrics_clip_weights",
             "a local open_clip checkpoint file (nothing is downloaded)")
        if self.unconditional:
            need(not self.matching_aware, "matching_aware", "off in an unconditional run (every caption is empty)")
            for field in ("clip_weight", "vision_aided_weight"):
                need(getattr(self, field) == 0, field, "0 in an unconditional run (there is no text to follow)")


# What a resume may change, one tag per TrainConfig field (a test fails on an untagged one). "state": the saved
# state means something else under another value, so a resume that changes it is refused (exit 2) unless
# --allow-config-change, and the log records the change. "steer": it steers the run from the resumed step on,
# is applied for real (lr and betas on the restored optimisers too) and logged. The number of ranks counts
# through batch_size: the global batch is state, its split over ranks steer.
RESUME = {
    "preset": "state", "model_overrides": "state", "model": "state", "data": "state", "batch_size": "state",
    "grad_accum": "state", "seed": "state", "unconditional": "state", "precision": "state",
    "r1_gamma": "state", "r1_interval": "state", "matching_aware": "state", "perceptual_weight": "state",
    "perceptual_weights": "state", "clip_weight": "state", "vision_aided_weight": "state", "guidance_clip": "state",
    "guidance_clip_pretrained": "state", "text_encoder_pretrained": "state", "augment": "state",
    "steps": "steer", "max_minutes": "steer", "lr": "steer", "betas": "steer", "attention_weight_decay": "steer",
    "ema_half_life_images": "steer", "ema_rampup": "steer", "impl": "steer", "device": "steer", "out": "steer",
    "log_every": "steer", "sample_every": "steer", "ckpt_every": "steer", "keep_checkpoints": "steer",
    "max_bad_steps": "steer", "max_bad_batches": "steer", "num_workers": "steer", "tensorboard": "steer",
    "progress": "steer", "allow_random_clip": "steer", "profile_steps": "steer", "compile": "steer",
    "metrics": "steer",
    "fid_real": "steer", "fid_every": "steer", "fid_images": "steer", "inception_weights": "steer",
    "metrics_clip_weights": "steer", "metrics_clip_model": "steer",
}

# The argument groups of `gigagan train --help`, each TrainConfig field in one (a test fails on a field in none).
HELP_GROUPS = {
    "data": ("data", "unconditional", "augment"),
    "model": ("preset", "model_overrides", "model", "text_encoder_pretrained"),
    "optimisation": ("steps", "max_minutes", "batch_size", "grad_accum", "lr", "betas", "attention_weight_decay",
                     "ema_half_life_images", "ema_rampup", "seed", "max_bad_steps", "max_bad_batches"),
    "losses": ("r1_gamma", "r1_interval", "matching_aware", "perceptual_weight", "perceptual_weights", "clip_weight",
               "vision_aided_weight", "guidance_clip", "guidance_clip_pretrained", "allow_random_clip"),
    "checkpoints": ("out", "ckpt_every", "keep_checkpoints"),
    "logging": ("log_every", "sample_every", "tensorboard", "progress", "metrics", "fid_real", "fid_every",
                "fid_images", "inception_weights", "metrics_clip_weights", "metrics_clip_model"),
    "performance": ("impl", "device", "precision", "compile", "num_workers", "profile_steps"),
}
