"""Does a trained base checkpoint follow its captions? Two numbers, for the CPU training demo (NOTES.md).

    python scripts/caption_score.py runs/main

1. Background score: for 24 prompts "a large {A} {shape} in the center on a {B} background" (A != B), is
   the generated image's border colour (EMA G, noise off) closest to B among the dataset's 8 colours?
   Chance is 3/24.
2. Does D read captions: on 64 real images of the built-in dataset, the fraction whose summed mean logit
   is higher under their own caption than under a mismatched one (the batch rolled by one).
"""
import itertools
import random
import sys
import warnings

import torch

from gigagan.data import COLOURS, ShapesDataset
from gigagan.losses import mismatched
from gigagan.train import model_from_checkpoint


def summed_logit(D, images, text):
    return torch.stack([lg.mean(dim=(1, 2, 3)) for lg in D(images, text)]).sum(0)


@torch.no_grad()
def main(path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, state = model_from_checkpoint(path)
    G, D = model.generator, model.discriminator
    names = list(COLOURS)
    palette = torch.tensor([COLOURS[n] for n in names], dtype=torch.float32) / 127.5 - 1
    rng = random.Random(0)
    pairs = list(itertools.permutations(names, 2))
    rng.shuffle(pairs)
    pairs = pairs[:24]
    prompts = [f"a large {a} {rng.choice(['circle', 'square', 'triangle'])} in the center on "
               f"{'an' if b == 'orange' else 'a'} {b} background" for a, b in pairs]
    z = torch.randn(len(prompts), G.z_dim, generator=torch.Generator().manual_seed(1))
    img = G(z, prompts, noise_mode="none")[0].clamp(-1, 1)
    border = torch.cat([img[:, :, :2].flatten(2), img[:, :, -2:].flatten(2), img[:, :, :, :2].flatten(2),
                        img[:, :, :, -2:].flatten(2)], dim=2).mean(2)
    hits = sum(names[(palette - border[k]).norm(dim=1).argmin()] == b for k, (_, b) in enumerate(pairs))
    print(f"step {state['step']}: background colour nearest to the caption's on {hits}/{len(pairs)} prompts "
          f"(chance {len(pairs) / len(names):.0f})")
    data = ShapesDataset(G.resolution, seed=123)
    images, captions = zip(*[data[i] for i in range(64)])
    text = model.clip.encode(list(captions))
    x = torch.stack(images)
    own, other = summed_logit(D, x, text), summed_logit(D, x, mismatched(text))
    print(f"D prefers the true caption on {(own > other).float().mean().item():.1%} of 64 real images "
          f"(mean summed logit {own.mean().item():.1f} vs {other.mean().item():.1f} mismatched)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/main")
