"""Does a trained base checkpoint follow its captions? Three numbers, for the CPU training demo
(docs/experiments/2026-11-26-cpu-training-demo.md).

    python scripts/caption_score.py runs/main [more checkpoints or run directories]

1. Background: for all 56 ordered colour pairs (A, B), twice each with different z, the prompt
   "a large {A} {shape} in the center on a {B} background": is the generated image's border colour
   (EMA G, noise off) nearest to B among the dataset's 8 colours? Chance is 1/8 (14 of 112).
2. Shape colour: is the centre 4x4 patch's colour nearest to A? Chance is 1/8.
3. Shape: the pixels nearer to A than to B form the drawn shape's mask; it is scored against the
   dataset's own large centred circle, square and triangle (IoU). Right when the captioned shape has the
   highest IoU and that IoU is at least 0.5 (a blob or an empty image is never right). A model drawing
   one shape for every prompt scores about 1/3; real images of the prompts score 112/112.
4. Does D read captions: on 64 real images of the built-in dataset, the fraction whose summed mean
   logit is higher under their own caption than under a mismatched one (the batch rolled by one).
"""
import itertools
import random
import sys
import warnings

import torch

from gigagan.data import COLOURS, SHAPES, ShapesDataset, to_tensor
from gigagan.losses import mismatched
from gigagan.training import model_from_checkpoint


def shape_masks(resolution: int) -> torch.Tensor:
    """[3, R, R] boolean masks of the dataset's large centred circle, square and triangle."""
    data = ShapesDataset(resolution)
    return torch.stack([to_tensor(data.render(dict(shape=shape, colour="white", background="black", size="large",
                                                   position="in the center")))[0] > 0 for shape in SHAPES])


def shape_right(images: torch.Tensor, prompts: list, palette: dict) -> list:
    """Per image: is its A-coloured region (nearer A than B) the captioned shape (module docstring, 3)?"""
    templates = shape_masks(images.shape[-1])
    right = []
    for img, (a, b, shape) in zip(images, prompts):
        ca, cb = (palette[n].view(3, 1, 1) for n in (a, b))
        mask = (img - ca).norm(dim=0) < (img - cb).norm(dim=0)
        iou = torch.stack([(mask & t).sum() / (mask | t).sum().clamp(min=1) for t in templates])
        right.append(bool(iou.argmax() == SHAPES.index(shape) and iou.max() >= 0.5))
    return right


def summed_logit(D, images, text):
    return torch.stack([lg.mean(dim=(1, 2, 3)) for lg in D(images, text)]).sum(0)


@torch.no_grad()
def main(path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, state = model_from_checkpoint(path, discriminator=True)     # D reads the captions too
    G, D = model.generator, model.discriminator
    names = list(COLOURS)
    palette = torch.tensor([COLOURS[n] for n in names], dtype=torch.float32) / 127.5 - 1
    rng = random.Random(0)
    pairs = list(itertools.permutations(names, 2)) * 2
    triples = [(a, b, rng.choice(SHAPES)) for a, b in pairs]
    prompts = [ShapesDataset.caption(dict(size="large", colour=a, shape=s, position="in the center", background=b))
               for a, b, s in triples]
    z = torch.randn(len(prompts), G.z_dim, generator=torch.Generator().manual_seed(1))
    img = G(z, prompts, noise_mode="none")[0].clamp(-1, 1)
    c = img.shape[-1] // 2
    e = max(1, img.shape[-1] // 16)                    # a border strip the large centred shape never reaches
    border = torch.cat([img[:, :, :e].flatten(2), img[:, :, -e:].flatten(2), img[:, :, :, :e].flatten(2),
                        img[:, :, :, -e:].flatten(2)], dim=2).mean(2)
    centre = img[:, :, c - 2:c + 2, c - 2:c + 2].flatten(2).mean(2)

    def nearest(colours):
        return [names[i] for i in torch.cdist(colours, palette).argmin(dim=1)]

    bg = sum(got == b for got, (_, b) in zip(nearest(border), pairs))
    fg = sum(got == a for got, (a, _) in zip(nearest(centre), pairs))
    by_name = dict(zip(names, palette))
    shapes = sum(shape_right(img, triples, by_name))
    n = len(pairs)
    print(f"{path} (step {state['step']}): background colour right on {bg}/{n}, shape colour right on {fg}/{n} "
          f"(chance {n // len(names)} each), shape right on {shapes}/{n}")
    data = ShapesDataset(G.resolution, seed=123)
    images, captions = zip(*[data[i] for i in range(64)])
    text = model.clip.encode(list(captions))
    x = torch.stack(images)
    own, other = summed_logit(D, x, text), summed_logit(D, x, mismatched(text))
    print(f"D prefers the true caption on {(own > other).float().mean().item():.1%} of 64 real images "
          f"(mean summed logit {own.mean().item():.1f} vs {other.mean().item():.1f} mismatched)")


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["runs/main"]:
        main(arg)
