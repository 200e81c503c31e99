"""Evaluation: FID (torchmetrics' FrechetInceptionDistance on torch-fidelity's Inception) and CLIP score
(open_clip), from local weight files only; nothing is downloaded.

FID compares Inception pool features of two image sets; CLIP score is 100 * mean(max(cos(image, caption), 0))
between each generated image and its prompt. Both sets are resized to one resolution first (bicubic,
antialiased; `resolution`, 299 by default, Inception's own), so folders of mixed sizes compare fairly.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .extras import require

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class EvaluationError(ValueError):
    """Bad evaluation input; the message names the flag or argument."""


def image_files(directory: str, flag: str = "--images") -> list:
    if not os.path.isdir(directory):
        raise EvaluationError(f"{flag} {directory}: not a directory")
    files = sorted(f for f in os.listdir(directory) if f.lower().endswith(IMAGE_SUFFIXES))
    if len(files) < 2:
        raise EvaluationError(f"{flag} {directory}: FID needs at least 2 images, found {len(files)}")
    return [os.path.join(directory, f) for f in files]


def load_images(paths: Sequence[str], batch_size: int, resolution: int,
                skipped: Optional[list] = None) -> Iterator[tuple]:
    """(batch [B, 3, R, R] in [-1, 1], the batch's paths), in the order of `paths`; unreadable files are
    skipped (and appended to `skipped`), never a crash."""
    from .data import to_rgb
    Image = require("PIL.Image", "reading images")
    batch, names = [], []
    for path in paths:
        try:
            with Image.open(path) as im:
                im = to_rgb(im).resize((resolution, resolution), Image.Resampling.BICUBIC)
                batch.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
                names.append(path)
        except (OSError, ValueError):
            if skipped is not None:
                skipped.append(path)
            continue
        if len(batch) == batch_size:
            yield torch.stack(batch).float() / 127.5 - 1, names
            batch, names = [], []
    if batch:
        yield torch.stack(batch).float() / 127.5 - 1, names


def resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    return F.interpolate(images.float(), size=(resolution, resolution), mode="bicubic", antialias=True,
                         align_corners=False).clamp(-1, 1)


def inception_features(weights_path: Optional[str]):
    """torch-fidelity's FID Inception (2048-d pool features) from a local weights file."""
    if not weights_path:
        raise EvaluationError("--inception-weights is required: the FID Inception weights file "
                              "(pt_inception-2015-12-05-6726825d.pth from torch-fidelity's releases); nothing is "
                              "downloaded")
    if not os.path.isfile(weights_path):
        raise EvaluationError(f"--inception-weights {weights_path}: no such file")
    fid = require("torchmetrics.image.fid", "FID")
    require("torch_fidelity", "FID")
    return fid.NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                  feature_extractor_weights_path=weights_path)


def frechet_distance(real: Iterable[torch.Tensor], fake: Iterable[torch.Tensor], feature: torch.nn.Module,
                     device="cpu", resolution: int = 299) -> dict:
    """FID between two streams of [B, 3, H, W] batches in [-1, 1]. `feature` maps [B, 3, R, R] uint8 images to
    [B, F] features (the Inception of inception_features, or any module: the tests use small random ones)."""
    fid_module = require("torchmetrics.image.fid", "FID")
    metric = fid_module.FrechetInceptionDistance(feature=feature, normalize=False,
                                                 input_img_size=(3, resolution, resolution)).to(device)
    counts = {}
    for name, stream in (("real", real), ("fake", fake)):
        n = 0
        for batch in stream:
            images = ((resize(batch, resolution) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            metric.update(images.to(device), real=name == "real")
            n += len(batch)
        counts[name] = n
        if n < 2:
            raise EvaluationError(f"FID needs at least 2 {name} images, got {n}")
    return {"fid": float(metric.compute()), "num_real": counts["real"], "num_fake": counts["fake"]}


def load_clip(model_name: str, weights_path: Optional[str], device="cpu"):
    """An open_clip model and tokenizer from a local checkpoint file (--clip-weights)."""
    if not weights_path:
        raise EvaluationError("--clip-weights is required for the CLIP score: a local open_clip checkpoint file")
    if not os.path.isfile(weights_path):
        raise EvaluationError(f"--clip-weights {weights_path}: no such file")
    open_clip = require("open_clip", "the CLIP score")
    model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=weights_path, device=device)
    return model.eval(), open_clip.get_tokenizer(model_name)


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@torch.no_grad()
def clip_score(batches: Iterable[tuple], encode_image: Callable, encode_text: Callable, image_size: int,
               device="cpu") -> float:
    """100 * mean over images of max(cos(image embedding, caption embedding), 0). `batches` yields (images in
    [-1, 1], captions); the encoders are a CLIP model's (or any pair of functions: the tests use known ones)."""
    mean = torch.tensor(CLIP_MEAN, device=device)[:, None, None]
    std = torch.tensor(CLIP_STD, device=device)[:, None, None]
    total, count = 0.0, 0
    for images, captions in batches:
        pixels = (resize(images.to(device), image_size) + 1) / 2
        image_emb = F.normalize(encode_image((pixels - mean) / std).float(), dim=-1)
        text_emb = F.normalize(encode_text(list(captions)).float(), dim=-1)
        total += (100 * (image_emb * text_emb).sum(-1).clamp(min=0)).sum().item()
        count += len(images)
    if count == 0:
        raise EvaluationError("the CLIP score needs at least one image with a prompt")
    return total / count


def folder_prompts(directory: str) -> dict:
    """{file name: prompt} from the prompts.jsonl that `gigagan sample --outdir` writes."""
    manifest = os.path.join(directory, "prompts.jsonl")
    if not os.path.isfile(manifest):
        raise EvaluationError(f"--images {directory}: the CLIP score needs its prompts.jsonl "
                              "(written by gigagan sample --outdir)")
    with open(manifest, encoding="utf-8") as f:
        return {r["file"]: r["prompt"] for r in map(json.loads, filter(str.strip, f))}
