"""The gigagan command line (also `python -m gigagan`).

  train        train G and D, or (--model upsampler) the upsampler (one process, or one per GPU under torchrun)
  sample       images for prompts from a checkpoint's EMA generator (a grid, or one PNG per image)
  generate     the pipeline: base generator, then the upsampler (tiled up to --output-size), seed + i per image
  export       the network a run trained (EMA) as a pretrained folder, with its model card
  interpolate  a prompt-interpolation strip for one z
  style-mix    coarse blocks from seed A, fine blocks from seed B
  prompt-mix   coarse blocks from prompt A (layout), fine blocks from prompt B (texture, style)
  upsample     the text-conditioned upsampler on an image, tiled when it is larger than trained
  eval         FID and CLIP score of a model or a folder against real images (local weights only)
  bench        the kernel benchmark suite, then its summary
  params       each network's parameter count for a preset (built on the meta device)

Exit codes: 0 done; 1 the environment or an input file failed (a full disk, a read-only directory, a file too
large, a corrupt checkpoint or model folder, data without a usable sample); 2 a usage error (a bad flag, a
resume refused because a setting changed, an --out held by another trainer or holding another run); 128+N
stopped by signal N (143 SIGTERM, 130 SIGINT), after saving a checkpoint when training. A failure is one line
on stderr naming the flag, the file and the cause; --debug (or GIGAGAN_DEBUG=1) adds the traceback.
"""
from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import signal
import sys
import traceback
import typing
import warnings

from gigagan_kernels.backend import ENV_VAR, IMPLS

from .entry import COMPILE_CHOICES, COMPILE_HELP
from .evaluation import INCEPTION_HELP
from .training.config import HELP_GROUPS, TrainConfig, config_flag


IMPL_CHOICES = ("auto",) + IMPLS
IMPL_HELP = f"the ops' backend for the whole command (default: ${ENV_VAR}, else auto)"


def _add_sampling_args(p, out_required: bool = True):
    p.add_argument("--ckpt", required=True, help="a checkpoint file, a run directory (its newest checkpoint), a "
                                                 "pretrained folder from gigagan export, or its hub id (org/name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truncation", type=float, default=1.0, help="text-conditioned truncation psi (1 = off)")
    p.add_argument("--impl", default=None, choices=IMPL_CHOICES, help=IMPL_HELP)
    _add_compile_arg(p)
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=out_required, help="output PNG")


def _add_compile_arg(p):
    p.add_argument("--compile", default="auto", choices=COMPILE_CHOICES, help=COMPILE_HELP + " (default: auto)")


def _floats(text: str) -> tuple:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _with_default(help_text: str, default) -> str:
    """The help with its one default: the field's, unless the help says its default itself (e.g. one that
    depends on the machine)."""
    if "default" in help_text:
        return help_text
    if isinstance(default, tuple):
        shown = ",".join(str(v) for v in default) or "none"
    else:
        shown = "none" if default is None else "off" if default == "" else default
    return f"{help_text} (default: {shown})"


def add_config_flags(parser: argparse.ArgumentParser, cls, groups: dict | None = None) -> dict:
    """One flag per field of the dataclass cls, from its type, default and metadata (help, flag, choices): the
    defaults are stated once, in the dataclass. groups: {title: field names}, the help's argument groups, each
    field in one. Returns the argparse groups by title."""
    hints = typing.get_type_hints(cls)
    sections = {title: parser.add_argument_group(title) for title in (groups or {})}
    where = {name: sections[title] for title, names in (groups or {}).items() for name in names}
    for field in dataclasses.fields(cls):
        add_config_flag(where.get(field.name, parser), field, hints)
    return sections


def add_config_flag(parser, field, hints: dict) -> None:
    """The flag of one dataclass field (add_config_flags)."""
    kind = hints[field.name]
    if typing.get_origin(kind) is typing.Union:                       # Optional[X]
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    help_text = field.metadata.get("help", "")
    flag = config_flag(field)
    if kind is bool:                                                    # a switch: off unless given
        action = "store_false" if field.default else "store_true"
        parser.add_argument(flag, dest=field.name, action=action, help=help_text)
        return
    if field.metadata.get("nargs"):                                    # a list of strings
        parser.add_argument(flag, dest=field.name, nargs=field.metadata["nargs"], default=field.default,
                            metavar="ITEM", help=_with_default(help_text, field.default))
        return
    convert = _floats if kind is tuple else kind
    bare = {"nargs": "?", "const": field.metadata["const"]} if field.metadata.get("const") is not None else {}
    parser.add_argument(flag, dest=field.name, type=convert, default=field.default,
                        choices=field.metadata.get("choices"), help=_with_default(help_text, field.default),
                        **bare)


def train_config_defaults(argv) -> dict:
    """The TrainConfig fields of `gigagan train --config FILE`, checked, to become the flags' defaults."""
    if not argv or argv[0] != "train":
        return {}
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv[1:])
    if known.config is None:
        return {}
    try:
        with open(known.config) as f:
            values = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigFileError(f"--config {known.config}: cannot read a JSON object ({e})") from None
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(values, dict) or set(values) - names:
        unknown = sorted(set(values) - names) if isinstance(values, dict) else "not an object"
        raise ConfigFileError(f"--config {known.config}: not TrainConfig fields: {unknown}")
    hints = typing.get_type_hints(TrainConfig)
    for name, value in values.items():
        if (problem := _config_value_problem(name, hints[name], value)) is not None:
            raise ConfigFileError(f"--config {known.config}: {name} must be {problem}, got {value!r}")
    for name in ("betas", "model_overrides"):
        if name in values:
            values[name] = tuple(values[name])
    return values


def _config_value_problem(name: str, kind, value):
    """What a --config value of field `name` (type `kind`) must be when it is not that, else None: a wrong type
    in the file is the file's mistake, one line, not a traceback from deep inside the trainer."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if typing.get_origin(kind) is typing.Union:                           # Optional[X]
        if value is None:
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if name == "model_overrides":
        ok, what = isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of strings"
    elif kind is tuple:
        ok, what = isinstance(value, list) and all(number(v) for v in value), "a list of numbers"
    elif kind is bool:
        ok, what = isinstance(value, bool), "true or false"
    elif kind is int:
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif kind is float:
        ok, what = number(value), "a number"
    else:
        ok, what = isinstance(value, str), "a string"
    return None if ok else what


class ConfigFileError(ValueError):
    """A --config file that is not a JSON object of TrainConfig fields."""


def build_parser(train_defaults: dict | None = None) -> argparse.ArgumentParser:
    exit_codes = __doc__[__doc__.index("Exit codes:"):]
    # The subcommands are listed once, by argparse (COMMAND's section); the epilog adds only the exit codes.
    parser = argparse.ArgumentParser(prog="gigagan", description="GigaGAN with fused kernels",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=exit_codes)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    t = sub.add_parser("train", help="train G and D, or (--model upsampler) the upsampler, on one process or one "
                                     "per GPU under torchrun",
                       description="Every TrainConfig field is a flag; --config FILE loads a JSON object of them "
                                   "(flags given on the command line win).")
    t.add_argument("--config", default=None, help="a JSON file of TrainConfig fields, e.g. a run's train_config "
                                                   "(default: none)")
    groups = add_config_flags(t, TrainConfig, HELP_GROUPS)
    # impl None defers to $GIGAGAN_KERNELS_IMPL; a --config file's values are the defaults the flags override.
    t.set_defaults(**{"impl": None, **(train_defaults or {})})
    t = groups["checkpoints"]                              # the run's start: new, resumed or overwritten
    t.add_argument("--resume", action="store_true",
                   help="continue from the newest whole checkpoint in --out (an error when there is none)")
    t.add_argument("--resume-or-start", action="store_true",
                   help="continue from the newest whole checkpoint, or start from step 0 when there is none "
                        "(for a scheduler that reruns one command)")
    t.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out that holds another run; its files move to previous-runs/")
    t.add_argument("--allow-config-change", action="store_true",
                   help="resume even though settings that the saved state depends on changed (batch size, seed, "
                        "data, losses, precision, model, ...); the log records each change. Without it such a "
                        "resume is refused (exit 2)")

    s = sub.add_parser("sample", help="images for prompts from a checkpoint's EMA generator: a captioned grid "
                                      "(--out) or one PNG each (--outdir)")
    _add_sampling_args(s, out_required=False)
    s.add_argument("--outdir", default=None, help="write one PNG per image here, plus prompts.jsonl naming them "
                                                   "(for FID tools), instead of a grid")
    s.add_argument("--prompt", action="append", default=None, help="repeatable")
    s.add_argument("--prompts-file", default=None, help="a text file with one prompt per line (blank lines skipped)")
    s.add_argument("--per-prompt", type=int, default=1, help="images per prompt, each from its own z")
    s.add_argument("--batch-size", type=int, default=16, help="images generated at once")
    s.add_argument("--columns", type=int, default=4)

    g = sub.add_parser("generate", help="the pipeline: prompts to images (base generator, then the upsampler, "
                                        "tiled up to --output-size), seed + i per image",
                       description="gigagan.GigaGANPipeline: image j uses seed --seed + j, so a prompt and seed give "
                                   "the same image whatever the other prompts (on one device, impl, dtype and "
                                   "--batch-size).")
    _add_sampling_args(g, out_required=False)
    g.add_argument("--upsampler", default=None, help="an upsampler run's checkpoint, run directory or pretrained "
                                                     "folder: chained after the base generator")
    g.add_argument("--output-size", type=int, default=None,
                   help="the images' side in pixels (default: one upsampler pass, or the base resolution); larger "
                        "re-applies the upsampler on overlapping tiles")
    g.add_argument("--overlap", type=int, default=None, help="tile overlap in the upsampler's input pixels "
                                                             "(default: a quarter of its input)")
    g.add_argument("--outdir", default=None, help="write one PNG per image here, plus prompts.jsonl naming them")
    g.add_argument("--prompt", action="append", default=None, help="repeatable")
    g.add_argument("--prompts-file", default=None, help="a text file with one prompt per line (blank lines skipped)")
    g.add_argument("--per-prompt", type=int, default=1, help="images per prompt, each with its own seed")
    g.add_argument("--batch-size", type=int, default=1, help="rows per network call (the image of seed s is row "
                                                             "s %% batch-size)")
    g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    g.add_argument("--columns", type=int, default=4)

    e = sub.add_parser("export", help="the network a run trained (EMA) as a pretrained folder, with its model card",
                       description="Write the EMA of the network the run trained (G for a base run, the upsampler "
                       "for an upsampler run), with the CLIP text tower, as a pretrained folder: config.json, "
                       "model.safetensors, training.json and README.md (the model card), with the umask's mode. "
                       "GigaGAN.from_pretrained, GigaGANPipeline and every --ckpt take it (docs/sharing.md).")
    e.add_argument("--ckpt", required=True, help="a checkpoint file or a run directory (its newest checkpoint)")
    e.add_argument("--out", required=True, help="the folder to write, created with its missing parents; every "
                                                "command's --ckpt takes it")

    i = sub.add_parser("interpolate", help="a prompt-interpolation strip for one z")
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

    u = sub.add_parser("upsample", help="the text-conditioned upsampler on an image, tiled when it is larger than "
                                        "trained")
    _add_sampling_args(u)
    u.add_argument("--image", required=True, help="input PNG/JPEG")
    u.add_argument("--prompt", required=True)
    u.add_argument("--overlap", type=int, default=None, help="tile overlap in input pixels")

    ev = sub.add_parser("eval", help="FID (and CLIP score) of a model or an image folder against real images "
                                     "(local weights only)")
    ev.add_argument("--real", required=True, help="a folder of reference images")
    ev.add_argument("--images", default=None, help="a folder of generated images (from gigagan sample --outdir)")
    ev.add_argument("--ckpt", default=None, help="or a model: checkpoint, run directory or pretrained folder; "
                                                 "its images are generated in memory for --prompts-file")
    ev.add_argument("--prompts-file", default=None, help="with --ckpt: one prompt per line")
    ev.add_argument("--per-prompt", type=int, default=1)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--truncation", type=float, default=1.0)
    ev.add_argument("--inception-weights", default=None, help=INCEPTION_HELP)
    ev.add_argument("--clip-weights", default=None, help="a local open_clip checkpoint: adds the CLIP score")
    ev.add_argument("--clip-model", default="ViT-B-32", help="its open_clip architecture")
    ev.add_argument("--resolution", type=int, default=299, help="both sets are resized to this first")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--impl", default=None, choices=IMPL_CHOICES, help=IMPL_HELP)
    _add_compile_arg(ev)
    ev.add_argument("--device", default=None)
    ev.add_argument("--json-out", default=None, help="also write the scores to this JSON file")

    b = sub.add_parser("bench", help="run the kernel benchmarks and print the summary")
    b.add_argument("--full", action="store_true", help="full repetitions (default: quick)")
    b.add_argument("--ops", default=None)
    b.add_argument("--csv", default=None)
    b.add_argument("--no-plots", action="store_true")

    p = sub.add_parser("params", help="each network's parameter count for a preset (built on the meta device)")
    p.add_argument("--preset", default="paper", help="tiny, small or paper (default: paper)")
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true",
                             help="print the traceback of a failure too (also GIGAGAN_DEBUG=1)")
        command.epilog = exit_codes
    return parser


class Terminated(BaseException):
    """SIGTERM outside the training loop (which handles its own): ends the command with a line, not silently."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame):
    raise Terminated(signum)


def _path_flag(args, path: str) -> tuple:
    """(the flag whose value is `path` or a folder holding it, as "--out runs/x: ", whether it is `path` itself),
    or ("", False)."""
    target = os.path.abspath(path)
    for name, value in sorted(vars(args).items()):
        if not isinstance(value, str) or name in ("command", "impl", "device", "preset", "prompt"):
            continue
        root = os.path.abspath(value.split("{")[0]) if "{" in value else os.path.abspath(value)
        if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
            return f"--{name.replace('_', '-')} {value}: ", target == root
    return "", False


def failure(args, e: BaseException) -> tuple:
    """(exit code, the one line naming the flag, the file and the cause) for an error that the environment,
    an input file or the command line caused; None for any other (a bug, which keeps its traceback)."""
    from . import cli
    from .data import DataError
    from .evaluation import EvaluationError
    from .rundir import RunDirError, cause, os_error_in
    from .training import CheckpointError, ConfigChangeError, ConfigError, TrainingError
    from .training.distributed import peer_failure
    command = f"gigagan {args.command}"
    out = f"--out {args.out}: " if getattr(args, "out", None) else ""
    if isinstance(e, cli.UsageError):
        return 2, f"{command}: {e}"
    if isinstance(e, cli.InputFileError):
        return 1, f"{command}: {e}"
    if isinstance(e, EvaluationError):                     # its message names the flag
        return 2, f"{command}: {e}"
    if isinstance(e, DataError):
        return 1, f"{command}: --data {args.data}: {e}"
    if isinstance(e, ConfigError):
        return 2, f"{command}: {cli._flag(e.field)} {e.message}"
    if isinstance(e, ConfigChangeError):
        return 2, f"{command}: {out}{e}"
    if isinstance(e, RunDirError):
        return e.exit_code, f"{command}: {out}{e}"
    if isinstance(e, (CheckpointError, TrainingError)):
        flag = f"--ckpt {args.ckpt}: " if getattr(args, "ckpt", None) else out
        return 1, f"{command}: {flag}{e}"
    if type(e).__name__ == "SafetensorError":              # safetensors' own: a corrupt model.safetensors
        flag = f"--ckpt {args.ckpt}: " if getattr(args, "ckpt", None) else ""
        return 1, f"{command}: {flag}reading the weights failed (SafetensorError: {e})"
    if isinstance(e, KeyboardInterrupt):
        return 128 + signal.SIGINT, f"{command}: interrupted (SIGINT)"
    if isinstance(e, Terminated):
        return 128 + e.signum, f"{command}: stopped by {signal.Signals(e.signum).name}"
    if (why := peer_failure(e)) is not None:
        return 1, (f"{command}: rank {os.environ.get('RANK', '')}: another rank stopped first (its own line says "
                   f"why), so this one cannot go on ({why})")
    err = os_error_in(e)
    if err is not None:
        files = [f for f in (err.filename, err.filename2) if f]
        files = [str(f) for f in files]
        flag, itself = _path_flag(args, files[0]) if files else (out, False)
        where = f"{' -> '.join(files)}: " if files and not (itself and len(files) == 1) else ""
        return 1, f"{command}: {flag}{where}{cause(err)}"
    return None


OUTPUT_FOLDER_FLAGS = {"train": ("out",), "export": ("out",), "sample": ("outdir",), "generate": ("outdir",)}


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the command prints it: one line, without the source line Python adds."""
    return f"gigagan: warning: {' '.join(str(message).split())} ({category.__name__})\n"


def _folders_to_come(args) -> list:
    """(folder, its highest ancestor that does not exist yet) of each output folder the command may create; a
    failed command removes them again while they are empty (_remove_empty). Under torchrun rank 0 alone, which
    creates the run directory."""
    if os.environ.get("RANK", "0") != "0":
        return []
    found = []
    for name in OUTPUT_FOLDER_FLAGS.get(args.command, ()):
        value = getattr(args, name, None)
        if not value:
            continue
        folder = top = os.path.abspath(value)
        if os.path.exists(folder):
            continue
        while not os.path.exists(os.path.dirname(top)):
            top = os.path.dirname(top)
        found.append((folder, top))
    return found


def _remove_empty(created: list) -> None:
    """Remove the output folders a failed command created, and the parents it created for them, where empty."""
    for folder, top in created:
        while True:
            try:
                os.rmdir(folder)                      # only ever an empty folder
            except OSError:
                break
            if folder == top:
                break
            folder = os.path.dirname(folder)


def main(argv=None) -> int:
    program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("GIGAGAN_DEBUG", "").strip() not in ("", "0")
    try:
        defaults = train_config_defaults(argv)
    except ConfigFileError as e:
        print(f"gigagan train: {e}", file=sys.stderr)
        return 2
    args = build_parser(defaults).parse_args(argv)
    from . import cli
    created = _folders_to_come(args)
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:                                     # not the main thread: the handlers stay as they are
        previous = {}
    try:
        code = getattr(cli, "cmd_" + args.command.replace("-", "_"))(args) or 0
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        _remove_empty(created)
        known = failure(args, e)
        if known is None:
            raise
        if debug:
            traceback.print_exc()
        print(" ".join(known[1].split()), file=sys.stderr)        # one line, whatever the cause's text holds
        code = known[0]
    finally:
        warnings.formatwarning = formatwarning
        for s, handler in previous.items():
            signal.signal(s, handler)
    if program and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_without_finalizing(code)
    return code


def _exit_without_finalizing(code: int) -> None:
    """End a torchrun rank without the interpreter's finalisation. The gloo process group's worker threads
    outlive destroy_process_group (DDP keeps the group referenced, so they are never joined); one that frees a
    tensor's Python object after finalisation began is ended by CPython with pthread_exit, whose unwind through
    a noexcept destructor calls std::terminate: "terminate called without an active exception", SIGABRT, and
    torchrun fails the job (benchmarks/NOTES.md, "torchrun at shutdown"). Everything of ours is closed by now;
    the atexit handlers still run."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
