"""The gigagan command line (also `python -m gigagan`).

  train        train G and D, or (--model upsampler) the upsampler (one process, or one per GPU under torchrun)
  sample       images for prompts from a checkpoint's EMA generator (a grid, or one PNG per image)
  export       a checkpoint's EMA model as a pretrained folder (config.json, model.safetensors)
  interpolate  a prompt-interpolation strip for one z
  style-mix    coarse blocks from seed A, fine blocks from seed B
  prompt-mix   coarse blocks from prompt A (layout), fine blocks from prompt B (texture, style)
  upsample     the text-conditioned upsampler on an image, tiled when it is larger than trained
  eval         FID and CLIP score of a model or a folder against real images (local weights only)
  bench        the kernel benchmark suite, then its summary
  params       each network's parameter count for a preset (built on the meta device)
"""
from __future__ import annotations

import argparse
import sys

from gigagan_kernels.backend import ENV_VAR, IMPLS


IMPL_CHOICES = ("auto",) + IMPLS
IMPL_HELP = f"the ops' backend for the whole command (default: ${ENV_VAR}, else auto)"


def _add_sampling_args(p, out_required: bool = True):
    p.add_argument("--ckpt", required=True, help="a checkpoint file, a run directory (its newest checkpoint), or a "
                                                 "pretrained folder from gigagan export")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncation", type=float, default=1.0, help="text-conditioned truncation psi (1 = off)")
    p.add_argument("--impl", default=None, choices=IMPL_CHOICES, help=IMPL_HELP)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=out_required, help="output PNG")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gigagan", description="GigaGAN with fused kernels",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train G and D (or the upsampler and its D)")
    t.add_argument("--preset", default="tiny", help="tiny, small or paper")
    t.add_argument("--model", default="base", choices=["base", "upsampler"],
                   help="base: the generator; upsampler: the text-conditioned upsampler (GAN + perceptual loss)")
    t.add_argument("--perceptual-weight", type=float, default=10.0, help="upsampler: weight of the perceptual term")
    t.add_argument("--perceptual-weights", default=None,
                   help="upsampler: a local torchvision VGG16 state dict (default: torchvision's cache, else random)")
    t.add_argument("--clip-weight", type=float, default=0.0,
                   help="CLIP contrastive loss on G (paper eq. 9); needs --guidance-clip-pretrained")
    t.add_argument("--vision-aided-weight", type=float, default=0.0,
                   help="vision-aided loss (a head on frozen CLIP features); needs --guidance-clip-pretrained")
    t.add_argument("--guidance-clip", default="ViT-B-32", help="open_clip architecture for those two losses")
    t.add_argument("--guidance-clip-pretrained", default=None,
                   help="a local CLIP checkpoint file, or an open_clip tag already in the cache")
    t.add_argument("--allow-random-clip", action="store_true",
                   help="run the CLIP losses with a random CLIP (smoke tests only: the losses are noise)")
    t.add_argument("--text-encoder-pretrained", default=None,
                   help="local open_clip weights for the frozen CLIP text tower (else it stays random, with a warning)")
    t.add_argument("--unconditional", action="store_true",
                   help="train without text: every caption empty (image folders need no .txt sidecars)")
    t.add_argument("--data", default="builtin",
                   help="builtin (procedural shapes), a folder of images with .txt captions, or tar shards")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--max-minutes", type=float, default=None,
                   help="also stop after this many minutes of training (checkpoint and final samples are written)")
    t.add_argument("--batch-size", type=int, default=4, help="per process")
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=0.0025)
    t.add_argument("--r1-gamma", type=float, default=0.2048)
    t.add_argument("--r1-interval", type=int, default=16)
    t.add_argument("--no-matching-aware", action="store_true")
    t.add_argument("--impl", default=None, choices=IMPL_CHOICES, help=IMPL_HELP)
    t.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: CUDA when available")
    t.add_argument("--out", default="runs/gigagan")
    t.add_argument("--resume", action="store_true",
                   help="continue from the newest whole checkpoint in --out (an error when there is none)")
    t.add_argument("--resume-or-start", action="store_true",
                   help="continue from the newest whole checkpoint, or start from step 0 when there is none "
                        "(for a scheduler that reruns one command)")
    t.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out that holds another run; its files move to previous-runs/")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--sample-every", type=int, default=200)
    t.add_argument("--ckpt-every", type=int, default=200)
    t.add_argument("--keep-checkpoints", type=int, default=3, help="how many of the newest checkpoints to keep")
    t.add_argument("--max-bad-steps", type=int, default=20, help="non-finite steps in a row before stopping")
    t.add_argument("--max-bad-batches", type=int, default=50,
                   help="batches in a row without a usable sample before stopping")
    t.add_argument("--workers", type=int, default=0, help="dataloader worker processes")
    t.add_argument("--tensorboard", action="store_true")
    t.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="autocast precision (auto: bf16 on CUDA, fp32 on CPU); fp16 adds dynamic loss scaling")
    t.add_argument("--augment", default="", help="augment D's inputs (real and generated): any of "
                   "flip,translation,cutout (DiffAugment; off by default)")
    t.add_argument("--profile-steps", type=int, default=0,
                   help="trace this many steps (after one warm-up) with torch.profiler into OUT/profile/")
    t.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("sample", help="images for prompts: a captioned grid (--out) or one PNG each (--outdir)")
    _add_sampling_args(s, out_required=False)
    s.add_argument("--outdir", default=None, help="write one PNG per image here, plus prompts.jsonl naming them "
                                                   "(for FID tools), instead of a grid")
    s.add_argument("--prompt", action="append", default=None, help="repeatable")
    s.add_argument("--prompts-file", default=None, help="a text file with one prompt per line (blank lines skipped)")
    s.add_argument("--per-prompt", type=int, default=1, help="images per prompt, each from its own z")
    s.add_argument("--batch-size", type=int, default=16, help="images generated at once")
    s.add_argument("--columns", type=int, default=4)

    e = sub.add_parser("export", help="a checkpoint's EMA model as a pretrained folder (config.json + safetensors)")
    e.add_argument("--ckpt", required=True, help="a checkpoint file or a run directory (its newest checkpoint)")
    e.add_argument("--out", required=True, help="the folder to write; every command's --ckpt takes it")

    i = sub.add_parser("interpolate", help="prompt interpolation for one z")
    _add_sampling_args(i)
    i.add_argument("--prompt-a", required=True)
    i.add_argument("--prompt-b", required=True)
    i.add_argument("--steps", type=int, default=8)

    m = sub.add_parser("style-mix", help="coarse blocks from seed A, fine from seed B")
    _add_sampling_args(m)
    m.add_argument("--prompt", required=True)
    m.add_argument("--seeds-a", default="1,2,3", help="comma-separated")
    m.add_argument("--seeds-b", default="4,5,6", help="comma-separated")
    m.add_argument("--crossover", type=int, default=2, help="first block taken from B")

    pm = sub.add_parser("prompt-mix", help="coarse blocks from prompt A, fine from prompt B")
    _add_sampling_args(pm)
    pm.add_argument("--prompt-a", required=True)
    pm.add_argument("--prompt-b", required=True)
    pm.add_argument("--crossover", type=int, default=2)
    pm.add_argument("--count", type=int, default=4, help="number of seeds")

    u = sub.add_parser("upsample", help="the text-conditioned upsampler on an image")
    _add_sampling_args(u)
    u.add_argument("--image", required=True, help="input PNG/JPEG")
    u.add_argument("--prompt", required=True)
    u.add_argument("--overlap", type=int, default=None, help="tile overlap in input pixels")

    ev = sub.add_parser("eval", help="FID (and CLIP score) of a model or an image folder against real images")
    ev.add_argument("--real", required=True, help="a folder of reference images")
    ev.add_argument("--images", default=None, help="a folder of generated images (from gigagan sample --outdir)")
    ev.add_argument("--ckpt", default=None, help="or a model: checkpoint, run directory or pretrained folder; "
                                                 "its images are generated in memory for --prompts-file")
    ev.add_argument("--prompts-file", default=None, help="with --ckpt: one prompt per line")
    ev.add_argument("--per-prompt", type=int, default=1)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--truncation", type=float, default=1.0)
    ev.add_argument("--inception-weights", default=None,
                    help="torch-fidelity's FID Inception weights file (pt_inception-2015-12-05-6726825d.pth)")
    ev.add_argument("--clip-weights", default=None, help="a local open_clip checkpoint: adds the CLIP score")
    ev.add_argument("--clip-model", default="ViT-B-32", help="its open_clip architecture")
    ev.add_argument("--resolution", type=int, default=299, help="both sets are resized to this first")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--impl", default=None, choices=IMPL_CHOICES, help=IMPL_HELP)
    ev.add_argument("--device", default=None)
    ev.add_argument("--json-out", default=None, help="also write the scores to this JSON file")

    b = sub.add_parser("bench", help="run the kernel benchmarks and print the summary")
    b.add_argument("--full", action="store_true", help="full repetitions (default: quick)")
    b.add_argument("--ops", default=None)
    b.add_argument("--csv", default=None)
    b.add_argument("--no-plots", action="store_true")

    p = sub.add_parser("params", help="print each network's parameter count for a preset")
    p.add_argument("--preset", default="paper", help="tiny, small or paper (default: paper)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from . import cli
    from .rundir import RunDirError
    from .train import CheckpointError, TrainingError
    try:
        return getattr(cli, "cmd_" + args.command.replace("-", "_"))(args) or 0
    except cli.UsageError as e:
        print(f"gigagan {args.command}: {e}", file=sys.stderr)
        return 2
    except RunDirError as e:                       # a directory held by another trainer or another run
        print(f"gigagan {args.command}: --out {args.out}: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, TrainingError) as e:
        flag = "--ckpt" if getattr(args, "ckpt", None) else "--out"
        print(f"gigagan {args.command}: {flag} {getattr(args, flag[2:])}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
