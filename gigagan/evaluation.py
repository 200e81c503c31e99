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


# The FID Inception (TensorFlow's 2015-12-05 graph, ported to PyTorch) as its two publishers name it. Either file
# loads: torch-fidelity's network has the 566 state-dict names of torchvision's Inception3(num_classes=1008,
# aux_logits=False), which pytorch-fid's file fills. Nothing is downloaded; these say where to fetch one by hand.
INCEPTION_FILES = {
    "weights-inception-2015-12-05-6726825d.pth":
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "pt_inception-2015-12-05-6726825d.pth":
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
}
INCEPTION_HELP = ("the FID Inception weights: a file, or a folder holding weights-inception-2015-12-05-6726825d.pth "
                  "(torch-fidelity's) or pt_inception-2015-12-05-6726825d.pth (pytorch-fid's); without it, torch "
                  "hub's checkpoints folder is searched. Nothing is downloaded")
# Fewer images than this a side and FID is biased upwards (its estimate of the covariances is): numbers from
# smaller sets compare only with numbers from sets of the same size.
UNBIASED_FID_IMAGES = 2000


def inception_weights_file(path: Optional[str], flag: str = "--inception-weights") -> str:
    """The Inception weights file: `path` itself, or either published file name inside the folder `path`, or
    (path None) inside torch hub's checkpoints folder, where torch-fidelity keeps the one it downloads."""
    folders = [path] if path and os.path.isdir(path) else [] if path else \
        [os.path.join(require("torch.hub", "FID").get_dir(), "checkpoints")]
    if path and not folders:
        if not os.path.isfile(path):
            raise EvaluationError(f"{flag} {path}: no such file")
        return path
    for folder in folders:
        for name in INCEPTION_FILES:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    where = f"{flag} {path}: holds" if path else f"{flag} is needed: {folders[0]} holds"
    fetch = " or ".join(f"{name} ({url})" for name, url in INCEPTION_FILES.items())
    raise EvaluationError(f"{where} neither FID Inception weights file; download {fetch} and pass it with {flag}; "
                          "nothing is downloaded")


def inception_features(weights_path: Optional[str], flag: str = "--inception-weights"):
    """torch-fidelity's FID Inception (2048-d pool features) from a local weights file (inception_weights_file)."""
    path = inception_weights_file(weights_path, flag)
    fid = require("torchmetrics.image.fid", "FID")
    require("torch_fidelity", "FID")
    try:
        # weights_only first: torch-fidelity then unpickles the file without that guard, so it must hold tensors only.
        torch.load(path, map_location="cpu", weights_only=True)
        return fid.NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=path)
    except Exception as e:                                   # noqa: BLE001 - whatever an unusable file raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise EvaluationError(f"{flag} {path}: not the FID Inception weights ({type(e).__name__}: {first})") \
            from None


def bias_warning(num_real: int, num_fake: int) -> Optional[str]:
    """The warning that FID from fewer than UNBIASED_FID_IMAGES images a side is biased, or None."""
    if min(num_real, num_fake) >= UNBIASED_FID_IMAGES:
        return None
    return (f"FID from {num_real} real and {num_fake} generated images is biased upwards (fewer than "
            f"{UNBIASED_FID_IMAGES:,} a side); compare it only with FIDs from the same numbers of images")


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
            metric.update(to_uint8(batch, resolution).to(device), real=name == "real")
            n += len(batch)
        counts[name] = n
        if n < 2:
            raise EvaluationError(f"FID needs at least 2 {name} images, got {n}")
    return {"fid": float(metric.compute()), "num_real": counts["real"], "num_fake": counts["fake"]}


class FeatureStats:
    """The running sums of FID's features (count, sum, sum of outer products) in float64, so that sets are fed
    once and compared many times: the training metric keeps the real set's and adds each measurement's
    generated set. Ranks add theirs with all_reduce (reduce)."""

    def __init__(self, num_features: int, device="cpu"):
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.sum = torch.zeros(num_features, dtype=torch.float64, device=device)
        self.outer = torch.zeros(num_features, num_features, dtype=torch.float64, device=device)

    def add(self, features: torch.Tensor) -> None:
        f = features.double().flatten(1)
        self.count += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def reduce(self) -> None:
        """Sum over every rank (under torch.distributed); a no-op on one process."""
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for t in (self.count, self.sum, self.outer):
                dist.all_reduce(t)

    def mean_cov(self) -> tuple:
        n = self.count.item()
        mean = self.sum / n
        return mean, (self.outer - n * torch.outer(mean, mean)) / (n - 1)


def fid_from_stats(real: FeatureStats, fake: FeatureStats) -> float:
    """||mu_r - mu_f||^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)), the trace of the root from the eigenvalues of
    S_r^(1/2) S_f S_r^(1/2), which is symmetric (as torchmetrics computes it)."""
    for name, stats in (("real", real), ("fake", fake)):
        if stats.count.item() < 2:
            raise EvaluationError(f"FID needs at least 2 {name} images, got {int(stats.count.item())}")
    mu_r, cov_r = real.mean_cov()
    mu_f, cov_f = fake.mean_cov()
    root_r = _sqrtm_psd(cov_r)
    eig = torch.linalg.eigvalsh(root_r @ cov_f @ root_r).clamp(min=0)
    return float(((mu_r - mu_f) ** 2).sum() + cov_r.trace() + cov_f.trace() - 2 * eig.sqrt().sum())


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def to_uint8(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """[-1, 1] images as the uint8 images of `resolution` that the Inception takes."""
    return ((resize(images, resolution) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


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
