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

import copy
import dataclasses
import glob
import inspect
import json
import math
import os
import random
import re
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gigagan_kernels import use_impl

from .config import GigaGANConfig, get_preset, upsampler_discriminator_config
from .data import StepSampler, collate_pairs, fixed_prompts, make_dataset
from .discriminator import Discriminator
from .losses import (clip_contrastive_loss, discriminator_loss, generator_loss, matching_aware_d_loss,
                     matching_aware_g_loss, mismatched, perceptual_loss, r1_from_logits)
from .model import GigaGAN
from .text import CLIPText

CKPT_PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")


MODELS = ("base", "upsampler")


@dataclass
class TrainConfig:
    preset: str = "tiny"
    model: str = "base"                 # "base": the generator; "upsampler": the text-conditioned upsampler
    data: str = "builtin"
    steps: int = 1000
    max_minutes: Optional[float] = None # also stop (checkpoint, final samples) after this much training time,
                                        # counted from this invocation's first step (a resume gets a fresh budget)
    batch_size: int = 4                 # per rank and per step (= grad_accum micro-batches)
    grad_accum: int = 1
    lr: float = 0.0025
    betas: tuple = (0.0, 0.99)
    attention_weight_decay: float = 0.01
    r1_gamma: float = 0.2048
    r1_interval: int = 16
    matching_aware: bool = True
    ema_half_life_images: float = 10_000.0
    ema_rampup: float = 0.05            # StyleGAN2-ADA: half-life <= 5% of the images seen so far
    impl: str = "auto"
    device: Optional[str] = None        # "cuda" or "cpu"; None: CUDA when available
    out: str = "runs/gigagan"
    seed: int = 0
    log_every: int = 10
    sample_every: int = 200
    ckpt_every: int = 200
    keep_checkpoints: int = 3
    max_bad_steps: int = 20
    num_workers: int = 0
    tensorboard: bool = False
    progress: bool = True
    perceptual_weight: float = 10.0     # upsampler only (paper: 10)
    perceptual_weights: Optional[str] = None  # a local torchvision VGG16 state dict (else its cache, else random)
    clip_weight: float = 0.0            # CLIP contrastive loss on G (paper eq. 9); needs pretrained CLIP
    vision_aided_weight: float = 0.0    # vision-aided D head on frozen CLIP features; needs pretrained CLIP
    guidance_clip: str = "ViT-B-32"     # the CLIP both use (the vision-aided paper's choice)
    guidance_clip_pretrained: Optional[str] = None  # a local checkpoint file, or an open_clip tag in the cache
    allow_random_clip: bool = False     # run those losses with a random CLIP (smoke tests only: they are noise)


class TrainingError(RuntimeError):
    pass


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
def atomic_torch_save(obj, path: str) -> None:
    """Write to a temp file in the same directory, fsync, then os.replace: a crash leaves the old file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint with weights_only=True; a truncated or corrupt file raises CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                                   # noqa: BLE001 - any failure means unusable
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})") from e
    for key in ("step", "config", "model", "g_ema", "opt_g", "opt_d"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}; it is not a gigagan training checkpoint")
    return state


def list_checkpoints(directory: str) -> list:
    """Checkpoint paths in a run directory, newest first."""
    if not os.path.isdir(directory):
        return []
    found = [(int(m.group(1)), os.path.join(directory, n)) for n in os.listdir(directory)
             if (m := CKPT_PATTERN.match(n))]
    return [p for _, p in sorted(found, reverse=True)]


def load_latest_checkpoint(directory: str, log=print) -> Optional[dict]:
    """The newest loadable checkpoint in `directory`; a corrupt one is reported and the previous one used."""
    for path in list_checkpoints(directory):
        try:
            state = load_checkpoint(path)
            state["path"] = path
            return state
        except CheckpointError as e:
            log(f"warning: {e}; falling back to the previous checkpoint")
    return None


def model_from_checkpoint(path: str, map_location="cpu") -> tuple:
    """(GigaGAN with G replaced by its EMA, checkpoint dict) from a checkpoint file or a run directory."""
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
        self.rank, self.world, self.device = init_distributed(cfg.device)
        self.is_main = self.rank == 0
        self._log = log or (lambda msg: print(msg, flush=True))
        if cfg.max_minutes is not None and not cfg.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0 (or None for no time limit), got {cfg.max_minutes}")
        if cfg.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1 (resume needs one), got {cfg.keep_checkpoints}")
        if cfg.batch_size % cfg.grad_accum:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by grad_accum {cfg.grad_accum}")
        torch.manual_seed(cfg.seed)                       # identical initial weights on every rank
        random.seed(cfg.seed)
        self.model_config = model_config or get_preset(cfg.preset)
        with warnings.catch_warnings():
            if not self.is_main:
                warnings.simplefilter("ignore")           # the random-CLIP warning: once, from rank 0
            self.model = GigaGAN(self.model_config).to(self.device)
        if cfg.model not in MODELS:
            raise ValueError(f"TrainConfig.model must be one of {MODELS}, got {cfg.model!r}")
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
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                         else torch.autocast("cpu", enabled=False))
        self.sample_prompts = fixed_prompts(8)
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
                             "batches_seen": self.batches_seen}}

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
        _set_rng_state(state["rng"])

    def save_checkpoint(self) -> Optional[str]:
        if not self.is_main:
            return None
        os.makedirs(self.cfg.out, exist_ok=True)
        path = os.path.join(self.cfg.out, f"ckpt-{self.step:08d}.pt")
        atomic_torch_save(self.state_dict(), path)
        for old in list_checkpoints(self.cfg.out)[self.cfg.keep_checkpoints:]:
            os.unlink(old)
        return path

    def resume(self) -> bool:
        """Load the newest good checkpoint of cfg.out (every rank reads the same file)."""
        state = load_latest_checkpoint(self.cfg.out, log=self.log)
        if state is None:
            self.log(f"resume: no checkpoint in {self.cfg.out}; starting from step 0")
            return False
        self.load_state_dict(state)
        self.log(f"resumed from {state['path']} at step {self.step}")
        return True

    # -- one training step ---------------------------------------------------------------------
    def _all_finite(self, *losses) -> bool:
        ok = torch.tensor([float(all(torch.isfinite(l).all() for l in losses))], device=self.device)
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
        chunks_emb = ([self.guidance.encode_text(caps) for caps in chunks_cap] if self.guidance is not None
                      else [None] * len(chunks_cap))

        # ---- D phase
        _set_trainable(self.d_params, True)
        _set_trainable(self.g_params, False)
        self.opt_d.zero_grad(set_to_none=True)
        d_losses = []
        for k, (real, text, t_emb) in enumerate(zip(chunks_img, chunks_text, chunks_emb)):
            B = real.shape[0]
            z = torch.randn(B, G.z_dim, device=self.device)
            with torch.no_grad(), self.autocast:
                fake = [f.float() for f in self._generate(G, real, text, z)]
            with self._no_sync(self.D_ddp, k < micro - 1), self.autocast:
                real_in = real.detach().requires_grad_(do_r1)
                real_pyr = self.D.check_pyramid(real_in)
                # [real, fake] under the true captions, then (matching-aware) under mismatched ones;
                # D's trunk runs once on the images.
                pyramid = [torch.cat([r, f]) for r, f in zip(real_pyr, fake)]
                texts = [text, text] + ([mismatched(text)] * 2 if cfg.matching_aware else [])
                logits = self.D_ddp(pyramid, CLIPText.cat(texts), captions_per_image=len(texts) // 2, parts=2)
                split = [lg.split(B) for lg in logits]
                loss = discriminator_loss([s[0] for s in split], [s[1] for s in split])
                if cfg.matching_aware:
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
                (loss / micro).backward()
        d_ok = self._all_finite(*d_losses)

        # ---- G phase
        _set_trainable(self.d_params, False)
        _set_trainable(self.g_params, True)
        self.opt_g.zero_grad(set_to_none=True)
        g_losses = []
        for k, (real, text, t_emb) in enumerate(zip(chunks_img, chunks_text, chunks_emb)):
            B = real.shape[0]
            z = torch.randn(B, G.z_dim, device=self.device)
            with self._no_sync(self.G_ddp, k < micro - 1), self.autocast:
                fake = self._generate(self.G_ddp, real, text, z, update_w_avg=True)
                if cfg.matching_aware:
                    logits = D([f.float() for f in fake], CLIPText.cat([text, mismatched(text)]), captions_per_image=2)
                    split = [lg.split(B) for lg in logits]
                    loss = generator_loss([s[0] for s in split]) + matching_aware_g_loss([s[1] for s in split])
                else:
                    loss = generator_loss(D([f.float() for f in fake], text))
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
                (loss / micro).backward()
        g_ok = self._all_finite(*g_losses) and self._grads_finite()
        _set_trainable(self.d_params, True)

        if d_ok and g_ok:
            self.opt_d.step()
            self.opt_g.step()
            self._update_ema(images.shape[0] * self.world)
            self.bad_steps_in_row = 0
            stats["skipped"] = False
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
        self.step += 1
        return stats

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

    def _write_log(self, record: dict) -> None:
        with open(os.path.join(self.cfg.out, "log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def _install_signal_handlers(self):
        def handler(signum, frame):
            self.stop_signal = signum
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        return previous

    def _loader(self, dataset):
        cfg = self.cfg
        # Its own generator: creating a loader must not draw from the global RNG, or a resumed run's
        # z and noise would drift from an uninterrupted run's.
        common = dict(batch_size=cfg.batch_size, collate_fn=collate_pairs, num_workers=cfg.num_workers,
                      drop_last=True, pin_memory=self.device.type == "cuda",
                      generator=torch.Generator().manual_seed(cfg.seed + self.rank))
        if isinstance(dataset, torch.utils.data.IterableDataset):
            return torch.utils.data.DataLoader(dataset, **common)
        sampler = StepSampler(len(dataset), cfg.batch_size, self.rank, self.world, cfg.seed, self.batches_seen)
        return torch.utils.data.DataLoader(dataset, sampler=sampler, **common)

    def fit(self, resume: bool = False) -> dict:
        cfg = self.cfg
        if self.is_main:
            os.makedirs(cfg.out, exist_ok=True)
            for stale in glob.glob(os.path.join(cfg.out, ".tmp-*")):   # left by a killed writer
                os.unlink(stale)
        if resume:
            self.resume()
        if cfg.tensorboard and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise TrainingError("--tensorboard needs the tensorboard package (pip install tensorboard)") from e
            self.tb = SummaryWriter(os.path.join(cfg.out, "tb"))
        dataset = make_dataset(cfg.data, self.resolution, seed=cfg.seed)
        if cfg.model == "upsampler":
            # Fixed real images for the sample grids: the dataset's first valid samples.
            pairs = [p for p in (dataset[i] for i in range(min(len(dataset), 16))) if p is not None][:4] \
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
                 + f", batch {cfg.batch_size}/rank")
        previous = self._install_signal_handlers()
        bar = None
        if self.is_main and cfg.progress:
            from tqdm import tqdm
            # With a time budget the step count reached is unknown: the bar counts steps without a total.
            bar = tqdm(total=cfg.steps if cfg.max_minutes is None else None, initial=self.step, desc="train",
                       dynamic_ncols=True, file=sys.stderr)
        t_last, images_since = time.perf_counter(), 0
        deadline = None if cfg.max_minutes is None else t_last + 60.0 * cfg.max_minutes
        sums, counts = {}, {}                             # loss means over each log interval
        out_of_time = False
        try:
            with use_impl(cfg.impl):
                while self.step < cfg.steps:
                    for images, captions, dropped in self._loader(dataset):
                        self.batches_seen += 1
                        self.skipped_samples += dropped
                        if images.shape[0] == 0:
                            continue
                        stats = self.train_step(images, captions)
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
                        signalled, out_of_time = self._stop_requested(deadline)
                        if signalled:
                            path = self.save_checkpoint()
                            self.log(f"signal {self.stop_signal}: saved {path} at step {self.step}; exiting")
                            return {"step": self.step, "stopped_by_signal": True}
                        if self.step >= cfg.steps or out_of_time:
                            break
                    if out_of_time:
                        self.log(f"max_minutes={cfg.max_minutes:g} reached at step {self.step}; stopping")
                        break
                    if isinstance(dataset, torch.utils.data.IterableDataset):
                        continue                          # a stream: start another pass
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            if bar is not None:
                bar.close()
            if self.tb is not None:
                self.tb.close()
        if self.step % max(cfg.ckpt_every, 1) != 0 or not cfg.ckpt_every:
            self.save_checkpoint()
        if self.is_main:
            self.write_samples(os.path.join(cfg.out, "samples-final.png"))
        return {"step": self.step, "bad_steps": self.bad_steps_total, "skipped_samples": self.skipped_samples,
                "out_of_time": out_of_time}

    def _stop_requested(self, deadline: Optional[float] = None) -> tuple:
        """(a stop signal arrived, the time budget is spent), on any rank: every rank stops at the same step."""
        flags = torch.tensor([1.0 if self.stop_signal is not None else 0.0,
                              1.0 if deadline is not None and time.perf_counter() >= deadline else 0.0],
                             device=self.device)
        if self.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0].item() > 0 and self.stop_signal is None:
            self.stop_signal = "peer"
        return flags[0].item() > 0, flags[1].item() > 0


def _set_trainable(params, flag: bool) -> None:
    """Toggle the optimised parameters only; frozen ones (the CLIP tower) stay frozen."""
    for p in params:
        p.requires_grad_(flag)
