"""The subcommands behind `gigagan` (argument parsing lives in __main__.py).

Errors reach the user as one line that names the flag (and file), printed by __main__.main: a UsageError (a
flag's value, a checkpoint of the wrong kind, an output that cannot be written, a refused resume) exits with
2; a failure of the environment or an input file (a full disk, a corrupt checkpoint or model folder, a training
error) with 1. A training stopped by SIGTERM or SIGINT exits with 128 + the signal's number (143, 130) after
saving a checkpoint, so a scheduler can tell a preempted run from a finished one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import warnings

import torch

from gigagan_kernels import tune, use_impl


class UsageError(ValueError):
    """A command-line mistake: the message names the flag; the command exits with status 2."""


class InputFileError(RuntimeError):
    """An input file that cannot be used (a corrupt image or model folder): the message names the flag and the
    file; the command exits with status 1."""


def _impl(args) -> str:
    """The backend a command runs: --impl when given, else $GIGAGAN_KERNELS_IMPL, else auto."""
    if args.impl is not None:
        return args.impl
    from gigagan_kernels.backend import ENV_VAR, IMPLS
    value = os.environ.get(ENV_VAR, "").strip() or "auto"
    if value not in ("auto",) + IMPLS:
        raise UsageError(f"${ENV_VAR} must be one of {('auto',) + IMPLS}, got {value!r}")
    return value


def _device(args) -> torch.device:
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _require(ok: bool, flag: str, what: str, value) -> None:
    if not ok:
        raise UsageError(f"{flag} must be {what}, got {value!r}")


def _writable_output(path: str, flag: str = "--out") -> None:
    """Fail before any work when the output file cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{flag} {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise UsageError(f"{flag} {path}: the directory {directory} is not writable")


def _writable_folder(path: str, flag: str) -> None:
    """Fail before any work when the output folder cannot be made or written; it is created only later."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: exists and is not a directory")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f"{flag} {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK):
        raise UsageError(f"{flag} {path}: {'it' if existing == os.path.abspath(path) else existing} is not writable")


def _check_sampling(args) -> None:
    _require(math.isfinite(args.truncation), "--truncation", "a finite number", args.truncation)
    if getattr(args, "out", None) is not None:           # eval writes no image
        _writable_output(args.out)


def _load(args, need: str = "base"):
    """The EMA model of --ckpt, which must hold a `need` run ("base" or "upsampler")."""
    from .training import CheckpointError, is_pretrained_folder, model_from_checkpoint
    _check_sampling(args)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # the checkpoint carries the CLIP tower's weights
            model, state = model_from_checkpoint(args.ckpt, map_location=_device(args))
    except (CheckpointError, OSError):
        raise
    except Exception as e:                            # noqa: BLE001 - whatever a bad config or weights file raises
        what = "model folder" if is_pretrained_folder(args.ckpt) else "checkpoint"
        raise InputFileError(f"--ckpt {args.ckpt}: not a usable {what} ({type(e).__name__}: {e})") from e
    trained = json.loads(state.get("train_config", "{}")).get("model", "base")
    if trained != need:
        how = "gigagan train --model upsampler" if need == "upsampler" else "gigagan train (--model base)"
        raise UsageError(f"--ckpt {state.get('path', args.ckpt)} holds a {trained} run; gigagan {args.command} "
                         f"needs a {need} run (from {how}); its {need} network was never trained")
    print(f"loaded {state.get('path', args.ckpt)} (step {state['step']}, preset {model.config.name!r})")
    return model


def _flag(field: str) -> str:
    """The flag of a TrainConfig field, as `gigagan train` generates it."""
    from .training.config import TrainConfig, config_flag
    by_name = {f.name: f for f in dataclasses.fields(TrainConfig)}
    return config_flag(by_name[field]) if field in by_name else "--" + field.replace("_", "-")


def _z(G, seed: int, count: int, device) -> torch.Tensor:
    return torch.randn(count, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)


def cmd_train(args) -> int:
    from .data import data_spec_problem
    from .training import ConfigError, TrainConfig, Trainer
    from .training.distributed import shutdown
    if args.overwrite and (args.resume or args.resume_or_start):
        raise UsageError("--overwrite starts a new run; it cannot be combined with --resume or --resume-or-start")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["impl"] = _impl(args)
    values["model_overrides"] = tuple(values["model_overrides"])
    if values["unconditional"]:
        values["matching_aware"] = False                  # every caption is empty: nothing to mismatch
    cfg = TrainConfig(**values)
    try:
        cfg.validate()
    except ConfigError as e:
        raise UsageError(f"{_flag(e.field)} {e.message}") from None
    if problem := data_spec_problem(cfg.data):
        raise UsageError(f"--data {cfg.data}: {problem}")
    try:
        trainer = Trainer(cfg)
        result = trainer.fit(resume=args.resume or args.resume_or_start, overwrite=args.overwrite,
                             fresh_if_none=args.resume_or_start, allow_config_change=args.allow_config_change)
    finally:
        shutdown()                                        # the process group, on every path (torchrun)
    if result.get("stopped_by_signal"):
        signum = result["signal"] if isinstance(result["signal"], int) else signal.SIGTERM
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)              # stopping already: a further signal must not cut the line
        if trainer.is_main:
            name = signal.Signals(signum).name
            if "skipped_outputs" in result:               # after the final checkpoint, in its outputs
                skipped = " and ".join(result["skipped_outputs"]) or "none"
                print(f"gigagan train: {name} after the final checkpoint {result['checkpoint']} (step "
                      f"{result['step']}) was written whole; outputs skipped: {skipped} (exit code {128 + signum})",
                      file=sys.stderr)
            else:
                saved = f"a second signal stopped it at once: {result['newest']}" if result.get("forced") else \
                    f"saved {result.get('checkpoint')}"
                print(f"gigagan train: preempted by {name} at step {result['step']}; {saved}; continue with "
                      f"--resume (exit code {128 + signum})", file=sys.stderr)
        return 128 + signum
    if trainer.is_main:
        print(f"done: step {result['step']}, {result.get('bad_steps', 0)} skipped non-finite steps, "
              f"{result.get('skipped_samples', 0)} bad samples skipped; outputs in {cfg.out}")
    return 0


def _prompts(args) -> list:
    if getattr(args, "prompt", None) and args.prompts_file:
        raise UsageError("give prompts with --prompt or with --prompts-file, not both")
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                prompts = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--prompts-file {args.prompts_file}: cannot read it ({e})") from None
        if not prompts:
            raise UsageError(f"--prompts-file {args.prompts_file}: has no prompts (one per line)")
        return prompts
    if not getattr(args, "prompt", None):
        raise UsageError("give at least one --prompt, or --prompts-file")
    return list(args.prompt)


def _generate_batches(G, args, prompts: list):
    """G's images for prompts, --batch-size at a time, each from its own z (the same for any batch size), through the
    tensor-only entry G.synthesize. Its first call runs under gigagan_kernels.tune (auto times its candidates there,
    once per shape and machine); --compile decides whether the later ones run compiled (gigagan/entry.py). A
    compiled run pads its last batch to --batch-size: one shape, one graph."""
    from .entry import EntryRunner
    dev = _device(args)
    z = _z(G, args.seed, len(prompts), dev)
    bs = args.batch_size
    run = EntryRunner(G.synthesize, args.compile, dev, name="generator", log=print).plan(math.ceil(len(prompts) / bs))
    with torch.no_grad(), use_impl(_impl(args)):
        for i in range(0, len(prompts), bs):
            count = min(bs, len(prompts) - i)
            rows = list(range(i, i + count)) + [i + count - 1] * (bs - count if run.is_compiled else 0)
            tokens = G.tokenize([prompts[r] for r in rows]).to(dev)
            yield run(z[rows], tokens, truncation=args.truncation)[0][:count]


def cmd_sample(args) -> int:
    from .images import save_grid, save_images
    if (args.out is None) == (args.outdir is None):
        raise UsageError("give exactly one of --out (a captioned grid PNG) and --outdir (one PNG per image)")
    _require(args.columns >= 1, "--columns", "an integer >= 1", args.columns)
    _require(args.per_prompt >= 1, "--per-prompt", "an integer >= 1", args.per_prompt)
    _require(args.batch_size >= 1, "--batch-size", "an integer >= 1", args.batch_size)
    prompts = [p for p in _prompts(args) for _ in range(args.per_prompt)]
    if args.outdir is not None:
        _writable_folder(args.outdir, "--outdir")
    names = [f"{j // args.per_prompt:05d}-{j % args.per_prompt:03d}.png" for j in range(len(prompts))]
    images, done = [], 0
    model = _load(args)
    if args.outdir is not None:
        os.makedirs(args.outdir, exist_ok=True)          # once the model loaded: a failure leaves no folder
    for batch in _generate_batches(model.generator, args, prompts):
        if args.outdir is None:
            images.append(batch.cpu())
        else:
            save_images(batch, args.outdir, names[done:done + len(batch)])
        done += len(batch)
    if args.outdir is None:
        save_grid(torch.cat(images), args.out, captions=prompts, columns=args.columns)
        print(f"wrote {args.out}")
        return 0
    manifest = os.path.join(args.outdir, "prompts.jsonl")
    with open(manifest + ".tmp", "w", encoding="utf-8") as f:
        for j, prompt in enumerate(prompts):
            f.write(json.dumps({"file": names[j], "prompt": prompt, "seed": args.seed, "index": j}) + "\n")
    os.replace(manifest + ".tmp", manifest)
    print(f"wrote {len(prompts)} images and prompts.jsonl to {args.outdir}")
    return 0


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cmd_generate(args) -> int:
    """gigagan.GigaGANPipeline on the command line: the base generator of --ckpt, then the upsampler of --upsampler
    (re-applied on tiles up to --output-size). Image j uses seed --seed + j, so it is the image the pipeline
    makes for its prompt and seed, whatever the other prompts."""
    from .images import save_grid, save_images
    from .pipeline import GigaGANPipeline
    if (args.out is None) == (args.outdir is None):
        raise UsageError("give exactly one of --out (a captioned grid PNG) and --outdir (one PNG per image)")
    for flag, value in (("--columns", args.columns), ("--per-prompt", args.per_prompt),
                        ("--batch-size", args.batch_size)):
        _require(value >= 1, flag, "an integer >= 1", value)
    _require(args.seed >= 0, "--seed", "an integer >= 0", args.seed)
    _require(args.overlap is None or args.overlap >= 0, "--overlap", "an integer >= 0", args.overlap)
    _check_sampling(args)
    prompts = _prompts(args)
    from .hub import is_hub_id
    from .training import CheckpointError
    for flag, path in (("--ckpt", args.ckpt), ("--upsampler", args.upsampler)):
        if path is not None and not os.path.exists(path) and not is_hub_id(path):
            raise UsageError(f"{flag} {path}: does not exist (nor is it a hub id org/name)")
    flags = {"base_dir": "--ckpt", "upsampler": "--upsampler", "output_size": "--output-size",
             "batch_size": "--batch-size", "overlap": "--overlap"}

    def flagged(e: Exception) -> str:
        message = str(e)
        for name, flag in flags.items():             # the Python argument's name -> the flag's
            if message.startswith(name + ": "):
                return f"{flag} {message[len(name) + 2:]}"
            if message.startswith(name + " "):
                return flag + message[len(name):]
        return message
    try:
        pipe = GigaGANPipeline.from_pretrained(args.ckpt, upsampler=args.upsampler, torch_dtype=DTYPES[args.dtype],
                                               device=_device(args), batch_size=args.batch_size,
                                               compile=args.compile, impl=_impl(args), overlap=args.overlap,
                                               log=print)
        pipe.output_plan(args.output_size)
    except CheckpointError as e:                      # a corrupt or mismatched model folder, a bad checkpoint
        raise InputFileError(flagged(e)) from None
    except ValueError as e:
        raise UsageError(flagged(e)) from None
    if args.outdir is not None and os.path.exists(args.outdir) and not os.path.isdir(args.outdir):
        raise UsageError(f"--outdir {args.outdir}: exists and is not a directory")
    out = pipe(prompts, seed=args.seed, truncation=args.truncation, num_images_per_prompt=args.per_prompt,
               output_size=args.output_size, output_type="pil" if args.outdir is not None else "pt")
    captions = [p for p in prompts for _ in range(args.per_prompt)]
    if args.outdir is None:
        save_grid(torch.stack(out.images) * 2 - 1, args.out, captions=captions, columns=args.columns)
        print(f"wrote {args.out}")
        return 0
    names = [f"{j // args.per_prompt:05d}-{j % args.per_prompt:03d}.png" for j in range(len(captions))]
    save_images(out.images, args.outdir, names)             # creates --outdir
    manifest = os.path.join(args.outdir, "prompts.jsonl")
    with open(manifest + ".tmp", "w", encoding="utf-8") as f:
        for j, prompt in enumerate(captions):
            f.write(json.dumps({"file": names[j], "prompt": prompt, "seed": args.seed + j, "index": j}) + "\n")
    os.replace(manifest + ".tmp", manifest)
    print(f"wrote {len(captions)} images and prompts.jsonl to {args.outdir}")
    return 0


def cmd_eval(args) -> int:
    from . import evaluation as ev
    if (args.images is None) == (args.ckpt is None):
        raise UsageError("give exactly one of --images (a folder of generated images) and --ckpt (a model)")
    _require(args.batch_size >= 1, "--batch-size", "an integer >= 1", args.batch_size)
    _require(args.per_prompt >= 1, "--per-prompt", "an integer >= 1", args.per_prompt)
    _require(args.resolution >= 16, "--resolution", "an integer >= 16", args.resolution)
    dev = _device(args)
    try:
        real_paths = ev.image_files(args.real, "--real")
        inception = ev.inception_features(args.inception_weights).to(dev)
        clip = ev.load_clip(args.clip_model, args.clip_weights, dev) if args.clip_weights else None
        if args.images is not None:
            fake_paths = ev.image_files(args.images, "--images")
            prompts = None
            if clip is not None:
                by_file = ev.folder_prompts(args.images)
                fake_paths = [p for p in fake_paths if os.path.basename(p) in by_file]
                prompts = [by_file[os.path.basename(p)] for p in fake_paths]
        else:
            if not args.prompts_file:
                raise UsageError("--ckpt needs --prompts-file (the prompts to generate images for)")
            prompts = [p for p in _prompts(args) for _ in range(args.per_prompt)]
    except ev.EvaluationError as e:
        raise UsageError(str(e)) from None
    skipped = []
    if args.images is not None:
        def fake_pairs():          # (images, their prompts): files that fail to load drop out with their prompt
            for images, paths in ev.load_images(fake_paths, args.batch_size, args.resolution, skipped):
                yield images, [by_file[os.path.basename(p)] for p in paths] if prompts is not None else None
    else:
        generated = [batch.cpu() for batch in _generate_batches(_load(args).generator, args, prompts)]

        def fake_pairs():
            for i, images in enumerate(generated):
                yield images, prompts[i * args.batch_size:(i + 1) * args.batch_size]
    with torch.no_grad():
        try:
            real = (images for images, _ in ev.load_images(real_paths, args.batch_size, args.resolution, skipped))
            scores = ev.frechet_distance(real, (images for images, _ in fake_pairs()), inception, dev,
                                         args.resolution)
        except ev.EvaluationError as e:
            raise UsageError(str(e)) from None
        if clip is not None:
            model, tokenizer = clip
            size = model.visual.image_size
            size = size[0] if isinstance(size, (tuple, list)) else size
            scores["clip_score"] = ev.clip_score(fake_pairs(), model.encode_image,
                                                 lambda texts: model.encode_text(tokenizer(texts).to(dev)), size, dev)
    scores["skipped_files"] = len(skipped)
    if warning := ev.bias_warning(scores["num_real"], scores["num_fake"]):
        print(f"gigagan eval: warning: {warning}", file=sys.stderr)
    text = json.dumps(scores)
    print(text)
    if args.json_out:
        with open(args.json_out + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(args.json_out + ".tmp", args.json_out)
    return 0


def cmd_export(args) -> int:
    from .training import export_pretrained
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: exists and is not a directory")
    with warnings.catch_warnings():                   # missing parents are created (a failure removes them: __main__)
        warnings.simplefilter("ignore")               # the checkpoint carries the CLIP tower's weights
        info = export_pretrained(args.ckpt, args.out)
    network = "the upsampler" if info["model"] == "upsampler" else "G"
    print(f"exported {info['source']} (step {info['step']}, {info['model']} run: {network} and the CLIP tower, EMA "
          f"weights) to {args.out}")
    return 0


@contextlib.contextmanager
def _synthesis_runner(G, args, calls: int):
    """G.synthesis, which the latent tools call, run by --compile for the command's `calls` calls (the command's
    own tune() covers the first)."""
    from .entry import EntryRunner
    G.synthesis.forward = EntryRunner(G.synthesis.forward, args.compile, _device(args), name="G.synthesis", log=print,
                                      tune_first=False).plan(calls)
    try:
        yield
    finally:
        del G.synthesis.forward                       # the class's forward again


def cmd_interpolate(args) -> int:
    from .images import save_strip
    from .latent import prompt_interpolation
    _require(args.steps >= 2, "--steps", "an integer >= 2", args.steps)
    model = _load(args)
    G = model.generator
    with use_impl(_impl(args)), _synthesis_runner(G, args, 1):
        strip = tune(prompt_interpolation, G, _z(G, args.seed, 1, _device(args)), args.prompt_a, args.prompt_b,
                     args.steps, truncation_psi=args.truncation)
    save_strip(strip, args.out, args.prompt_a, args.prompt_b)
    print(f"wrote {args.out}")
    return 0


def _seeds(text: str) -> list:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise UsageError(f"--seeds-a / --seeds-b must be comma-separated integers, got {text!r}")
    return seeds


def cmd_style_mix(args) -> int:
    """Grid: row r = seed A_r; columns = A alone, B_c alone, then each A_r x B_c mix."""
    from .images import save_grid
    from .latent import style_mix
    _require(args.crossover >= 0, "--crossover", "an integer >= 0", args.crossover)
    seeds_a, seeds_b = _seeds(args.seeds_a), _seeds(args.seeds_b)
    model = _load(args)
    G, dev = model.generator, _device(args)
    za = torch.cat([_z(G, s, 1, dev) for s in seeds_a])
    zb = torch.cat([_z(G, s, 1, dev) for s in seeds_b])

    def grid():
        tiles, captions = [], []
        for i in range(len(seeds_a)):
            caps = [args.prompt] * len(seeds_b)
            a_rep = za[i:i + 1].expand(len(seeds_b), -1)
            tiles.append(style_mix(G, a_rep[:1], a_rep[:1], [args.prompt], G.num_ws, args.truncation))
            captions.append(f"A seed {seeds_a[i]}")
            tiles.append(style_mix(G, a_rep, zb, caps, args.crossover, args.truncation))
            captions += [f"A{seeds_a[i]} coarse + B{s} fine" for s in seeds_b]
        return tiles, captions

    with use_impl(_impl(args)), _synthesis_runner(G, args, 2 * len(seeds_a)):
        tiles, captions = tune(grid)
    save_grid(torch.cat(tiles), args.out, captions=captions, columns=len(seeds_b) + 1)
    print(f"wrote {args.out}")
    return 0


def cmd_prompt_mix(args) -> int:
    from .images import save_grid
    from .latent import prompt_mix
    _require(args.crossover >= 0, "--crossover", "an integer >= 0", args.crossover)
    _require(args.count >= 1, "--count", "an integer >= 1", args.count)
    model = _load(args)
    G, dev = model.generator, _device(args)
    z = _z(G, args.seed, args.count, dev)
    with use_impl(_impl(args)), _synthesis_runner(G, args, 3):
        a = tune(prompt_mix, G, z, [args.prompt_a] * args.count, [args.prompt_a] * args.count, G.num_ws,
                 args.truncation)
        mixed = prompt_mix(G, z, [args.prompt_a] * args.count, [args.prompt_b] * args.count, args.crossover,
                           args.truncation)
        b = prompt_mix(G, z, [args.prompt_b] * args.count, [args.prompt_b] * args.count, G.num_ws, args.truncation)
    captions = ["A"] * args.count + ["A coarse + B fine"] * args.count + ["B"] * args.count
    save_grid(torch.cat([a, mixed, b]), args.out, captions=captions, columns=args.count)
    print(f"wrote {args.out}  (A: {args.prompt_a!r}; B: {args.prompt_b!r})")
    return 0


def cmd_upsample(args) -> int:
    from PIL import Image

    from .data import to_tensor
    from .images import to_pil
    from .pipeline import upsample_image
    _require(args.overlap is None or args.overlap >= 0, "--overlap", "an integer >= 0", args.overlap)
    if not os.path.isfile(args.image):
        raise UsageError(f"--image {args.image}: no such file")
    model = _load(args, need="upsampler")
    U, dev = model.upsampler, _device(args)
    try:
        with Image.open(args.image) as image:
            x = to_tensor(image)[None].to(dev)
    except Exception as e:                            # noqa: BLE001 - any decoder failure, a decompression bomb too
        raise InputFileError(f"--image {args.image}: not a readable image ({type(e).__name__}: {e})") from e
    with torch.no_grad(), use_impl(_impl(args)):
        out = upsample_image(U, x, [args.prompt], args.seed, args.overlap, args.compile, dev, log=print)
    to_pil(out[0]).save(args.out)
    print(f"wrote {args.out}: {tuple(x.shape[-2:])} -> {tuple(out.shape[-2:])}")
    return 0


def _checkout_root():
    """The repository checkout holding benchmarks/ (beside this package, or the working directory), or None:
    the benchmarks are not installed with the package; they run from a checkout."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (here, os.getcwd()):
        if os.path.isfile(os.path.join(root, "benchmarks", "__main__.py")):
            return root
    return None


QUICK_BENCH_SECONDS = 80


def cmd_bench(args) -> int:
    root = _checkout_root()
    if root is None:
        raise UsageError("runs the benchmark suite of a checkout of the repository (benchmarks/ beside gigagan/), "
                         "which this installation lacks; clone the repository and run it there "
                         "(python -m benchmarks)")
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks.__main__ import main as bench_main
    # The quick suite keeps to a budget (the main job stays under 10 minutes on a 2-core CPU); --full has none.
    forwarded = [] if args.full else ["--quick", "--max-seconds", str(QUICK_BENCH_SECONDS)]
    forwarded += ["--ops", args.ops] if args.ops else []
    forwarded += ["--csv", args.csv] if args.csv else []
    forwarded += ["--no-plots"] if args.no_plots else []
    bench_main(forwarded)
    return 0


def cmd_params(args) -> int:
    from .config import PRESETS, get_preset
    from .model import GigaGAN
    if args.preset not in PRESETS:
        print(f"gigagan params: --preset must be one of {sorted(PRESETS)}, got {args.preset!r}", file=sys.stderr)
        return 2
    with warnings.catch_warnings(), torch.device("meta"):     # meta: no memory, no CLIP weights to miss
        warnings.simplefilter("ignore")
        counts = GigaGAN(get_preset(args.preset)).parameter_counts()
    paper = {"generator": 652.5e6, "discriminator": 381.4e6, "upsampler": 359.1e6}
    print(f"preset {args.preset!r}: trainable parameters per network")
    for name, n in counts.items():
        note = f"   (paper: {paper[name] / 1e6:.1f}M, {100 * (n / paper[name] - 1):+.1f}%)" \
            if args.preset.startswith("paper") and name in paper else ""
        print(f"  {name:<18} {n:>14,d}  {n / 1e6:8.1f}M{note}")
    return 0
