"""The GigaGAN trainer: one process per GPU under torchrun (DistributedDataParallel), or one CPU process.

    gigagan train --preset tiny --steps 600 --out runs/tiny            # one process
    torchrun --nproc_per_node 8 -m gigagan train --preset small ...    # NCCL on GPUs, gloo on CPU

Each step has two phases, each one forward and one backward per DDP module:
- D: G (no grad) makes fakes; D scores [real, fake, real, fake] under [c, c, c', c'] in one batch
  (c' = the captions rolled by one: the matching-aware loss); every r1_interval steps the lazy R1
  penalty on the real part joins the same backward, scaled by the interval.
- G: D (frozen) scores G(z, c) under c and c'.
Then AdamW steps (lr 0.0025, betas (0, 0.99), weight decay 0.01 on attention weights only) and G's EMA.

model="upsampler" trains the text-conditioned upsampler the same way: its input is the real image
downsampled to its input resolution, D is an MS-I/O discriminator at its output resolution, and the G
loss adds the LPIPS-style perceptual distance to the real image (weight 10, as in the paper).

Optional, with pretrained CLIP weights (gigagan/clip_guidance.py): the CLIP contrastive loss on G
(clip_weight) and the vision-aided loss (vision_aided_weight: a head on frozen CLIP image features
joins D's optimiser and is another discriminator for G).

A step whose loss is NaN/Inf is skipped on every rank, counted and logged; after max_bad_steps in a
row training stops with a clear message. Checkpoints are written atomically, hold everything needed
for an exact resume, and are also written when SIGTERM/SIGINT arrive.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import inspect
import json
import math
import os
import pickle
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gigagan_kernels import use_impl
from gigagan_kernels.backend import IMPLS

from .config import PRESETS, GigaGANConfig, apply_overrides, get_preset, upsampler_discriminator_config
from .augment import POLICIES, augment_pyramid, parse_policy
from .data import StepSampler, TarShards, collate_pairs, fixed_prompts, make_dataset
from .discriminator import Discriminator
from .extras import require
from .losses import (clip_contrastive_loss, discriminator_loss, generator_loss, matching_aware_d_loss,
                     matching_aware_g_loss, mismatched, perceptual_loss, r1_from_logits)
from .model import GigaGAN
from .rundir import RunDirectory, RunDirError, whole_archive
from .text import CLIPText


MODELS = ("base", "upsampler")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def _option(default, help: str, *, flag: Optional[str] = None, choices: Optional[tuple] = None,
            nargs: Optional[str] = None):
    """A TrainConfig field with what its command-line flag needs: the help text, the flag when it is not
    "--" + the name with dashes, the allowed values, and nargs for a list of strings. `gigagan train` is
    generated from these."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "choices": choices,
                                                        "nargs": nargs})


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
    profile_steps: int = _option(0, "trace this many steps (after one warm-up) with torch.profiler into "
                                 "OUT/profile/")

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
        if self.unconditional:
            need(not self.matching_aware, "matching_aware", "off in an unconditional run (every caption is empty)")
            for field in ("clip_weight", "vision_aided_weight"):
                need(getattr(self, field) == 0, field, "0 in an unconditional run (there is no text to follow)")


class ConfigError(ValueError):
    """A TrainConfig field out of range; .field names it (the CLI turns it into the flag's name)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"TrainConfig.{field} {message}")
        self.field, self.message = field, message


class TrainingError(RuntimeError):
    pass


class Preempted(Exception):
    """A second stop signal arrived: training stops at once (after a checkpoint write already in flight)."""

    def __init__(self, signum):
        super().__init__(f"stopped by a second {_signal_name(signum)}")
        self.signum = signum


def _signal_name(signum) -> str:
    try:
        return signal.Signals(signum).name
    except (ValueError, TypeError):
        return str(signum)


class CheckpointError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------
# Distributed set-up
# ------------------------------------------------------------------------------------------------
def init_distributed(device_type: Optional[str] = None):
    """(rank, world_size, device) from torchrun's environment; a plain process is rank 0 of 1.
    device_type: "cuda", "cpu", or None for CUDA when available. CPU ranks use gloo, CUDA ranks NCCL."""
    if device_type not in (None, "cuda", "cpu"):
        raise ValueError(f"TrainConfig.device must be 'cuda', 'cpu' or None, got {device_type!r}")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("TrainConfig.device='cuda' but torch sees no CUDA device")
    use_cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, torch.device("cuda" if use_cuda else "cpu")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return rank, world, device


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------
def load_checkpoint(path: str) -> dict:
    """Load a checkpoint with weights_only=True; a truncated or corrupt file raises CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if why := whole_archive(path):
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (not a whole torch.save archive: {why})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only" not in str(e):
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt (UnpicklingError: {e})") from e
        # torch's message suggests weights_only=False, which would run whatever code the file holds.
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain containers, which "
                              "gigagan checkpoints never do; refusing to unpickle it (that could run arbitrary "
                              "code). It was not written by gigagan train.") from None
    except Exception as e:                                   # noqa: BLE001 - any failure means unusable
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})") from e
    for key in ("step", "config", "model", "g_ema", "opt_g", "opt_d"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}; it is not a gigagan training checkpoint")
    return state


def list_checkpoints(directory: str) -> list:
    """Whole checkpoint paths in a run directory, newest first (read only: nothing is moved)."""
    return RunDirectory(directory).checkpoints(check_untracked=False)


def load_latest_checkpoint(directory: str, log=print) -> Optional[dict]:
    """The newest loadable checkpoint in `directory`, read only: a bad one is reported and the previous one
    used (a training resume moves bad ones aside instead, Trainer.resume)."""
    for path in RunDirectory(directory, log=log).checkpoints(check_untracked=False):
        try:
            state = load_checkpoint(path)
            state["path"] = path
            return state
        except CheckpointError as e:
            log(f"warning: {e}; falling back to the previous checkpoint")
    return None


# Beside config.json and model.safetensors in an exported folder: which network was trained, and from where.
EXPORT_INFO_NAME = "training.json"


def export_pretrained(path: str, directory: str) -> dict:
    """Write the EMA model of a checkpoint file or run directory as a pretrained folder (GigaGAN.save_pretrained
    plus training.json); returns what training.json says."""
    model, state = model_from_checkpoint(path)
    info = {"model": json.loads(state.get("train_config", "{}")).get("model", "base"), "step": state["step"],
            "source": os.path.abspath(state.get("path", path))}
    model.save_pretrained(directory)
    tmp = os.path.join(directory, f".{EXPORT_INFO_NAME}.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(directory, EXPORT_INFO_NAME))
    return info


def is_pretrained_folder(path: str) -> bool:
    from .model import CONFIG_NAME, WEIGHTS_NAME
    return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, n)) for n in (CONFIG_NAME, WEIGHTS_NAME))


def model_from_checkpoint(path: str, map_location="cpu") -> tuple:
    """(GigaGAN with G replaced by its EMA, checkpoint dict) from a checkpoint file, a run directory, or a
    pretrained folder written by `gigagan export` (its weights are the EMA already)."""
    if is_pretrained_folder(path):
        info_path = os.path.join(path, EXPORT_INFO_NAME)
        info = {}
        if os.path.isfile(info_path):
            with open(info_path) as f:
                info = json.load(f)
        model = GigaGAN.from_pretrained(path, map_location=map_location)
        state = {"step": info.get("step", "?"), "path": path,
                 "train_config": json.dumps({"model": info.get("model", "base")})}
        return model.eval(), state
    if os.path.isdir(path):
        state = load_latest_checkpoint(path)
        if state is None:
            raise CheckpointError(f"no loadable checkpoint in {path}")
    else:
        state = load_checkpoint(path)
    model = GigaGAN(GigaGANConfig.from_dict(json.loads(state["config"])), load_clip_weights=False)
    model.load_state_dict(state["model"])
    trained = json.loads(state.get("train_config", "{}")).get("model", "base")
    (model.upsampler if trained == "upsampler" else model.generator).load_state_dict(state["g_ema"])
    return model.to(map_location).eval(), state


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------
def _param_groups(module: torch.nn.Module, weight_decay: float) -> list:
    """Weight decay on attention weights only (paper: 0.01); everything else undecayed."""
    from gigagan_kernels.nn import CrossAttention, L2SelfAttention

    from .text import TextTransformerBlock
    decay, seen = [], set()
    for m in module.modules():
        if isinstance(m, (L2SelfAttention, CrossAttention)):
            weights = [p for name, p in m.named_parameters() if name.endswith("weight")]
        elif isinstance(m, TextTransformerBlock):
            weights = [m.qkv.weight, m.proj.weight]
        else:
            continue
        for p in weights:
            if p.requires_grad and id(p) not in seen:
                decay.append(p)
                seen.add(id(p))
    rest = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
    rest = list({id(p): p for p in rest}.values())
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


class Trainer:
    def __init__(self, cfg: TrainConfig, model_config: Optional[GigaGANConfig] = None, log=None):
        self.cfg = cfg
        cfg.validate()
        self.rank, self.world, self.device = init_distributed(cfg.device)
        self.is_main = self.rank == 0
        self._log = log or (lambda msg: print(msg, flush=True))
        torch.manual_seed(cfg.seed)                       # identical initial weights on every rank
        random.seed(cfg.seed)
        self.model_config = apply_overrides(model_config or get_preset(cfg.preset), cfg.model_overrides)
        self.augment_policy = parse_policy(cfg.augment)
        if cfg.text_encoder_pretrained:
            text = dataclasses.replace(self.model_config.text, clip_pretrained=cfg.text_encoder_pretrained)
            self.model_config = dataclasses.replace(self.model_config, text=text)
        with warnings.catch_warnings():
            if not self.is_main:
                warnings.simplefilter("ignore")           # the random-CLIP warning: once, from rank 0
            self.model = GigaGAN(self.model_config).to(self.device)
        self.perceptual = None
        if cfg.model == "upsampler":
            if self.model.upsampler is None:
                raise ValueError(f"preset {self.model_config.name!r} has no upsampler to train")
            self.G = self.model.upsampler
            torch.manual_seed(cfg.seed + 1)
            self.D = Discriminator(upsampler_discriminator_config(self.model_config), self.model.clip).to(self.device)
            self.resolution = self.G.out_resolution
            if cfg.perceptual_weight > 0:
                from .perceptual import PerceptualFeatures
                with warnings.catch_warnings():
                    if not self.is_main:
                        warnings.simplefilter("ignore")
                    self.perceptual = PerceptualFeatures(cfg.perceptual_weights).to(self.device)
        else:
            self.G, self.D = self.model.generator, self.model.discriminator
            self.resolution = self.G.resolution
        self.guidance, self.vision_head = None, None
        if cfg.clip_weight > 0 or cfg.vision_aided_weight > 0:
            from .clip_guidance import FrozenCLIP, VisionAidedHead
            self.guidance = FrozenCLIP(cfg.guidance_clip, cfg.guidance_clip_pretrained).to(self.device)
            if self.guidance.pretrained_from is None and not cfg.allow_random_clip:
                raise ValueError("clip_weight and vision_aided_weight need pretrained CLIP weights: set "
                                 "guidance_clip_pretrained (--guidance-clip-pretrained) to a local checkpoint or a "
                                 "cached open_clip tag. With a random CLIP these losses are noise; "
                                 "allow_random_clip (--allow-random-clip) overrides, for smoke tests only.")
            if cfg.vision_aided_weight > 0:
                self.vision_head = VisionAidedHead(self.guidance.embed_dim).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.G_ema.text_encoder.clip = self.model.clip    # share the frozen tower instead of a copy
        self.opt_g = torch.optim.AdamW(_param_groups(self.G, cfg.attention_weight_decay), lr=cfg.lr,
                                       betas=tuple(cfg.betas), eps=1e-8)
        d_groups = _param_groups(self.D, cfg.attention_weight_decay)
        if self.vision_head is not None:
            d_groups.append({"params": list(self.vision_head.parameters()), "weight_decay": 0.0})
        self.opt_d = torch.optim.AdamW(d_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8)
        self.g_params = [p for group in self.opt_g.param_groups for p in group["params"]]
        self.d_params = [p for group in self.opt_d.param_groups for p in group["params"]]
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            # No buffer sync in forward (G's w_avg is each rank's own running mean). torch >= 2.14 renames
            # broadcast_buffers to forward_sync_buffers (which also syncs once at init: the same here,
            # as every rank starts from the same seed); older torch, as on the GPU machine, lacks it.
            no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                       else {"broadcast_buffers": False})
            self.G_ddp = DDP(self.G, device_ids=ids, **no_sync)
            self.D_ddp = DDP(self.D, device_ids=ids, **no_sync)
            self.vision_head_ddp = (DDP(self.vision_head, device_ids=ids) if self.vision_head is not None
                                    else None)
        else:
            self.G_ddp, self.D_ddp, self.vision_head_ddp = self.G, self.D, self.vision_head
        self.step, self.bad_steps_total, self.bad_steps_in_row, self.skipped_samples = 0, 0, 0, 0
        self.batches_seen = 0                             # the data position, which a resume continues from
        self.stop_signal = None
        self._writing, self._pending_preempt = False, None  # a second signal waits for a checkpoint write
        # Recent distinct captions: the matching-aware loss's mismatched captions where rolling the batch
        # would pair a caption with itself (a batch of one, or repeated captions).
        self.caption_pool = collections.deque(maxlen=256)
        self._warned_no_mismatch = False
        self._run_dir = None
        # Mixed precision: autocast in bf16 or fp16; fp16 adds dynamic loss scaling (one scaler for both
        # optimisers); a scaled step whose gradients overflow is skipped and the scale lowered, not counted bad.
        self.precision = cfg.precision if cfg.precision != "auto" else ("bf16" if self.device.type == "cuda"
                                                                         else "fp32")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.autocast = (torch.autocast(self.device.type, dtype=dtype) if dtype is not None
                         else torch.autocast(self.device.type, enabled=False))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.sample_prompts = [""] * 8 if cfg.unconditional else fixed_prompts(8)
        self.sample_z = torch.randn(8, self.G.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1))
        self.tb = None

    def log(self, msg: str) -> None:
        if self.is_main:
            self._log(msg)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "config": self.model_config.to_json(),
                "train_config": json.dumps(dataclasses.asdict(self.cfg)),
                "model": self.model.state_dict(), "g_ema": self.G_ema.state_dict(),
                "upsampler_discriminator": self.D.state_dict() if self.cfg.model == "upsampler" else {},
                "vision_aided_head": self.vision_head.state_dict() if self.vision_head is not None else {},
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "rng": _rng_state(),
                "counters": {"bad_steps_total": self.bad_steps_total, "skipped_samples": self.skipped_samples,
                             "batches_seen": self.batches_seen},
                "caption_pool": list(self.caption_pool),
                "grad_scaler": self.scaler.state_dict() if self.scaler is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        saved = GigaGANConfig.from_dict(json.loads(state["config"]))
        if saved != self.model_config:
            raise CheckpointError(f"checkpoint {state.get('path', '')} was made with preset {saved.name!r} and a "
                                  f"different model config than this run ({self.model_config.name!r})")
        trained = json.loads(state.get("train_config", "{}")).get("model", "base")
        if trained != self.cfg.model:
            raise CheckpointError(f"checkpoint {state.get('path', '')} trained the {trained} model, not the "
                                  f"{self.cfg.model}")
        self.model.load_state_dict(state["model"])
        if self.cfg.model == "upsampler":
            self.D.load_state_dict(state["upsampler_discriminator"])
        if self.vision_head is not None:
            if not state.get("vision_aided_head"):
                raise CheckpointError(f"checkpoint {state.get('path', '')} has no vision-aided head; this run has "
                                      "vision_aided_weight > 0")
            self.vision_head.load_state_dict(state["vision_aided_head"])
        self.G_ema.load_state_dict(state["g_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        self.bad_steps_total = int(state["counters"]["bad_steps_total"])
        self.skipped_samples = int(state["counters"]["skipped_samples"])
        self.batches_seen = int(state["counters"]["batches_seen"])
        self.caption_pool.clear()
        self.caption_pool.extend(state.get("caption_pool", []))
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        _set_rng_state(state["rng"])

    @property
    def run_dir(self) -> RunDirectory:
        if self._run_dir is None or self._run_dir.path != self.cfg.out:
            self._run_dir = RunDirectory(self.cfg.out, log=self.log)
        return self._run_dir

    def save_checkpoint(self) -> Optional[str]:
        """Rank 0 writes ckpt-<step>.pt (atomic, checked whole, retention over whole checkpoints only)."""
        if not self.is_main:
            return None
        os.makedirs(self.cfg.out, exist_ok=True)
        self._writing = True
        try:
            path = self.run_dir.save(self.state_dict(), self.step, self.cfg.keep_checkpoints)
        finally:
            self._writing = False
        if self._pending_preempt is not None:
            raise Preempted(self._pending_preempt)
        return path

    def resume(self, fresh_if_none: bool = False) -> bool:
        """Load the newest whole checkpoint of cfg.out: rank 0 finds it (moving bad files aside), every rank
        loads that file. None there is an error unless fresh_if_none."""
        path, state = None, None
        if self.is_main:
            state = self.run_dir.load_latest(load_checkpoint, (CheckpointError,))
            path = state["path"] if state is not None else None
        if self.world > 1:
            box = [path]
            dist.broadcast_object_list(box, src=0)
            path = box[0]
            if not self.is_main and path is not None:
                state = load_checkpoint(path)
                state["path"] = path
        if path is None:
            if not fresh_if_none:
                raise CheckpointError(f"resume: no loadable checkpoint in {self.cfg.out} (bad ones are moved to "
                                      f"{os.path.join(self.cfg.out, 'corrupt')}); resume-or-start "
                                      "(--resume-or-start) starts from step 0 when there is none")
            self.log(f"resume: no checkpoint in {self.cfg.out}; starting from step 0")
            return False
        self.load_state_dict(state)
        self.log(f"resumed from {path} at step {self.step}")
        return True

    # -- one training step ---------------------------------------------------------------------
    def _all_finite(self, *losses) -> bool:
        ok = torch.tensor([float(all(torch.isfinite(loss).all() for loss in losses))], device=self.device)
        if self.world > 1:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)       # every rank skips together
        return bool(ok.item() > 0)

    def _generate(self, G, real: torch.Tensor, text, z: torch.Tensor, update_w_avg: bool = False) -> list:
        """G's image pyramid (as many levels as D takes): from z, or, for the upsampler, from the real
        image downsampled to its input resolution."""
        if self.cfg.model == "upsampler":
            pyramid = G(self.low_res(real), text, z)
        else:
            pyramid = G(z, text, update_w_avg=True) if update_w_avg else G(z, text)
        return pyramid[:self.D.num_levels]

    def _mismatched(self, text: CLIPText, captions: list) -> Optional[CLIPText]:
        """Each sample's text under another sample's caption: the batch rolled by one where that gives every
        sample a different caption, else, for the samples it does not, a different caption from the batch or
        the recent pool. None when there is none yet (the matching-aware terms are then left out of this
        step)."""
        rolled = captions[-1:] + captions[:-1]
        if all(r != c for r, c in zip(rolled, captions)):
            return mismatched(text)
        picks = []
        for own, other in zip(captions, rolled):
            if other == own:
                candidates = [p for p in dict.fromkeys(list(captions) + list(self.caption_pool)) if p != own]
                if not candidates:
                    if not self._warned_no_mismatch:
                        self.log("warning: no caption different from the batch's own yet (a batch of one, or one "
                                 "caption repeated); the matching-aware terms wait for one")
                        self._warned_no_mismatch = True
                    return None
                other = random.choice(candidates)
            picks.append(other)
        return self.model.clip.encode(picks)

    def _remember_captions(self, captions: list) -> None:
        for caption in captions:
            if caption in self.caption_pool:
                self.caption_pool.remove(caption)
            self.caption_pool.append(caption)

    def low_res(self, images: torch.Tensor) -> torch.Tensor:
        R = self.G.in_resolution
        return torch.nn.functional.interpolate(images, size=(R, R), mode="bilinear", align_corners=False,
                                               antialias=True)

    def train_step(self, images: torch.Tensor, captions: list) -> dict:
        cfg, G, D = self.cfg, self.G, self.D
        images = images.to(self.device, non_blocking=True)
        do_r1 = cfg.r1_gamma > 0 and cfg.r1_interval > 0 and self.step % cfg.r1_interval == 0
        stats = {"loss_d": 0.0, "loss_g": 0.0}
        if do_r1:
            stats["r1"] = 0.0
        micro = max(1, min(cfg.grad_accum, images.shape[0]))
        chunks_img, chunks_cap = images.chunk(micro), []
        start = 0
        for c in chunks_img:
            chunks_cap.append(captions[start:start + c.shape[0]])
            start += c.shape[0]
        # The frozen text towers run once per micro-batch; both phases reuse their outputs.
        chunks_text = [self.model.clip.encode(caps) for caps in chunks_cap]
        chunks_wrong = ([self._mismatched(text, caps) for text, caps in zip(chunks_text, chunks_cap)]
                        if cfg.matching_aware else [None] * len(chunks_cap))
        chunks_emb = ([self.guidance.encode_text(caps) for caps in chunks_cap] if self.guidance is not None
                      else [None] * len(chunks_cap))

        # ---- D phase
        _set_trainable(self.d_params, True)
        _set_trainable(self.g_params, False)
        self.opt_d.zero_grad(set_to_none=True)
        d_losses = []
        for k, (real, text, wrong, t_emb) in enumerate(zip(chunks_img, chunks_text, chunks_wrong, chunks_emb)):
            B = real.shape[0]
            z = torch.randn(B, G.z_dim, device=self.device)
            with torch.no_grad(), self.autocast:
                fake = [f.float() for f in self._generate(G, real, text, z)]
            with self._no_sync(self.D_ddp, k < micro - 1), self.autocast:
                real_in = real.detach().requires_grad_(do_r1)
                real_pyr = self.D.check_pyramid(real_in)
                # [real, fake] under the true captions, then (matching-aware) under mismatched ones;
                # D's trunk runs once on the images.
                pyramid = augment_pyramid([torch.cat([r, f]) for r, f in zip(real_pyr, fake)], self.augment_policy)
                texts = [text, text] + ([wrong] * 2 if wrong is not None else [])
                logits = self.D_ddp(pyramid, CLIPText.cat(texts), captions_per_image=len(texts) // 2, parts=2)
                split = [lg.split(B) for lg in logits]
                loss = discriminator_loss([s[0] for s in split], [s[1] for s in split])
                if wrong is not None:
                    loss = loss + matching_aware_d_loss([s[2] for s in split], [s[3] for s in split])
                stats["loss_d"] += loss.item() / micro
                if self.vision_head is not None:
                    with torch.no_grad():                           # frozen CLIP features of real and fake
                        feats = self.guidance.encode_image(torch.cat([real, fake[0]]))
                    va_real, va_fake = self.vision_head_ddp(feats, torch.cat([t_emb, t_emb])).split(B)
                    va = F.softplus(-va_real).mean() + F.softplus(va_fake).mean()
                    stats["vision_aided_d"] = stats.get("vision_aided_d", 0.0) + va.item() / micro
                    loss = loss + cfg.vision_aided_weight * va
                if do_r1:
                    r1 = r1_from_logits([s[0] for s in split], real_in, cfg.r1_gamma)
                    stats["r1"] += r1.item() / micro
                    loss = loss + r1 * cfg.r1_interval                # lazy regularisation
                d_losses.append(loss.detach())
                self._backward(loss / micro)
        d_ok = self._all_finite(*d_losses)

        # ---- G phase
        _set_trainable(self.d_params, False)
        _set_trainable(self.g_params, True)
        self.opt_g.zero_grad(set_to_none=True)
        g_losses = []
        for k, (real, text, wrong, t_emb) in enumerate(zip(chunks_img, chunks_text, chunks_wrong, chunks_emb)):
            B = real.shape[0]
            z = torch.randn(B, G.z_dim, device=self.device)
            with self._no_sync(self.G_ddp, k < micro - 1), self.autocast:
                fake = self._generate(self.G_ddp, real, text, z, update_w_avg=True)
                if wrong is not None:
                    seen = augment_pyramid([f.float() for f in fake], self.augment_policy)
                    logits = D(seen, CLIPText.cat([text, wrong]), captions_per_image=2)
                    split = [lg.split(B) for lg in logits]
                    loss = generator_loss([s[0] for s in split]) + matching_aware_g_loss([s[1] for s in split])
                else:
                    loss = generator_loss(D(augment_pyramid([f.float() for f in fake], self.augment_policy), text))
                if self.guidance is not None:
                    img_emb = self.guidance.encode_image(fake[0])
                    if cfg.clip_weight > 0:
                        clip = clip_contrastive_loss(img_emb, t_emb)
                        stats["clip"] = stats.get("clip", 0.0) + clip.item() / micro
                        loss = loss + cfg.clip_weight * clip
                    if self.vision_head is not None:
                        va = F.softplus(-self.vision_head(img_emb, t_emb)).mean()
                        stats["vision_aided_g"] = stats.get("vision_aided_g", 0.0) + va.item() / micro
                        loss = loss + cfg.vision_aided_weight * va
                if self.perceptual is not None:
                    lpips = perceptual_loss(self.perceptual, fake[0].float(), real)
                    stats["perceptual"] = stats.get("perceptual", 0.0) + lpips.item() / micro
                    loss = loss + cfg.perceptual_weight * lpips
                stats["loss_g"] += loss.item() / micro
                g_losses.append(loss.detach())
                self._backward(loss / micro)
        losses_ok = self._all_finite(*g_losses)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt_d)
            self.scaler.unscale_(self.opt_g)
        grads_ok = self._grads_finite()
        g_ok = losses_ok and grads_ok
        _set_trainable(self.d_params, True)

        if d_ok and g_ok:
            if self.scaler is not None:
                self.scaler.step(self.opt_d)
                self.scaler.step(self.opt_g)
                self.scaler.update()
                stats["loss_scale"] = float(self.scaler.get_scale())
            else:
                self.opt_d.step()
                self.opt_g.step()
            self._update_ema(images.shape[0] * self.world)
            self.bad_steps_in_row = 0
            stats["skipped"] = False
        elif self.scaler is not None and d_ok and losses_ok:
            # fp16 overflow in the scaled gradients: expected while the scale settles, so not a bad step.
            self.scaler.update()                          # found_inf from unscale_ halves the scale
            self.opt_d.zero_grad(set_to_none=True)
            self.opt_g.zero_grad(set_to_none=True)
            stats["skipped"] = True
            stats["loss_scale"] = float(self.scaler.get_scale())
            self.log(f"step {self.step}: fp16 gradients overflowed; step skipped, loss scale now "
                     f"{stats['loss_scale']:g}")
        else:
            self.opt_d.zero_grad(set_to_none=True)
            self.opt_g.zero_grad(set_to_none=True)
            self.bad_steps_total += 1
            self.bad_steps_in_row += 1
            stats["skipped"] = True
            self.log(f"step {self.step}: non-finite loss (D {stats['loss_d']:.4g}, G {stats['loss_g']:.4g}); "
                     f"step skipped ({self.bad_steps_in_row} in a row, {self.bad_steps_total} in total)")
            if self.bad_steps_in_row >= cfg.max_bad_steps:
                raise TrainingError(f"training stopped: {self.bad_steps_in_row} non-finite steps in a row at step "
                                    f"{self.step} (max_bad_steps={cfg.max_bad_steps}). Lower the learning rate, "
                                    "raise r1_gamma, or resume from an earlier checkpoint.")
        self._remember_captions(captions)
        self.step += 1
        return stats

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _grads_finite(self) -> bool:
        ok = all(torch.isfinite(p.grad).all() for opt in (self.opt_g, self.opt_d)
                 for group in opt.param_groups for p in group["params"] if p.grad is not None)
        flag = torch.tensor([float(ok)], device=self.device)
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    @staticmethod
    def _no_sync(module, skip: bool):
        import contextlib
        return module.no_sync() if skip and hasattr(module, "no_sync") else contextlib.nullcontext()

    @torch.no_grad()
    def _update_ema(self, images_this_step: int) -> None:
        half_life = self.cfg.ema_half_life_images
        if self.cfg.ema_rampup:
            half_life = min(half_life, (self.step + 1) * images_this_step * self.cfg.ema_rampup)
        beta = 0.5 ** (images_this_step / max(half_life, 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            if p.requires_grad:
                p_ema.lerp_(p.detach(), 1.0 - beta)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    # -- outputs -----------------------------------------------------------------------------------
    @torch.no_grad()
    def write_samples(self, path: str) -> None:
        from .images import save_grid
        z = self.sample_z.to(self.device)
        with use_impl(self.cfg.impl):
            if self.cfg.model == "upsampler":
                # Rows: the low-res input (nearest-neighbour enlarged), the upsampler's output, the real image.
                real = self.sample_real.to(self.device)
                low = self.low_res(real)
                out = self.G_ema(low, self.sample_prompts, z, noise_mode="none")[0].clamp(-1, 1)
                enlarged = torch.nn.functional.interpolate(low, size=out.shape[-2:], mode="nearest")
                save_grid(torch.cat([enlarged, out, real]), path, columns=len(real))
                return
            imgs = self.G_ema(z, self.sample_prompts, noise_mode="none")[0]
        save_grid(imgs, path, captions=self.sample_prompts, columns=4)

    def _start_profiler(self):
        """torch.profiler over the next profile_steps steps: CPU ops, CUDA kernels, and the named ranges of the
        model (G.text_encoder, G.mapping, G.level<R>px, D.level<R>px, gigagan_kernels.* for the fused ops)."""
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        profiler = torch.profiler.profile(activities=activities, record_shapes=True)
        profiler.start()
        return profiler

    def _finish_profiler(self, profiler, steps: int) -> None:
        profiler.stop()
        directory = os.path.join(self.cfg.out, "profile")
        os.makedirs(directory, exist_ok=True)
        trace = os.path.join(directory, "trace.json")
        profiler.export_chrome_trace(trace + ".tmp")
        os.replace(trace + ".tmp", trace)
        key = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        with open(os.path.join(directory, "summary.txt"), "w") as f:
            f.write(f"{steps} steps from step {self.step - steps}, {self.device}, impl {self.cfg.impl}\n")
            f.write(profiler.key_averages().table(sort_by=key, row_limit=40) + "\n")
        self.log(f"profile: {steps} steps traced into {trace} (chrome://tracing, Perfetto) and summary.txt")

    def _write_log(self, record: dict) -> None:
        with open(os.path.join(self.cfg.out, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def _install_signal_handlers(self):
        """SIGTERM / SIGINT: the first asks for a checkpoint and a stop at the next step; a second stops at once,
        after the checkpoint write in flight if there is one."""
        def handler(signum, frame):
            if self.stop_signal is None:
                self.stop_signal = signum
            elif self._writing:
                self._pending_preempt = signum
            else:
                raise Preempted(signum)
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        return previous

    def _loader(self, dataset):
        cfg = self.cfg
        # Its own generator: creating a loader must not draw from the global RNG, or a resumed run's
        # z and noise would drift from an uninterrupted run's.
        common = dict(batch_size=cfg.batch_size, collate_fn=collate_pairs, num_workers=cfg.num_workers,
                      drop_last=True, pin_memory=self.device.type == "cuda",
                      generator=torch.Generator().manual_seed(cfg.seed + self.rank))
        if isinstance(dataset, TarShards):
            # Endless and placed after the batches already trained on: a resume continues the same stream.
            common["num_workers"] = dataset.position(self.rank, self.world, cfg.batch_size, self.batches_seen,
                                                     cfg.num_workers)
            return torch.utils.data.DataLoader(dataset, **common)
        if isinstance(dataset, torch.utils.data.IterableDataset):
            return torch.utils.data.DataLoader(dataset, **common)
        sampler = StepSampler(len(dataset), cfg.batch_size, self.rank, self.world, cfg.seed, self.batches_seen)
        return torch.utils.data.DataLoader(dataset, sampler=sampler, **common)

    def _batches(self, dataset):
        """This rank's batches, pass after pass (a finite stream starts over); None forever when a fresh pass
        yields nothing at all (e.g. more ranks than shards)."""
        while True:
            empty_pass = True
            for batch in self._loader(dataset):
                empty_pass = False
                yield batch
            if empty_pass:
                while True:
                    yield None

    def _setup_on_rank0(self, setup) -> None:
        """Run rank 0's set-up of the run directory; every rank learns whether it failed, so none waits on a
        collective that rank 0 will never reach."""
        error = None
        if self.is_main:
            try:
                setup()
            except (RunDirError, OSError) as e:
                error = e
        if self.world > 1:
            flag = torch.tensor([1.0 if error is not None else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0 and error is None:
                raise TrainingError(f"rank 0 could not set up {self.cfg.out}; its log says why")
        if error is not None:
            raise error

    def _claim_run_dir(self, resume: bool, overwrite: bool) -> None:
        run_dir = self.run_dir
        run_dir.lock()
        try:
            if not resume and run_dir.holds_run():
                if not overwrite:
                    newest = (run_dir.checkpoints(check_untracked=False) or ["a checkpoint"])[0]
                    raise RunDirError(f"{self.cfg.out} holds another run ({newest}): pass --resume to continue it, "
                                      "--overwrite to start a new run there (the old run's files move to "
                                      f"{os.path.join(self.cfg.out, 'previous-runs')}), or choose another --out")
                self.log(f"overwrite: moved the previous run's files to {run_dir.archive_run()}")
        except BaseException:
            run_dir.release()
            raise

    def fit(self, resume: bool = False, overwrite: bool = False, fresh_if_none: bool = False) -> dict:
        """Train until cfg.steps or cfg.max_minutes. resume: continue from the newest whole checkpoint in cfg.out
        (an error when there is none, unless fresh_if_none). Without resume, a directory that holds another
        run's checkpoints is refused unless overwrite, which moves that run's files aside."""
        self._setup_on_rank0(lambda: self._claim_run_dir(resume, overwrite))
        try:
            return self._fit(resume, fresh_if_none)
        except Preempted as e:
            self.log(f"{_signal_name(e.signum)} again: stopped at step {self.step}")
            return {"step": self.step, "stopped_by_signal": True, "signal": e.signum, "forced": True}
        finally:
            if self.is_main:
                self.run_dir.release()

    def _fit(self, resume: bool, fresh_if_none: bool) -> dict:
        previous = self._install_signal_handlers()
        try:
            if resume:
                self.resume(fresh_if_none)
            return self._train_loop()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _train_loop(self) -> dict:
        cfg = self.cfg
        if cfg.tensorboard and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:                       # an optional output: training goes on without it
                warnings.warn(f"--tensorboard: no TensorBoard logs ({e}; pip install tensorboard); log.jsonl "
                              "has every scalar", stacklevel=2)
            else:
                self.tb = SummaryWriter(os.path.join(cfg.out, "tb"))
        dataset = make_dataset(cfg.data, self.resolution, seed=cfg.seed, captions=not cfg.unconditional)
        if cfg.model == "upsampler":
            # Fixed real images for the sample grids: the dataset's first valid samples.
            pairs = [p for p in (dataset[i] for i in range(min(len(dataset), 16))) if p[0] is not None][:4] \
                if not isinstance(dataset, torch.utils.data.IterableDataset) else []
            if not pairs:
                pairs = [(torch.zeros(3, self.resolution, self.resolution), "")]
            self.sample_real = torch.stack([p[0] for p in pairs])
            self.sample_prompts = [p[1] for p in pairs]
            self.sample_z = self.sample_z[:len(pairs)]
        n_params = sum(p.numel() for m in (self.G, self.D) for p in m.parameters() if p.requires_grad) / 1e6
        self.log(f"training {self.model_config.name} {cfg.model} ({n_params:.2f}M trainable G+D parameters) "
                 f"on {self.device} x{self.world}, impl {cfg.impl}, data {cfg.data}, "
                 f"steps {self.step}->{cfg.steps}"
                 + (f" or {cfg.max_minutes:g} minutes" if cfg.max_minutes is not None else "")
                 + f", batch {cfg.batch_size}/rank, precision {self.precision}")
        bar = None
        if self.is_main and cfg.progress:
            tqdm = require("tqdm", "the progress bar (--no-progress runs without it)").tqdm
            # With a time budget the step count reached is unknown: the bar counts steps without a total.
            bar = tqdm(total=cfg.steps if cfg.max_minutes is None else None, initial=self.step, desc="train",
                       dynamic_ncols=True, file=sys.stderr)
        t_last, images_since = time.perf_counter(), 0
        deadline = None if cfg.max_minutes is None else t_last + 60.0 * cfg.max_minutes
        sums, counts = {}, {}                             # loss means over each log interval
        out_of_time = False
        bad_batches, tried, why = 0, 0, collections.Counter()    # batches in a row with no usable sample
        first_step = self.step
        profiler, profiled = None, 0
        try:
            with use_impl(cfg.impl):
                batches = self._batches(dataset)
                while self.step < cfg.steps:
                    batch = next(batches)
                    usable = batch is not None and batch[0].shape[0] > 0
                    # Every rank takes the same branch: all skip a batch that one rank lacks, all stop together.
                    # The time budget is checked after each step (this invocation always makes one).
                    missing, no_data, signalled, out_of_time = self._agree(
                        not usable, batch is None, deadline if self.step > first_step else None)
                    if signalled:
                        path = self.save_checkpoint()
                        self.log(f"signal {_signal_name(self.stop_signal)}: saved {path} at step {self.step}; exiting")
                        return {"step": self.step, "stopped_by_signal": True, "signal": self.stop_signal,
                                "checkpoint": path}
                    if no_data:
                        raise TrainingError(f"a rank received no data at all from --data {cfg.data} (rank "
                                            f"{self.rank}: {'none' if batch is None else 'some'}); a shard pattern "
                                            f"needs at least one shard per rank ({self.world} ranks)")
                    if out_of_time:
                        self.log(f"max_minutes={cfg.max_minutes:g} reached at step {self.step}; stopping")
                        break
                    # The batch is used (trained on or skipped) only now: a stop above leaves it to a resume.
                    self.batches_seen += 1
                    self.skipped_samples += sum(batch[2].values())
                    tried += cfg.batch_size
                    why.update(batch[2])
                    if missing:
                        bad_batches += 1
                        if bad_batches >= cfg.max_bad_batches:
                            reasons = ", ".join(f"{n} {r}" for r, n in why.most_common()) or "none counted here"
                            raise TrainingError(
                                f"no usable sample in {bad_batches} batches in a row from --data {cfg.data} "
                                f"({tried} samples tried on rank {self.rank}; dropped: {reasons}). Check the data; "
                                f"max_bad_batches (--max-bad-batches) sets the limit")
                        continue
                    bad_batches, tried = 0, 0
                    why.clear()
                    images, captions, _ = batch
                    if profiler is None and self.is_main and cfg.profile_steps and self.step == first_step + 1:
                        profiler = self._start_profiler()
                    stats = self.train_step(images, captions)
                    if profiler is not None:
                        profiled += 1
                        if profiled == cfg.profile_steps:
                            self._finish_profiler(profiler, profiled)
                            profiler = None
                    images_since += images.shape[0] * self.world
                    for k, v in stats.items():
                        if k != "skipped" and math.isfinite(v):
                            sums[k], counts[k] = sums.get(k, 0.0) + v, counts.get(k, 0) + 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(d=f"{stats['loss_d']:.3f}", g=f"{stats['loss_g']:.3f}")
                    if self.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                        now = time.perf_counter()
                        record = {"step": self.step, **{k: sums[k] / counts[k] for k in sums},
                                  "images_per_s": images_since / max(now - t_last, 1e-9),
                                  "bad_steps": self.bad_steps_total, "skipped_samples": self.skipped_samples,
                                  "time": time.time()}
                        t_last, images_since, sums, counts = now, 0, {}, {}
                        self._write_log(record)
                        if bar is not None:
                            bar.set_postfix(d=f"{stats['loss_d']:.3f}", g=f"{stats['loss_g']:.3f}",
                                            img_s=f"{record['images_per_s']:.1f}")
                    if self.is_main and cfg.sample_every and self.step % cfg.sample_every == 0:
                        self.write_samples(os.path.join(cfg.out, f"samples-{self.step:08d}.png"))
                    if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                        self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            if self.tb is not None:
                self.tb.close()
            if profiler is not None:                      # training ended before the profiled steps did
                self._finish_profiler(profiler, profiled)
        if self.step % max(cfg.ckpt_every, 1) != 0 or not cfg.ckpt_every:
            self.save_checkpoint()
        if self.is_main:
            self.write_samples(os.path.join(cfg.out, "samples-final.png"))
        return {"step": self.step, "bad_steps": self.bad_steps_total, "skipped_samples": self.skipped_samples,
                "out_of_time": out_of_time}

    def _agree(self, missing: bool, no_data: bool, deadline: Optional[float] = None) -> tuple:
        """(a rank lacks a usable batch, a rank has no data at all, a stop signal arrived, the time budget is
        spent), agreed by every rank, so that all take the same branch at the same step."""
        flags = torch.tensor([float(missing), float(no_data), 1.0 if self.stop_signal is not None else 0.0,
                              1.0 if deadline is not None and time.perf_counter() >= deadline else 0.0],
                             device=self.device)
        if self.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[2].item() > 0 and self.stop_signal is None:
            self.stop_signal = "peer"
        return tuple(bool(f > 0) for f in flags.tolist())


def _set_trainable(params, flag: bool) -> None:
    """Toggle the optimised parameters only; frozen ones (the CLIP tower) stay frozen."""
    for p in params:
        p.requires_grad_(flag)
