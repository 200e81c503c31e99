"""A diagnostic, not a training method: how well can the tiny G follow captions after N images at all?

    python scripts/supervised_bound.py --images 16000 --out runs/bound
    python scripts/caption_score.py runs/bound

The built-in caption fixes its image, so G alone can be regressed onto each caption's own render (MSE
on every pyramid level, z random, the trainer's optimiser and EMA). A per-pixel target tells G more
per image than D's verdicts can, so this estimates the most the GAN can reach on the same number of
images (docs/experiments/2026-11-26-cpu-training-demo.md has the runs). The checkpoint is the trainer's, so
caption_score.py and `gigagan sample` read it.

--fast PREFIXES --fast-multiplier M gives G's parameters whose names start with one of the
comma-separated PREFIXES (e.g. text_encoder,mapping) M times the learning rate.
"""
import argparse
import random
import sys
import warnings

import torch
import torch.nn.functional as F

from gigagan.data import ShapesDataset
from gigagan.training import TrainConfig, Trainer, optim


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16_000, help="training images (default: the CPU main job's)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.0025)
    ap.add_argument("--fast", default="", help="comma-separated G parameter-name prefixes")
    ap.add_argument("--fast-multiplier", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.images < args.batch_size:
        ap.error(f"--images {args.images} must be at least --batch-size {args.batch_size}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # the random-CLIP-tower warning
        tr = Trainer(TrainConfig(preset="tiny", out=args.out, device="cpu", lr=args.lr, seed=args.seed,
                                 progress=False))
    G = tr.G
    if args.fast:
        prefixes = tuple(args.fast.split(","))
        fast = [p for n, p in G.named_parameters() if n.startswith(prefixes)]
        if not fast:
            ap.error(f"--fast {args.fast!r} matches no parameter of G")
        # The trainer's own optimiser groups, with the fast layers in groups of their own (same weight decay).
        groups = optim.param_groups(G, tr.cfg.attention_weight_decay)
        tr.opt_g = optim.adamw(optim.with_lr_multiplier(groups, fast, args.fast_multiplier, args.lr), tr.cfg)
    data = ShapesDataset(G.resolution, seed=args.seed)
    rng = random.Random(args.seed)
    steps = args.images // args.batch_size
    for step in range(steps):
        items = [data[rng.randrange(len(data))] for _ in range(args.batch_size)]
        images = torch.stack([x for x, _ in items])
        pyramid = G(torch.randn(args.batch_size, G.z_dim), tr.model.clip.encode([c for _, c in items]),
                    update_w_avg=True)
        loss = sum(F.mse_loss(level, F.interpolate(images, size=level.shape[-1], mode="area")) for level in pyramid)
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at step {step}")
        tr.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        tr.opt_g.step()
        tr.ema.update(tr.step, args.batch_size)
        tr.step += 1
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"step {step + 1}/{steps}: loss {loss.item():.4f}", flush=True)
    print("saved", tr.save_checkpoint())
    return 0


if __name__ == "__main__":
    sys.exit(main())
