"""Sharing a GigaGAN as Hugging Face models are shared.

HubMixin gives GigaGAN the contract of huggingface_hub's PyTorchModelHubMixin: save_pretrained(folder),
from_pretrained(folder or hub id, revision=, cache_dir=, token=, local_files_only=, ...), push_to_hub(repo_id)
and generate_model_card(). It is written here rather than inherited because the mixin builds the model before
it reads the weights, and a model folder must be checked before anything is allocated:

  1. config.json: GigaGANConfig.from_dict checks every field's type and plausible range;
  2. model.safetensors: its header alone is read, and checked against the file's size;
  3. the networks the file holds (the CLIP text tower, and G, D or the upsampler) are built on the meta device,
     and their tensor names and shapes compared with the header; a mismatch names the config field behind it;
  4. only then are they built for real and the weights loaded.

A folder holds config.json, model.safetensors, training.json (the trained network, its step, the metrics) and
README.md (the model card). Every error is a ModelFolderError of one line naming the file.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import errno
import json
import logging
import math
import os
import re
import tempfile
import warnings
from typing import Optional, Union

import torch

from .config import GigaGANConfig
from .extras import require
from .files import write_atomic, write_text_atomic

CONFIG_NAME, WEIGHTS_NAME, TRAINING_NAME, CARD_NAME = "config.json", "model.safetensors", "training.json", "README.md"
PARTS = ("generator", "discriminator", "upsampler")       # the networks a folder may hold, beside the CLIP tower
CARD_MARK = "<!-- gigagan model card: save_pretrained rewrites this file; delete this line to keep your edits -->"

# safetensors dtypes and their sizes in bytes (the header's offsets must agree with them)
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_MAX_HEADER = 100 << 20                                   # safetensors' own limit on the header's size


class ModelFolderError(ValueError):
    """A model folder or hub repo that cannot be loaded as it is; the message is one line naming the file."""


# -- reading a folder: the header, then the config against it ------------------------------------------------
def read_header(path: str) -> dict:
    """{tensor name: shape} from a safetensors file, reading only its header, which must agree with the file's
    size (each tensor's bytes inside the file): a truncated or corrupt file raises ModelFolderError."""
    def bad(why):
        return ModelFolderError(f"{path}: not a whole safetensors file ({why}); write it again (gigagan export) "
                                "or download it again")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise bad(f"{size} bytes, shorter than the 8-byte header length")
            length = int.from_bytes(head, "little")
            if length > min(size - 8, _MAX_HEADER):
                raise bad(f"the header claims {length} bytes, the file has {size}")
            header = json.loads(f.read(length).decode("utf-8"))
    except ModelFolderError:                      # a ValueError too: its own message, not "not JSON"
        raise
    except OSError as e:
        raise ModelFolderError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError):
        raise bad("its header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data_bytes, shapes = size - 8 - length, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = dtype in _DTYPE_BYTES and all(isinstance(d, int) and d >= 0 for d in shape) and \
                isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_bytes and \
                end - begin == math.prod(shape) * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise bad(f"the entry of {name!r} is malformed or points past the end of the file ({data_bytes} bytes "
                      f"of tensor data)")
        shapes[name] = tuple(shape)
    return shapes


def parts_in(header: dict, path: str) -> tuple:
    """The networks whose tensors the header holds, in PARTS order; the CLIP tower and G or the upsampler must
    be among them."""
    prefixes = {name.split(".", 1)[0] for name in header}
    if "clip" not in prefixes:
        raise ModelFolderError(f"{path}: holds no CLIP text tower (clip.*): not a GigaGAN model file")
    parts = tuple(p for p in PARTS if p in prefixes)
    if "generator" not in parts and "upsampler" not in parts:
        raise ModelFolderError(f"{path}: holds neither a generator nor an upsampler (tensors: "
                               f"{', '.join(sorted(prefixes))})")
    return parts


def _expected(model: torch.nn.Module) -> list:
    """[(names, shape)] per distinct tensor of the model's state dict: a tensor shared by several modules (the
    CLIP tower) is saved under one of its names."""
    groups = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), ([], tuple(tensor.shape)))[0].append(name)
    return list(groups.values())


def _meta_model(cls, config: GigaGANConfig, parts: tuple):
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(config, load_clip_weights=False, parts=parts)


def _differences(model, header) -> list:
    """[(tensor name, shape in the file or None, shape the model has or None)] where they disagree."""
    out, claimed = [], set()
    for names, shape in _expected(model):
        present = [n for n in names if n in header]
        claimed.update(present)
        if not present:
            out.append((names[0], None, shape))
        out += [(n, header[n], shape) for n in present if header[n] != shape]
    out += [(n, header[n], None) for n in header if n not in claimed]
    return out


def check_against_header(cls, config: GigaGANConfig, header: dict, parts: tuple, where: str) -> None:
    """Raise ModelFolderError, one line naming the config field, when the networks `config` describes differ
    from the tensors in `header` by name or shape. Built on the meta device: nothing is allocated."""
    try:
        differences = _differences(_meta_model(cls, config, parts), header)
    except ValueError as e:                       # the modules' own checks of the config (block counts and such)
        raise ModelFolderError(f"{where}: {CONFIG_NAME}: {e}") from None
    if not differences:
        return
    name, in_file, by_config = differences[0]
    shape = lambda s: "none" if s is None else list(s)  # noqa: E731
    tensor = f"{name}: {shape(in_file)} in {WEIGHTS_NAME}, {shape(by_config)} from {CONFIG_NAME}"
    fields, exact = _blame(cls, config, parts, header, name)
    if exact:
        path, ours, theirs = exact
        raise ModelFolderError(f"{where}: {CONFIG_NAME} does not match {WEIGHTS_NAME}: {path} is {_json(ours)} in "
                               f"{CONFIG_NAME}, the weights were saved with {_json(theirs)} ({tensor})")
    hint = f"check {', '.join(fields)} ({tensor})" if fields else tensor
    raise ModelFolderError(f"{where}: {CONFIG_NAME} does not match {WEIGHTS_NAME}: {hint}")


def _json(value) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _numeric_fields(node, prefix: str):
    for f in dataclasses.fields(node):
        value, path = getattr(node, f.name), f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _numeric_fields(value, path)
        elif isinstance(value, int) and not isinstance(value, bool) or \
                isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
            yield path, value


def _replaced(node, names: list, value):
    if len(names) == 1:
        return dataclasses.replace(node, **{names[0]: value})
    return dataclasses.replace(node, **{names[0]: _replaced(getattr(node, names[0]), names[1:], value)})


def _trials(value, in_file, by_config) -> list:
    """Values to try for a field: each solving one mismatched dimension when the shape is linear in the field,
    then nearby ones (a changed layer or block count)."""
    if isinstance(value, tuple):
        return [tuple(2 * v for v in value), tuple(max(v // 2, 1) for v in value), value[:-1], value + value[-1:]]
    out = []
    for have, want in zip(by_config or (), in_file or ()):
        if have and have != want and want * value % have == 0:
            out.append(want * value // have)
        if have != want:
            out.append(want)
    return [v for v in dict.fromkeys(out + [2 * value, value // 2, value + 1, value - 1]) if v >= 0 and v != value]


def _blame(cls, config, parts, header, tensor: str):
    """([config fields that shape `tensor`], (field, config's value, the value that reproduces the file) or
    None). Meta builds only, on the failure path: the fields of the tensor's network are tried one at a time."""
    part = tensor.split(".", 1)[0]
    section = "text" if part == "clip" else part
    node = getattr(config, section, None)
    if not dataclasses.is_dataclass(node):
        return [], None

    def shapes(model):
        return {n: s for names, s in _expected(model) for n in names}

    base = shapes(_meta_model(cls, config, parts))
    fields = []
    for path, value in _numeric_fields(node, section):
        for trial in _trials(value, header.get(tensor), base.get(tensor)):
            try:
                model = _meta_model(cls, _replaced(config, path.split("."), trial), parts)
            except Exception:                     # noqa: BLE001 - a value the modules refuse is no candidate
                continue
            if not any(d[0].split(".", 1)[0] == part for d in _differences(model, header)):
                return [path], (path, value, trial)
            if shapes(model).get(tensor) != base.get(tensor) and path not in fields:
                fields.append(path)
    return fields, None


# -- where the files are: a local folder or a hub repo ----------------------------------------------------------
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: str) -> bool:
    """"org/name", the form of a hub repo id, where no such local path exists, nor a local folder "org" (so a
    mistyped runs/tiny is a missing local folder, not a download)."""
    return bool(_REPO_ID.match(name)) and ".." not in name and not os.path.exists(name) and \
        not os.path.exists(name.split("/", 1)[0])


@contextlib.contextmanager
def _quiet_hub():
    """huggingface_hub logs each retry of a failed request as warnings; the error that follows is one line."""
    require("huggingface_hub.file_download", "loading a model from the Hugging Face Hub")   # its import sets the
    hub_logger = logging.getLogger("huggingface_hub")                                       # level: before ours
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def _hub_file(repo_id: str, filename: str, optional: bool = False, **kwargs) -> Optional[str]:
    hub = require("huggingface_hub", "loading a model from the Hugging Face Hub")
    errors = require("huggingface_hub.errors", "loading a model from the Hugging Face Hub")
    try:
        with _quiet_hub():
            return hub.hf_hub_download(repo_id=repo_id, filename=filename, **kwargs)
    except (errors.EntryNotFoundError, errors.LocalEntryNotFoundError) as e:
        if optional:
            return None
        if not isinstance(e, errors.LocalEntryNotFoundError):
            why = "the repo has no such file"
        elif kwargs.get("local_files_only") or hub.constants.HF_HUB_OFFLINE:
            why = "not in the local cache, and downloads are off (HF_HUB_OFFLINE or local_files_only)"
        else:
            why = "not in the local cache, and the hub cannot be reached"
        raise ModelFolderError(f"{repo_id}: no such local folder, and as a hub id: {filename}: {why}") from None
    except (errors.HfHubHTTPError, errors.OfflineModeIsEnabled, errors.HFValidationError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelFolderError(f"{repo_id}: no such local folder, and as a hub id: cannot fetch {filename} "
                               f"({type(e).__name__}: {first})") from None


def locate(name: str, **hub_kwargs) -> tuple:
    """(config path, weights path, training.json path or None, where) for a local folder or a hub id (downloaded
    into, or under HF_HUB_OFFLINE=1 read from, the hub's cache)."""
    if os.path.isdir(name):
        paths = [os.path.join(name, n) for n in (CONFIG_NAME, WEIGHTS_NAME, TRAINING_NAME)]
        for path in paths[:2]:
            if not os.path.isfile(path):
                raise ModelFolderError(f"{path}: no such file; a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME} "
                                       "(GigaGAN.save_pretrained, gigagan export)")
        return paths[0], paths[1], paths[2] if os.path.isfile(paths[2]) else None, name
    if os.path.exists(name):
        raise ModelFolderError(f"{name}: a file, not a model folder ({CONFIG_NAME} and {WEIGHTS_NAME})")
    if not is_hub_id(name):
        raise ModelFolderError(f"{name}: no such folder, and not a hub repo id (org/name)")
    config = _hub_file(name, CONFIG_NAME, **hub_kwargs)
    return config, None, _hub_file(name, TRAINING_NAME, optional=True, **hub_kwargs), name


def read_config(path: str) -> GigaGANConfig:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ModelFolderError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ModelFolderError(f"{path}: not JSON ({e})") from None
    try:
        return GigaGANConfig.from_dict(data)
    except ValueError as e:
        raise ModelFolderError(f"{path}: {e}") from None


def read_training_info(path: Optional[str]) -> dict:
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelFolderError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(info, dict):
        raise ModelFolderError(f"{path}: must hold a JSON object")
    return info


# -- the model card -----------------------------------------------------------------------------------------
def model_card(config: GigaGANConfig, parts: tuple, info: dict, repo_id: Optional[str] = None) -> str:
    """README.md of a model folder: the hub's metadata, how to load it, the training (steps, the run's settings),
    the metrics logged during training and the model config."""
    network = "upsampler" if "upsampler" in parts and "generator" not in parts else "generator"
    metrics = info.get("metrics") or {}
    meta = ["library_name: gigagan-kernels", "pipeline_tag: " + ("image-to-image" if network == "upsampler"
                                                                  else "text-to-image"),
            "tags:", "- gigagan", "- gan", "- text-to-image", "- pytorch_model_hub_mixin", "- model_hub_mixin"]
    if metrics:
        meta += ["metrics:"] + [f"- {name}" for name in sorted(metrics)]
    source = repo_id or "path/to/this/folder"
    lines = ["---", *meta, "---", CARD_MARK, "",
             f"# GigaGAN {config.name} ({network})", "",
             f"A GigaGAN {network} (preset `{config.name}`) with its frozen CLIP text tower, trained with "
             "gigagan-kernels (`gigagan train`); the weights are the EMA of training.", "",
             "```python", "import torch", "from gigagan import GigaGAN", "",
             f"model = GigaGAN.from_pretrained({source!r})"]
    caption = '["a red circle on a blue background"]'
    if network == "generator":
        lines += ["G = model.generator", f"images = G(torch.randn(1, G.z_dim), {caption})[0]   # [1, 3, R, R]"]
    else:
        lines += ["U = model.upsampler", "low = torch.rand(1, 3, U.in_resolution, U.in_resolution) * 2 - 1",
                  f"high = U(low, {caption})[0]   # [1, 3, R * scale, R * scale]"]
    lines += ["```", "", "## Training", "", "| | |", "|---|---|"]
    rows = [("network", info.get("model", "base" if network == "generator" else "upsampler")),
            ("training steps", info.get("step", "unknown"))]
    train = info.get("train_config") or {}
    for key in ("preset", "data", "batch_size", "grad_accum", "lr", "betas", "r1_gamma", "precision", "augment",
                "unconditional"):
        if key in train and train[key] not in ("", None, False):
            rows.append((key, train[key]))
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value | step | images (generated / real) |", "|---|---|---|---|"]
        for name, m in sorted(metrics.items()):
            images = f"{m.get('num_fake', '?')} / {m.get('num_real', '-')}"
            lines.append(f"| {name} | {m['value']:.4g} | {m.get('step', '?')} | {images} |")
        lines += ["", "FID of the EMA generator against the real images, measured during training "
                  "(`gigagan train --metrics fid`); fewer than 2,000 images a side biases FID upward."]
    else:
        lines.append("None were measured during training (`gigagan train --metrics fid --fid-real DIR`).")
    lines += ["", "## Config", "", "```json", config.to_json(), "```", ""]
    return "\n".join(lines)


def _as_os_error(e: Exception, path: str) -> Exception:
    """A failed write as the OSError it is. safetensors reports one as SafetensorError("... I/O error: File too
    large (os error 27)"), which would read as a bad weights file rather than a full disk at `path`."""
    if isinstance(e, OSError) or type(e).__name__ != "SafetensorError":
        return e
    found = re.search(r"\(os error (\d+)\)", str(e))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code), path)


# -- the mixin ------------------------------------------------------------------------------------------------
class HubMixin:
    """PyTorchModelHubMixin's methods for GigaGAN (see the module docstring for why they are not inherited)."""

    training_info: dict

    def _present_parts(self) -> tuple:
        return tuple(p for p in PARTS if getattr(self, p, None) is not None)

    def generate_model_card(self, *args, repo_id: Optional[str] = None, **kwargs):
        """The model card (huggingface_hub.ModelCard) save_pretrained writes as README.md."""
        text = model_card(self.config, self._present_parts(), getattr(self, "training_info", {}), repo_id)
        return require("huggingface_hub", "the model card").ModelCard(text)

    def save_pretrained(self, save_directory: Union[str, os.PathLike], *, config=None, repo_id: Optional[str] = None,
                        push_to_hub: bool = False, model_card_kwargs: Optional[dict] = None,
                        **push_to_hub_kwargs) -> Optional[str]:
        """Write config.json, model.safetensors (the networks this model holds), training.json (when the model
        has training_info) and README.md, each atomically and with the umask's mode, creating the folder and
        its parents. A README.md without the generated card's first line is yours and is kept."""
        if config is not None and config != self.config and config != self.config.to_dict():
            raise ValueError("save_pretrained: config must be the model's own (GigaGAN.config)")
        save_model = require("safetensors.torch", "save_pretrained").save_model
        os.makedirs(save_directory, exist_ok=True)
        directory = os.fspath(save_directory)
        write_text_atomic(os.path.join(directory, CONFIG_NAME), self.config.to_json())
        weights_path = os.path.join(directory, WEIGHTS_NAME)

        def write_weights(tmp):
            try:
                save_model(self, tmp, metadata={"format": "pt"})
            except Exception as e:
                if (err := _as_os_error(e, weights_path)) is e:
                    raise
                raise err from e
        write_atomic(weights_path, write_weights)
        info = getattr(self, "training_info", None)
        if info:
            write_text_atomic(os.path.join(directory, TRAINING_NAME), json.dumps(info, indent=1))
        card_path = os.path.join(directory, CARD_NAME)
        if _card_is_ours(card_path):
            card = self.generate_model_card(repo_id=repo_id, **(model_card_kwargs or {}))
            write_text_atomic(card_path, str(card))
        if push_to_hub:
            return self.push_to_hub(repo_id or os.path.basename(os.path.abspath(directory)),
                                    model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs)
        return None

    def push_to_hub(self, repo_id: str, *, config=None, commit_message: str = "Push model using huggingface_hub.",
                    private: Optional[bool] = None, token: Optional[str] = None, branch: Optional[str] = None,
                    create_pr: Optional[bool] = None, allow_patterns=None, ignore_patterns=None, delete_patterns=None,
                    model_card_kwargs: Optional[dict] = None) -> str:
        """Create the repo (if needed) and upload the folder save_pretrained writes, in one commit."""
        hub = require("huggingface_hub", "push_to_hub")
        api = hub.HfApi(token=token)
        repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = os.path.join(tmp, "model")
            self.save_pretrained(folder, config=config, repo_id=repo_id, model_card_kwargs=model_card_kwargs)
            return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder,
                                     commit_message=commit_message, revision=branch, create_pr=create_pr,
                                     allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
                                     delete_patterns=delete_patterns)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], *, force_download: bool = False,
                        token: Optional[Union[str, bool]] = None, cache_dir: Optional[str] = None,
                        local_files_only: bool = False, revision: Optional[str] = None,
                        map_location: Optional[Union[str, torch.device]] = "cpu"):
        """A model from a folder save_pretrained (or gigagan export) wrote, or from a hub repo id ("org/name",
        downloaded into the hub's cache, or read from it under HF_HUB_OFFLINE=1). Builds only the networks
        the file holds, after checking config.json and the file's header against each other (nothing is
        allocated before that). Any problem raises ModelFolderError, one line naming the file."""
        name = os.fspath(pretrained_model_name_or_path)
        hub_kwargs = dict(revision=revision, cache_dir=cache_dir, force_download=force_download, token=token,
                          local_files_only=local_files_only)
        config_path, weights_path, info_path, where = locate(name, **hub_kwargs)
        config = read_config(config_path)              # before the weights are downloaded
        if weights_path is None:
            weights_path = _hub_file(name, WEIGHTS_NAME, **hub_kwargs)
        header = read_header(weights_path)
        parts = parts_in(header, weights_path)
        check_against_header(cls, config, header, parts, where)
        info = read_training_info(info_path)
        model = cls(config, load_clip_weights=False, parts=parts)   # the file holds the CLIP tower's weights
        load_model = require("safetensors.torch", "from_pretrained").load_model
        try:
            missing, unexpected = load_model(model, weights_path, strict=False)
        except Exception as e:                    # noqa: BLE001 - SafetensorError and friends: an unreadable file
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ModelFolderError(f"{weights_path}: cannot load it ({type(e).__name__}: {first})") from None
        if missing or unexpected:                 # the header check above makes this unreachable
            raise ModelFolderError(f"{weights_path}: does not match {CONFIG_NAME}: missing {sorted(missing)[:3]}, "
                                   f"unexpected {sorted(unexpected)[:3]}")
        model.training_info = copy.deepcopy(info)
        return model.to(map_location).eval()


def _card_is_ours(path: str) -> bool:
    """True when README.md is absent or is the card save_pretrained wrote (its marker line kept)."""
    try:
        with open(path, encoding="utf-8") as f:
            return CARD_MARK in f.read()
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError):
        return False
