"""GigaGANPipeline: prompts in, images out, as a diffusers pipeline is called (docs/pipeline.md).

    pipe = GigaGANPipeline.from_pretrained("models/base", upsampler="models/upsampler")
    images = pipe(["a red circle on a blue background"], seed=0).images      # PIL images

It runs the networks' tensor-only entries (Generator.synthesize, then Upsampler.encode and synthesize_from on
each tile), eagerly or compiled (`compile`, gigagan/entry.py). Image i of a call draws everything random (its
z, the upsampler's z and its input noise) from its own CPU generator seeded with seed + i. Every batch the
networks see has batch_size rows, and the image of seed s is always row s % batch_size (rows no image of the call
takes are padding): a GEMM's tail rows may round differently from its full tiles, so a row's bits depend on its
place in the batch. Hence the same prompt and seed give the same image, bit for bit, on the same device, impl,
dtype and batch_size, however many prompts a call has.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from gigagan_kernels import use_impl

from .entry import EntryRunner, check_compile_mode
from .generator import Generator
from .upsampler import Upsampler, blend_tiles, check_tiling, tile_starts

OUTPUT_TYPES = ("pil", "pt")
MAX_OUTPUT_SIZE = 16384           # 4x the paper's 4K; a larger square would not fit any one GPU's memory


@dataclass
class GigaGANPipelineOutput:
    images: list      # PIL images, or (output_type="pt") float32 tensors [3, H, W] in [0, 1] on the device


class GigaGANPipeline:
    """The base generator, optionally followed by the text-conditioned upsampler (re-applied on overlapping
    tiles up to output_size, the paper's route to 4K)."""

    def __init__(self, generator: Generator, upsampler: Optional[Upsampler] = None, *, batch_size: int = 1,
                 compile: str = "auto", impl: str = "auto", overlap: Optional[int] = None, log=None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        check_compile_mode(compile)
        if upsampler is not None and generator.resolution < upsampler.in_resolution:
            raise ValueError(f"upsampler: its input is {upsampler.in_resolution} px but the base generator makes "
                             f"{generator.resolution} px images")
        limit = upsampler.in_resolution if upsampler is not None else math.inf
        if overlap is not None and (not isinstance(overlap, int) or not 0 <= overlap < limit):
            raise ValueError(f"overlap must be an integer in [0, {limit}) (the upsampler's input size), "
                             f"got {overlap!r}")
        self.generator = generator.eval()
        self.upsampler = upsampler.eval() if upsampler is not None else None
        self.batch_size, self.compile, self.impl, self.overlap = batch_size, compile, impl, overlap
        self.log = log or (lambda msg: None)
        self._runners = {}

    @classmethod
    def from_pretrained(cls, base_dir: Union[str, os.PathLike], upsampler: Union[str, os.PathLike, None] = None, *,
                        torch_dtype: Optional[torch.dtype] = None, device: Union[str, torch.device, None] = None,
                        **kwargs) -> "GigaGANPipeline":
        """From a folder of `gigagan export` (or a checkpoint file or run directory) of a base run, and optionally
        one of an upsampler run. kwargs: batch_size, compile, impl, overlap (see the class)."""
        generator = _load(base_dir, "base", "base_dir").generator
        ups = _load(upsampler, "upsampler", "upsampler").upsampler if upsampler is not None else None
        return cls(generator, ups, **kwargs).to(device, torch_dtype)

    def to(self, device: Union[str, torch.device, None] = None,
           dtype: Optional[torch.dtype] = None) -> "GigaGANPipeline":
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise ValueError(f"torch_dtype must be a floating-point torch.dtype, got {dtype!r}")
        for net in (self.generator, self.upsampler):
            if net is not None:
                net.to(device=device, dtype=dtype)
        self._runners = {}                                # compiled graphs belong to a device and dtype
        return self

    @property
    def device(self) -> torch.device:
        return self.generator.synthesis.const.device

    @property
    def dtype(self) -> torch.dtype:
        return self.generator.synthesis.const.dtype

    def _runner(self, name: str, fn) -> EntryRunner:
        if name not in self._runners:
            self._runners[name] = EntryRunner(fn, self.compile, self.device, name=name, log=self.log)
        return self._runners[name]

    def output_plan(self, output_size: Optional[int]) -> tuple:
        """(upsampler passes, final size) for output_size; None: one pass, or the base image without an upsampler."""
        R = self.generator.resolution
        if output_size is not None and (not isinstance(output_size, int) or isinstance(output_size, bool)
                                        or not 1 <= output_size <= MAX_OUTPUT_SIZE):
            raise ValueError(f"output_size must be an integer in [1, {MAX_OUTPUT_SIZE}], got {output_size!r}")
        if self.upsampler is None:
            if output_size is not None and output_size > R:
                raise ValueError(f"output_size {output_size} is larger than the base generator's {R} px and the "
                                 "pipeline has no upsampler (from_pretrained(..., upsampler=DIR))")
            return 0, output_size or R
        s = self.upsampler.scale
        if output_size is None:
            return 1, R * s
        passes = max(1, math.ceil(math.log(output_size / R, s) - 1e-9))
        return passes, output_size

    @torch.no_grad()
    def __call__(self, prompts: Union[str, Sequence[str]], seed: int = 0, truncation: float = 1.0,
                 num_images_per_prompt: int = 1, output_size: Optional[int] = None,
                 output_type: str = "pil") -> GigaGANPipelineOutput:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a str or a non-empty list of str, got {prompts!r}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if not isinstance(truncation, (int, float)) or not math.isfinite(truncation):
            raise ValueError(f"truncation must be a finite number, got {truncation!r}")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        passes, size = self.output_plan(output_size)
        captions = [p for p in prompts for _ in range(num_images_per_prompt)]
        seeds = [seed + i for i in range(len(captions))]
        bs = self.batch_size
        batches = {}                                      # batch number -> the images it holds
        for i, s in enumerate(seeds):
            batches.setdefault(s // bs, []).append(i)
        self._runner("generator", self.generator.synthesize).plan(len(batches))
        if self.upsampler is not None:
            self._runner("upsampler.encode", self.upsampler.encode).plan(len(batches))
            self._runner("upsampler.tile", self.upsampler.synthesize_from).plan(len(batches) * self._tiles(passes))
        images = [None] * len(captions)
        with use_impl(self.impl):
            for members in batches.values():
                rows = [members[0]] * bs                  # padding: a copy of one of the batch's images
                for i in members:
                    rows[seeds[i] % bs] = i
                batch = self._generate([captions[r] for r in rows], [seeds[r] for r in rows], float(truncation),
                                       passes, size)
                for i in members:
                    images[i] = batch[seeds[i] % bs]
        if output_type == "pil":
            from .images import to_pil
            return GigaGANPipelineOutput([to_pil(img) for img in images])
        return GigaGANPipelineOutput([(img.float() * 0.5 + 0.5).clamp(0, 1) for img in images])

    def _tiles(self, passes: int) -> int:
        """Upsampler calls per batch over `passes` passes (tiles of in_resolution, overlapping)."""
        if self.upsampler is None:
            return 0
        R, s, size, total = self.upsampler.in_resolution, self.upsampler.scale, self.generator.resolution, 0
        overlap = R // 4 if self.overlap is None else self.overlap
        for _ in range(passes):
            total += len(tile_starts(size, R, max(R - overlap, 1))) ** 2
            size *= s
        return total

    def _generate(self, captions: List[str], seeds: List[int], truncation: float, passes: int,
                  size: int) -> torch.Tensor:
        """One batch of batch_size rows: the base image, then `passes` tiled upsampler passes, then a resize."""
        G, U, dev, dtype = self.generator, self.upsampler, self.device, self.dtype
        rngs = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]    # CPU: the same numbers anywhere
        z = torch.stack([torch.randn(G.z_dim, generator=g) for g in rngs]).to(dev, dtype)
        tokens = G.tokenize(captions).to(dev)
        image = self._runner("generator", G.synthesize)(z, tokens, truncation=truncation)[0]
        if U is not None:
            z_up = torch.stack([torch.randn(U.z_dim, generator=g) for g in rngs]).to(dev, dtype)
            w, t_local, t_mask = self._runner("upsampler.encode", U.encode)(z_up, U.text_encoder.clip.tokenize(
                captions).to(dev))
            tile_fn = self._runner("upsampler.tile", U.synthesize_from)
            for _ in range(passes):
                # The paper's test-time noise augmentation of the input, drawn per image.
                input_noise = torch.stack([torch.randn(3, *image.shape[-2:], generator=g) for g in rngs])
                image = upsample_pass(tile_fn, U, image, (w, t_local, t_mask), input_noise.to(dev, dtype),
                                      self.overlap)
        if image.shape[-1] != size:
            image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False,
                                  antialias=size < image.shape[-1])
        return image


def upsample_pass(tile_fn, upsampler: Upsampler, image: torch.Tensor, conditioning: tuple,
                  input_noise: Optional[torch.Tensor], overlap: Optional[int] = None) -> torch.Tensor:
    """One pass of the upsampler over image [B, 3, H, W] (H, W >= its input), on overlapping tiles of its input size
    blended together. tile_fn is Upsampler.synthesize_from or a runner of it; conditioning is Upsampler.encode's
    (w, t_local, t_mask); input_noise (unit normal, like image, or None) is sliced with each tile, so overlapping
    tiles see the same noise."""
    R = upsampler.in_resolution
    overlap = check_tiling(upsampler, image, overlap)

    def tile(top, left):
        window = (slice(None), slice(None), slice(top, top + R), slice(left, left + R))
        noise = None if input_noise is None else input_noise[window].contiguous()
        return tile_fn(image[window].contiguous(), *conditioning, input_noise=noise)[0]
    return blend_tiles(tile, tuple(image.shape), R, upsampler.scale, overlap, image)


def upsample_image(upsampler: Upsampler, image: torch.Tensor, captions: List[str], seed: int,
                   overlap: Optional[int] = None, compile: str = "off", device=None, log=None) -> torch.Tensor:
    """`gigagan upsample`: one pass over image [B, 3, H, W] in [-1, 1]. z, then the input noise, come from one CPU
    generator seeded with `seed`; the tiles run through Upsampler.synthesize_from under `compile`."""
    device = device or image.device
    rng = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(image.shape[0], upsampler.z_dim, generator=rng).to(device, image.dtype)
    input_noise = torch.randn(image.shape, generator=rng).to(device, image.dtype)
    conditioning = upsampler.encode(z, upsampler.text_encoder.clip.tokenize(captions).to(device))
    R = upsampler.in_resolution
    stride = R - check_tiling(upsampler, image, overlap)
    tiles = len(tile_starts(image.shape[2], R, stride)) * len(tile_starts(image.shape[3], R, stride))
    run = EntryRunner(upsampler.synthesize_from, compile, device, name="upsampler", log=log).plan(tiles)
    return upsample_pass(run, upsampler, image, conditioning, input_noise, overlap)


def _load(path, need: str, argument: str):
    """The GigaGAN of a pretrained folder or hub id (GigaGAN.from_pretrained: only the networks the file holds,
    checked against config.json before anything is allocated), checkpoint file or run directory that trained
    `need` ("base" or "upsampler"). A folder or checkpoint that cannot be used raises CheckpointError, one line
    starting with `argument`."""
    import json
    import warnings
    from .hub import is_hub_id
    from .training import CheckpointError
    from .training.checkpoint import model_from_checkpoint
    path = os.fspath(path)
    if not os.path.exists(path) and not is_hub_id(path):
        raise FileNotFoundError(f"{argument}: {path} does not exist (a folder of gigagan export, a checkpoint, a "
                                "run directory or a hub id org/name)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # the folder carries the CLIP tower's weights
            model, state = model_from_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(f"{argument}: {e}") from None
    trained = json.loads(state.get("train_config", "{}")).get("model", "base")
    if trained != need:
        article = lambda kind: "an" if kind[0] in "aeiou" else "a"  # noqa: E731
        raise ValueError(f"{argument}: {path} holds {article(trained)} {trained} run, not {article(need)} {need} run")
    if getattr(model, "generator" if need == "base" else "upsampler", None) is None:
        raise ValueError(f"{argument}: {path} has no {'generator' if need == 'base' else 'upsampler'}")
    return model
