"""Writing images: labelled sample grids, strips and the loss-curve plot. Rank 0 calls these."""
from __future__ import annotations

import json
import os
import textwrap
from typing import Optional, Sequence

import torch

from .extras import require


def to_pil(image: torch.Tensor, scale: int = 1):
    """[3, H, W] in [-1, 1] -> PIL image, optionally enlarged (nearest) so small samples stay visible."""
    from PIL import Image
    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    pil = Image.fromarray(array)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    return pil


def save_images(images, directory: str, names: Sequence[str]) -> list:
    """One PNG per image at its own resolution (what FID tools read), each written atomically. images: a tensor
    [B, 3, H, W] in [-1, 1], or PIL images."""
    paths = []
    for image, name in zip(images, names):
        path = os.path.join(directory, name)
        _atomic_save(to_pil(image) if isinstance(image, torch.Tensor) else image, path)
        paths.append(path)
    return paths


def _atomic_save(pil, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    pil.save(tmp, format="PNG")
    os.replace(tmp, path)


def save_grid(images: torch.Tensor, path: str, captions: Optional[Sequence[str]] = None, columns: int = 4,
              min_cell: int = 128) -> None:
    """A grid of images, each enlarged to at least `min_cell` pixels and captioned underneath."""
    from PIL import Image, ImageDraw, ImageFont
    n, _, h, _ = images.shape
    scale = max(1, -(-min_cell // h))
    cell = h * scale
    columns = min(columns, n)
    rows = -(-n // columns)
    font = ImageFont.load_default()
    label_h = 0
    wrapped = []
    if captions is not None:
        wrapped = [textwrap.wrap(c, width=max(10, cell // 6)) for c in captions]
        label_h = 12 * max(len(w) for w in wrapped) + 6
    pad = 4
    grid = Image.new("RGB", (columns * (cell + pad) + pad, rows * (cell + label_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        r, c = divmod(i, columns)
        x, y = pad + c * (cell + pad), pad + r * (cell + label_h + pad)
        grid.paste(to_pil(images[i], scale), (x, y))
        for k, line in enumerate(wrapped[i] if wrapped else []):
            draw.text((x + 2, y + cell + 3 + 12 * k), line, fill=(0, 0, 0), font=font)
    _atomic_save(grid, path)


def save_strip(images: torch.Tensor, path: str, left: str = "", right: str = "", min_cell: int = 128) -> None:
    """One row of images (an interpolation), labelled with its two end prompts."""
    from PIL import Image, ImageDraw, ImageFont
    n, _, h, _ = images.shape
    scale = max(1, -(-min_cell // h))
    cell = h * scale
    font = ImageFont.load_default()
    grid = Image.new("RGB", (n * cell, cell + 36), (255, 255, 255))
    for i in range(n):
        grid.paste(to_pil(images[i], scale), (i * cell, 0))
    draw = ImageDraw.Draw(grid)
    draw.text((4, cell + 4), f"A: {left}", fill=(0, 0, 0), font=font)
    draw.text((4, cell + 20), f"B: {right}", fill=(0, 0, 0), font=font)
    _atomic_save(grid, path)


def plot_losses(log_path: str, out_path: str) -> None:
    """The D, G and R1 losses from a run's log.jsonl, against the step."""
    matplotlib = require("matplotlib", "the loss plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = []
    with open(log_path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except ValueError:               # a line torn by a kill mid-write: skipped
                    continue
    if not records:
        raise ValueError(f"plot_losses: {log_path} has no records")
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss_d", "D (adversarial + matching-aware)"), ("loss_g", "G (adversarial + matching-aware)")):
        pts = [(r["step"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label)
    r1 = [(r["step"], r["r1"]) for r in records if "r1" in r]
    if r1:
        ax.plot([p[0] for p in r1], [p[1] for p in r1], ".", label="R1 penalty (every r1_interval steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("GigaGAN training losses")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_path)
