"""TrainState: what a checkpoint holds and a step advances. The networks, their optimisers, the EMA of G, the
mixed-precision set-up, the loss and the counters, built for a TrainConfig on one process or under torchrun;
train_step makes one step and state_dict/load_state_dict save and restore it all. The loop that feeds it
batches is loop.py's Trainer.

A step: the frozen text towers encode each micro-batch's captions once; phase "D" then phase "G" each zero
their optimiser's gradients and call the loss's accumulate_gradients on every micro-batch; one collective
then says whether every rank's losses and gradients are finite; AdamW steps both networks and the EMA
follows G, or the step is skipped on every rank (counted; fp16 overflow only lowers the loss scale).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import random
import warnings
from typing import Optional

import torch
import torch.distributed as dist

from ..augment import parse_policy
from ..config import GigaGANConfig, apply_overrides, get_preset, upsampler_discriminator_config
from .. import entry
from ..discriminator import Discriminator
from ..entry import StepCompilePlan
from ..model import GigaGAN
from ..rundir import new_run_id
from . import optim
from .checkpoint import rng_state, set_rng_state
from .config import TrainConfig
from .distributed import agree, init_distributed, wrap
from .ema import EMA
from .errors import CheckpointError, TrainingError
from .loss import PHASES, CaptionPool, GigaGANLoss, MicroBatch, UpsamplerLoss
from .resume import recorded_config


class TrainState:
    """The networks, optimisers, EMA, precision, loss and counters of a run, and train_step. Rank 0 logs."""

    def __init__(self, cfg: TrainConfig, model_config: Optional[GigaGANConfig] = None, log=None):
        self.cfg = cfg
        cfg.validate()
        self.rank, self.world, self.device = init_distributed(cfg.device)
        self.is_main = self.rank == 0
        self._log = log or (lambda msg: print(msg, flush=True))
        torch.manual_seed(cfg.seed)                       # identical initial weights on every rank
        random.seed(cfg.seed)
        self.model_config = apply_overrides(model_config or get_preset(cfg.preset), cfg.model_overrides)
        if cfg.text_encoder_pretrained:
            text = dataclasses.replace(self.model_config.text, clip_pretrained=cfg.text_encoder_pretrained)
            self.model_config = dataclasses.replace(self.model_config, text=text)
        self._build_networks()
        self.ema = EMA(self.G, cfg.ema_half_life_images, cfg.ema_rampup)
        self.G_ema = self.ema.model
        self.G_ema.text_encoder.clip = self.model.clip    # share the frozen tower instead of a copy
        self.opt_g = optim.adamw(optim.param_groups(self.G, cfg.attention_weight_decay), cfg)
        d_groups = optim.param_groups(self.D, cfg.attention_weight_decay)
        if self.vision_head is not None:
            d_groups.append({"params": list(self.vision_head.parameters()), "weight_decay": 0.0})
        self.opt_d = optim.adamw(d_groups, cfg)
        self.G_ddp, self.D_ddp = wrap(self.G, self.device, self.world), wrap(self.D, self.device, self.world)
        self.vision_head_ddp = wrap(self.vision_head, self.device, self.world)
        # Mixed precision: autocast in bf16 or fp16; fp16 adds dynamic loss scaling (one scaler for both
        # optimisers); a scaled step whose gradients overflow is skipped and the scale lowered, not counted bad.
        self.precision = cfg.precision if cfg.precision != "auto" else ("bf16" if self.device.type == "cuda"
                                                                         else "fp32")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.autocast = (torch.autocast(self.device.type, dtype=dtype) if dtype is not None
                         else torch.autocast(self.device.type, enabled=False))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        common = dict(G=self.G, D=self.D, G_ddp=self.G_ddp, D_ddp=self.D_ddp, cfg=cfg,
                      augment_policy=parse_policy(cfg.augment), autocast=self.autocast, backward=self._backward,
                      guidance=self.guidance, vision_head=self.vision_head, vision_head_ddp=self.vision_head_ddp)
        self.loss = (UpsamplerLoss(perceptual=self.perceptual, **common) if cfg.model == "upsampler"
                     else GigaGANLoss(**common))
        # Recent distinct captions: the matching-aware loss's mismatched captions where rolling the batch
        # would pair a caption with itself (a batch of one, or repeated captions).
        self.captions = CaptionPool(self.model.clip, log=self.log)
        self.compile_plan = StepCompilePlan(cfg.compile, self.device, self.world, log=self.log)
        self.step, self.bad_steps_total, self.bad_steps_in_row, self.skipped_samples = 0, 0, 0, 0
        self.batches_seen = 0                             # the data position, which a resume continues from
        self.skipped_by_reason = collections.Counter()    # every rank's dropped samples since the last log record
        self.run_id = new_run_id()                        # a resume takes the checkpoint's: one run, one id
        self.saved_decisions = None                       # the autotune decisions of the checkpoint resumed from

    def _build_networks(self) -> None:
        """GigaGAN (text towers, G, D); for the upsampler its own MS-I/O D and the perceptual network; the CLIP
        guidance and vision-aided head when their losses are on. Only rank 0 warns (e.g. of random weights)."""
        cfg = self.cfg
        with warnings.catch_warnings():
            if not self.is_main:
                warnings.simplefilter("ignore")
            self.model = GigaGAN(self.model_config).to(self.device)
            self.perceptual = None
            if cfg.model == "upsampler":
                if self.model.upsampler is None:
                    raise ValueError(f"preset {self.model_config.name!r} has no upsampler to train")
                self.G = self.model.upsampler
                torch.manual_seed(cfg.seed + 1)
                self.D = Discriminator(upsampler_discriminator_config(self.model_config),
                                       self.model.clip).to(self.device)
                self.resolution = self.G.out_resolution
                if cfg.perceptual_weight > 0:
                    from ..perceptual import PerceptualFeatures
                    self.perceptual = PerceptualFeatures(cfg.perceptual_weights).to(self.device)
            else:
                self.G, self.D = self.model.generator, self.model.discriminator
                self.resolution = self.G.resolution
        self.guidance, self.vision_head = None, None
        if cfg.clip_weight > 0 or cfg.vision_aided_weight > 0:
            from ..clip_guidance import FrozenCLIP, VisionAidedHead
            self.guidance = FrozenCLIP(cfg.guidance_clip, cfg.guidance_clip_pretrained).to(self.device)
            if self.guidance.pretrained_from is None and not cfg.allow_random_clip:
                raise ValueError("clip_weight and vision_aided_weight need pretrained CLIP weights: set "
                                 "guidance_clip_pretrained (--guidance-clip-pretrained) to a local checkpoint or a "
                                 "cached open_clip tag. With a random CLIP these losses are noise; "
                                 "allow_random_clip (--allow-random-clip) overrides, for smoke tests only.")
            if cfg.vision_aided_weight > 0:
                self.vision_head = VisionAidedHead(self.guidance.embed_dim).to(self.device)

    @property
    def g_params(self) -> list:
        return [p for group in self.opt_g.param_groups for p in group["params"]]

    @property
    def d_params(self) -> list:
        return [p for group in self.opt_d.param_groups for p in group["params"]]

    def log(self, msg: str) -> None:
        if self.is_main:
            self._log(msg)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "run_id": self.run_id, "world_size": self.world,
                "config": self.model_config.to_json(),
                "train_config": json.dumps(recorded_config(self.cfg, self.device.type, self.precision)),
                "model": self.model.state_dict(), "g_ema": self.G_ema.state_dict(),
                "upsampler_discriminator": self.D.state_dict() if self.cfg.model == "upsampler" else {},
                "vision_aided_head": self.vision_head.state_dict() if self.vision_head is not None else {},
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "rng": rng_state(),
                "counters": {"bad_steps_total": self.bad_steps_total, "skipped_samples": self.skipped_samples,
                             "batches_seen": self.batches_seen,
                             "samples_seen": self.batches_seen * self.cfg.batch_size * self.world,
                             "skipped_by_reason": dict(self.skipped_by_reason)},
                "autotune": autotune_decisions(),
                "caption_pool": list(self.captions.recent),
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
        for opt, saved in ((self.opt_g, state["opt_g"]), (self.opt_d, state["opt_d"])):
            # The moments are the checkpoint's; lr, betas and weight decay this run's (steer fields), for real.
            steer = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
            opt.load_state_dict(saved)
            for group, values in zip(opt.param_groups, steer):
                group.update(values)
        self.step = int(state["step"])
        counters = state["counters"]
        self.bad_steps_total = int(counters["bad_steps_total"])
        self.skipped_samples = int(counters["skipped_samples"])
        self.skipped_by_reason = collections.Counter(counters.get("skipped_by_reason", {}))
        # The data position is kept in samples, so that the same global batch on another number of ranks (or, with
        # --allow-config-change, another global batch) continues after the samples already used.
        per_step = self.cfg.batch_size * self.world
        samples = counters.get("samples_seen")
        self.batches_seen = int(counters["batches_seen"]) if samples is None else int(samples) // per_step
        if samples is not None and int(samples) % per_step:
            self.log(f"resume: the data position, {samples} samples, is not a whole number of global batches of "
                     f"{per_step}; continuing after sample {self.batches_seen * per_step}")
        self.run_id = state.get("run_id") or self.run_id
        self.saved_decisions = state.get("autotune")
        self.captions.recent.clear()
        self.captions.recent.extend(state.get("caption_pool", []))
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        set_rng_state(state["rng"])

    # -- one training step ---------------------------------------------------------------------
    def _micro_batches(self, images: torch.Tensor, captions: list) -> list:
        """The step's micro-batches, with the frozen text towers' outputs (computed once, used by both phases)."""
        cfg = self.cfg
        micro = max(1, min(cfg.grad_accum, images.shape[0]))
        batches, start = [], 0
        for real in images.chunk(micro):
            caps = captions[start:start + real.shape[0]]
            start += real.shape[0]
            batches.append((real, caps, self.model.clip.encode(caps)))
        return [MicroBatch(real, text, self.captions.mismatched(text, caps) if cfg.matching_aware else None,
                           self.guidance.encode_text(caps) if self.guidance is not None else None)
                for real, caps, text in batches]

    def train_step(self, images: torch.Tensor, captions: list) -> dict:
        """One step of both phases. Returns the step's terms (0-d tensors, means over micro-batches), "skipped"
        and, under fp16, "loss_scale"."""
        cfg = self.cfg
        if self.compile_plan.start_step(cfg.steps - self.step):
            self.log(f"compile: G and D under torch.compile from step {self.step} (--compile {cfg.compile})")
            entry.keep_inductor_cache()
            self.loss.compile(entry.TRAIN_COMPILE_BACKEND)
        images = images.to(self.device, non_blocking=True)
        do_r1 = cfg.r1_gamma > 0 and cfg.r1_interval > 0 and self.step % cfg.r1_interval == 0
        batches = self._micro_batches(images, captions)
        stats, finite = {}, []
        for phase in PHASES:
            trained, frozen = (self.opt_d, self.opt_g) if phase == "D" else (self.opt_g, self.opt_d)
            _set_trainable(trained, True)
            _set_trainable(frozen, False)
            trained.zero_grad(set_to_none=True)
            losses = []
            for k, batch in enumerate(batches):
                loss, terms = self.loss.accumulate_gradients(phase, batch, sync=k == len(batches) - 1, r1=do_r1,
                                                             scale=1.0 / len(batches))
                losses.append(loss)
                for name, value in terms.items():
                    stats[name] = stats.get(name, 0.0) + value / len(batches)
            finite.append(torch.stack([torch.isfinite(loss).all() for loss in losses]).all())
        _set_trainable(self.opt_d, True)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt_d)
            self.scaler.unscale_(self.opt_g)
        grads = [p.grad for p in self.g_params + self.d_params if p.grad is not None]
        finite.append(torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else True)
        # The step's one host sync: every rank skips together.
        d_ok, g_losses_ok, grads_ok = agree(finite, self.device, self.world, op=dist.ReduceOp.MIN)
        if d_ok and g_losses_ok and grads_ok:
            if self.scaler is not None:
                self.scaler.step(self.opt_d)
                self.scaler.step(self.opt_g)
                self.scaler.update()
                stats["loss_scale"] = float(self.scaler.get_scale())
            else:
                self.opt_d.step()
                self.opt_g.step()
            self.ema.update(self.step, images.shape[0] * self.world)
            self.bad_steps_in_row = 0
            stats["skipped"] = False
        elif self.scaler is not None and d_ok and g_losses_ok:
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
            self.log(f"step {self.step}: non-finite loss (D {float(stats['loss_d']):.4g}, G "
                     f"{float(stats['loss_g']):.4g}); step skipped ({self.bad_steps_in_row} in a row, "
                     f"{self.bad_steps_total} in total)")
            if self.bad_steps_in_row >= cfg.max_bad_steps:
                raise TrainingError(f"training stopped: {self.bad_steps_in_row} non-finite steps in a row at step "
                                    f"{self.step} (max_bad_steps={cfg.max_bad_steps}). Lower the learning rate, "
                                    "raise r1_gamma, or resume from an earlier checkpoint.")
        self.captions.remember(captions)
        self.step += 1
        return stats

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()


def autotune_decisions() -> dict:
    """{"op key": choice} of the autotune decisions this process knows, for a checkpoint (plain strings)."""
    from gigagan_kernels import autotune_report
    return {f"{r['op']} {r['key']}": str(r["choice"]) for r in autotune_report()}


def _set_trainable(optimizer, flag: bool) -> None:
    """Toggle the optimised parameters only; frozen ones (the CLIP tower) stay frozen."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.requires_grad_(flag)
