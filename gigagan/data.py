"""Datasets of (image, caption) pairs. Images are float tensors [3, R, R] in [-1, 1].

- ``ShapesDataset``: the built-in procedural dataset. Coloured shapes with sizes and positions, e.g.
  "a small red circle in the top left on a blue background"; item i is the same for a given seed at
  any resolution (drawn at 4x and downsampled with antialiasing).
- ``CaptionedImageFolder``: images with a ``.txt`` caption beside each (``cat.jpg`` + ``cat.txt``).
- ``webdataset_pairs``: tar shards as img2dataset writes them (``key.jpg`` + ``key.txt``).

Bad samples never crash training: a missing caption is skipped when the folder is indexed, and a
corrupt image or an empty caption makes ``__getitem__`` return a ``BadSample`` saying why, which
``collate_pairs`` drops and counts by reason. Every exception an image decoder raises is such a sample, in the
folder and the tar loader alike (``load_image``), an image over PIL's decompression-bomb limit included
(checked from the header, before the pixels are decoded); a tar shard cut short counts the samples it lost.
EXIF orientation is applied.

Images of every PIL mode become RGB: 16-bit and 32-bit integer images are scaled by their range (not
clipped at 255), palette images go through their palette, and transparent images (LA, RGBA, PA, a palette
with transparency) are composited on white.
"""
from __future__ import annotations

import collections
import glob
import itertools
import math
import os
import random
import warnings
from typing import Optional

import torch
from torch.utils.data import Dataset

from .extras import require

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
           "purple": (140, 60, 180), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.22, "large": 0.42}                  # radius as a fraction of the image side
POSITIONS = {"in the top left": (0.3, 0.3), "in the top right": (0.7, 0.3), "in the bottom left": (0.3, 0.7),
             "in the bottom right": (0.7, 0.7), "in the center": (0.5, 0.5)}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BACKGROUND = (255, 255, 255)        # what transparent pixels are composited on


class DataError(ValueError):
    """--data names something without usable samples (a folder without captioned images): an input problem,
    which the command line reports in one line with exit code 1."""


class BadSample(tuple):
    """A sample that could not be used, as (None, reason); a tuple so that a stream passes it on (webdataset
    drops a bare None silently, which could not be counted)."""

    def __new__(cls, reason: str):
        return super().__new__(cls, (None, reason))

    @property
    def reason(self) -> str:
        return self[1]


def to_rgb(image):
    """Any PIL image -> an 8-bit RGB image with the same content: 16/32-bit integer and float images scaled by
    their range, transparency composited on BACKGROUND."""
    import numpy as np
    from PIL import Image
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image).astype(np.float64)
        if mode == "F":
            scale = 1.0 if array.size and array.max() <= 1.0 else 255.0
        elif mode == "I" and array.size and array.max() > 65535:
            scale = float(2 ** 32 - 1)
        else:
            scale = 65535.0 if mode.startswith("I;16") or (array.size and array.max() > 255) else 255.0
        gray = np.clip(np.rint(array / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode in ("LA", "RGBA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_tensor(image) -> torch.Tensor:
    """A PIL image of any mode -> [3, H, W] float in [-1, 1]."""
    import numpy as np
    array = np.asarray(to_rgb(image), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def load_image(source, resolution: int):
    """An image file (a path or a binary file object) as a [3, R, R] tensor in [-1, 1], upright by its EXIF
    orientation, or a BadSample saying why not. Any exception the decoder raises makes a bad sample. The size is
    checked after open, which reads only the header, and before load, so that a decompression bomb (PIL's limit,
    Image.MAX_IMAGE_PIXELS) never takes the memory."""
    from PIL import Image, ImageOps
    limit = Image.MAX_IMAGE_PIXELS or math.inf
    too_large = BadSample(f"image too large (over {limit:.0f} pixels, PIL's decompression-bomb limit)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)     # checked here, before load
            image = Image.open(source)
        with image:
            if image.size[0] * image.size[1] > limit:
                return too_large
            image.load()
            return to_tensor(center_crop_resize(ImageOps.exif_transpose(image), resolution))
    except Image.DecompressionBombError:
        return too_large
    except Exception as e:                             # noqa: BLE001 - any decoder failure is a bad sample
        return BadSample(f"unreadable image ({type(e).__name__})")


def center_crop_resize(image, resolution: int):
    from PIL import Image
    image = to_rgb(image)
    w, h = image.size
    side = min(w, h)
    image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return image.resize((resolution, resolution), Image.Resampling.LANCZOS)


class ShapesDataset(Dataset):
    """Procedural captioned shapes: deterministic per (seed, index), at any resolution."""

    def __init__(self, resolution: int = 32, size: int = 50_000, seed: int = 0):
        if resolution < 4:
            raise ValueError(f"ShapesDataset: resolution must be >= 4, got {resolution}")
        self.resolution, self.size, self.seed = resolution, size, seed

    def __len__(self):
        return self.size

    def describe(self, index: int) -> dict:
        rng = random.Random(self.seed * 1_000_003 + index)
        colour, background = rng.sample(sorted(COLOURS), 2)
        return dict(shape=rng.choice(SHAPES), colour=colour, background=background,
                    size=rng.choice(sorted(SIZES)), position=rng.choice(sorted(POSITIONS)))

    @staticmethod
    def caption(d: dict) -> str:
        article = "an" if d["background"][0] in "aeiou" else "a"
        return f"a {d['size']} {d['colour']} {d['shape']} {d['position']} on {article} {d['background']} background"

    def render(self, d: dict):
        from PIL import Image, ImageDraw
        side = self.resolution * 4
        image = Image.new("RGB", (side, side), COLOURS[d["background"]])
        draw = ImageDraw.Draw(image)
        cx, cy = (v * side for v in POSITIONS[d["position"]])
        r = SIZES[d["size"]] * side * (0.7 if d["position"] != "in the center" else 1.0)
        fill = COLOURS[d["colour"]]
        if d["shape"] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif d["shape"] == "square":
            s = r / math.sqrt(2) * 1.25
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r * 0.95, cy + r * 0.7), (cx + r * 0.95, cy + r * 0.7)], fill=fill)
        return image.resize((self.resolution, self.resolution), Image.Resampling.LANCZOS)

    def __getitem__(self, index: int):
        d = self.describe(index)
        return to_tensor(self.render(d)), self.caption(d)


class CaptionedImageFolder(Dataset):
    """Every image under `root` that has a caption sidecar with the same stem and a .txt suffix; with
    captions=False every image, each with the empty caption (unconditional training)."""

    def __init__(self, root: str, resolution: int, captions: bool = True):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"CaptionedImageFolder: root {root!r} is not a directory")
        self.root, self.resolution = root, resolution
        self.items, self.missing_captions = [], 0
        unreadable = []                                    # folders os.walk could not list (it skips them silently)
        for dirpath, _, files in sorted(os.walk(root, onerror=unreadable.append)):
            for name in sorted(files):
                if not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                caption = os.path.join(dirpath, os.path.splitext(name)[0] + ".txt")
                if not captions:
                    self.items.append((os.path.join(dirpath, name), None))
                elif os.path.isfile(caption):
                    self.items.append((os.path.join(dirpath, name), caption))
                else:
                    self.missing_captions += 1
        if self.missing_captions:
            warnings.warn(f"CaptionedImageFolder: skipped {self.missing_captions} images without a .txt caption")
        if unreadable and not self.items:                  # the cause, not "no images"
            e = unreadable[0]
            raise DataError(f"CaptionedImageFolder: cannot list {e.filename}: {e.strerror or e}")
        if unreadable:
            warnings.warn(f"CaptionedImageFolder: skipped {len(unreadable)} folders that cannot be listed (the first: "
                          f"{unreadable[0].filename}: {unreadable[0].strerror or unreadable[0]})")
        if not self.items:
            what = "captioned images (.txt sidecars; --unconditional trains without)" if captions else "images"
            raise DataError(f"CaptionedImageFolder: no {what} under {root!r}")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index: int):
        image_path, caption_path = self.items[index]
        try:
            caption = ""
            if caption_path is not None:
                with open(caption_path, encoding="utf-8") as f:
                    caption = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            return BadSample(f"unreadable caption ({type(e).__name__})")
        tensor = load_image(image_path, self.resolution)
        if isinstance(tensor, BadSample):
            return tensor                                  # dropped and counted by collate_pairs
        if not caption and caption_path is not None:
            return BadSample("empty caption")
        return tensor, caption


class WithoutCaptions(Dataset):
    """A captioned dataset with every caption replaced by the empty one (unconditional training)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return item if isinstance(item, BadSample) else (item[0], "")


def _decode_tar_sample(sample, resolution: int, captions: bool):
    """One raw webdataset sample -> (image, caption), or a BadSample saying why not."""
    import io
    try:
        image_bytes = next(sample[k] for k in ("jpg", "jpeg", "png", "webp") if k in sample)
        caption = sample["txt"].decode("utf-8").strip() if captions else ""
        tensor = load_image(io.BytesIO(image_bytes), resolution)
        if isinstance(tensor, BadSample):
            return tensor
        return (tensor, caption) if caption or not captions else BadSample("empty caption")
    except StopIteration:
        return BadSample("no image in the sample")
    except KeyError:
        return BadSample("no caption in the sample")
    except Exception as e:                             # noqa: BLE001 - any bad sample is skipped, never fatal
        return BadSample(f"undecodable sample ({type(e).__name__})")


class TarShards(torch.utils.data.IterableDataset):
    """img2dataset-style tar shards ("data/{00000..00009}.tar") as a stream of (image, caption), resumable
    exactly.

    Shards are dealt to (rank, dataloader worker) pairs; each worker reads its shards pass after pass, in an
    order and with a sample shuffle buffer seeded by (seed, pass, rank, worker), so its stream is a fixed
    sequence. After `position(rank, world, batch_size, batches_seen, workers)` the stream is endless and
    starts where a run that had consumed `batches_seen` batches would continue: the DataLoader takes
    batches from its workers in turn, so each worker skips (without decoding) the samples of the batches it
    already gave. Unpositioned, it is one pass over all shards. Undecodable samples yield a BadSample
    (dropped and counted by collate_pairs); unreadable shards are skipped with a warning, and a shard cut short
    (truncated) yields a BadSample for each sample it lost: those its img2dataset <shard>_stats.json counts
    beyond the ones read, or one when there is no such file (how many followed the cut is unknown then)."""

    def __init__(self, urls: str, resolution: int, shuffle: int = 1000, seed: int = 0, captions: bool = True):
        super().__init__()
        braceexpand = require("braceexpand", "tar-shard datasets").braceexpand
        self.shards = sorted({path for part in braceexpand(urls) for path in (glob.glob(part) or [part])})
        self.resolution, self.shuffle, self.seed, self.captions = resolution, shuffle, seed, captions
        self.rank, self.world, self.batch_size, self.start_batch = 0, 1, 1, 0
        self.endless = False

    def position(self, rank: int, world: int, batch_size: int, batches_seen: int, workers: int) -> int:
        """Place the stream after `batches_seen` batches of this rank; returns the number of dataloader
        workers to use (no more than this rank has shards, so every worker's stream is endless)."""
        self.rank, self.world, self.batch_size, self.start_batch = rank, world, batch_size, batches_seen
        self.endless = True
        return min(workers, max(1, len(self.shards_of_rank())))

    def shards_of_rank(self) -> list:
        return self.shards[self.rank::self.world]

    def _worker_stream(self, worker: int, workers: int):
        wds = require("webdataset", "tar-shard datasets")
        mine = self.shards_of_rank()[worker::workers]
        passes = itertools.count() if self.endless else range(1)
        for p in passes:
            if not mine:
                return
            rng = random.Random(f"{self.seed}-{p}-{self.rank}-{worker}")     # str seeds hash stably (SHA-512)
            order = list(mine)
            if self.shuffle > 0:
                rng.shuffle(order)
            shards = ShardAccount(mine)
            raw = wds.WebDataset(order, handler=shards.failed, shardshuffle=False, nodesplitter=None,
                                 workersplitter=None, empty_check=False).map(shards.read)
            if self.shuffle > 0:
                raw = raw.shuffle(self.shuffle, rng=rng)
            produced = 0
            for sample in raw:
                produced += 1
                yield from shards.lost(sample.pop("__lost__", 0))
                yield sample
            yield from shards.lost(shards.settle())
            if produced == 0:
                return                                     # nothing readable at all: a finite, empty stream

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The loader asks worker 0 first: after n batches, worker 0 plays the part of worker n % workers.
        role = (worker + self.start_batch) % workers
        done = max(0, -(-(self.start_batch - role) // workers))         # batches this role already gave
        stream = self._worker_stream(role, workers)
        for _ in itertools.islice(stream, done * self.batch_size):
            pass                                           # skipped undecoded
        for sample in stream:
            yield sample if isinstance(sample, BadSample) else _decode_tar_sample(sample, self.resolution,
                                                                                  self.captions)


class ShardAccount:
    """What one worker's pass read from each shard, and the samples a shard cut short lost. webdataset reports
    the failure (failed, its handler) before the stream moves on to the next shard; the samples read are
    counted in stream order (read, before the shuffle), so a shard's loss is settled once a later shard's
    sample arrives, or at the end of the pass (settle)."""

    def __init__(self, shards: list):
        self.shards = set(shards)
        self.read_from = collections.Counter()
        self.broken, self.current = set(), None

    def failed(self, exn) -> bool:
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and a in self.shards), None)
        if url is not None:
            self.broken.add(url)
        warnings.warn(f"tar shards: {exn!r}")
        return True

    def read(self, sample: dict) -> dict:
        url = sample.get("__url__")
        lost = self.settle() if url != self.current else 0
        self.current = url
        self.read_from[url] += 1
        if lost:
            sample["__lost__"] = lost
        return sample

    def settle(self) -> int:
        """The samples lost by the shard the stream just left, if it broke off."""
        url, self.current = self.current, None
        if url not in self.broken or not self.read_from[url]:      # an unreadable shard: warned, not counted
            return 0
        self.broken.discard(url)
        expected = _shard_sample_count(url)
        return max(1, expected - self.read_from[url]) if expected is not None else 1

    @staticmethod
    def lost(count: int):
        for _ in range(count):
            yield BadSample("lost in a truncated shard")


def _shard_sample_count(url: str) -> Optional[int]:
    """The samples img2dataset wrote into a shard (its <shard>_stats.json "successes"), or None."""
    import json
    try:
        with open(os.path.splitext(url)[0] + "_stats.json") as f:
            return int(json.load(f)["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def webdataset_pairs(urls: str, resolution: int, shuffle: int = 1000, seed: int = 0, captions: bool = True):
    """One pass over tar shards as (image, caption) pairs (TarShards, unpositioned)."""
    return TarShards(urls, resolution, shuffle=shuffle, seed=seed, captions=captions)


def collate_pairs(items):
    """Stack the good (image, caption) pairs; the dropped ones come back as a Counter of their reasons."""
    good = [it for it in items if it is not None and it[0] is not None]
    dropped = collections.Counter(it[1] if isinstance(it, BadSample) else "unusable sample"
                                  for it in items if it is None or it[0] is None)
    if not good:
        return torch.empty(0), [], dropped
    images = torch.stack([g[0] for g in good])
    return images, [g[1] for g in good], dropped


def data_spec_problem(spec: str) -> Optional[str]:
    """What is wrong with a --data value, checked without reading the data (None when it looks usable)."""
    if spec == "builtin" or spec.startswith("builtin:"):
        size = spec.split(":", 1)[1] if ":" in spec else "1"
        return None if size.isdigit() and int(size) > 0 else f"builtin:N needs a positive item count, got {size!r}"
    if os.path.isdir(spec):
        return None
    if ".tar" in spec:
        return None if "{" in spec or glob.glob(spec) else "no tar shards match it"
    if os.path.exists(spec):
        return "is a file, not a folder of captioned images or a tar shard pattern"
    return ("no such folder; --data takes 'builtin', a folder of images with .txt captions, or tar shards "
            "('data/{00000..00009}.tar')")


def make_dataset(spec: str, resolution: int, seed: int = 0, captions: bool = True):
    """"builtin" (or "builtin:N" items), a directory of captioned images, or a webdataset shard pattern. With
    captions=False every caption is empty and images need no caption (unconditional training)."""
    if spec == "builtin" or spec.startswith("builtin:"):
        size = int(spec.split(":", 1)[1]) if ":" in spec else 50_000
        shapes = ShapesDataset(resolution, size=size, seed=seed)
        return shapes if captions else WithoutCaptions(shapes)
    if os.path.isdir(spec):
        return CaptionedImageFolder(spec, resolution, captions=captions)
    if ".tar" in spec:
        if "{" not in spec and not glob.glob(spec):
            raise FileNotFoundError(f"--data: no shards match {spec!r}")
        return webdataset_pairs(spec, resolution, seed=seed, captions=captions)
    raise ValueError(f"--data must be 'builtin', a directory of images with .txt captions, or tar shards "
                     f"('data/{{00000..00009}}.tar'); got {spec!r}")


def fixed_prompts(count: int = 8, seed: int = 1234) -> list:
    """Captions for sample grids, spread over colours and shapes, the same every run."""
    ds = ShapesDataset(8, size=count, seed=seed)
    return [ShapesDataset.caption(ds.describe(i)) for i in range(count)]


class StepSampler(torch.utils.data.Sampler):
    """Indices for steps start_step, start_step+1, ... of this rank: a fresh permutation per epoch,
    seeded by (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(self, length: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 start_step: int = 0, steps: Optional[int] = None):
        self.length, self.batch_size, self.rank, self.world = length, batch_size, rank, world_size
        self.seed, self.start_step, self.steps = seed, start_step, steps

    def __len__(self):
        return (self.steps - self.start_step) * self.batch_size if self.steps is not None else 2 ** 62

    def __iter__(self):
        per_step = self.batch_size * self.world
        pos = self.start_step * per_step + self.rank * self.batch_size
        epoch, perm, end = None, None, None if self.steps is None else self.steps * per_step
        while end is None or pos < end:
            for k in range(self.batch_size):
                e, i = divmod(pos + k, self.length)
                if e != epoch:
                    epoch = e
                    perm = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + e))
                yield int(perm[i])
            pos += per_step
