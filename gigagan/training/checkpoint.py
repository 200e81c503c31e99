"""Checkpoint I/O: loading with weights_only=True and whole-archive checks, the newest loadable checkpoint of
a run, the RNG state a resume restores, and the EMA model as a pretrained folder. Writing (atomic, with
retention) is the run directory's (gigagan/rundir.py)."""
from __future__ import annotations

import errno
import json
import os
import pickle
import random
from typing import Optional

import torch

from ..config import GigaGANConfig
from ..model import GigaGAN
from ..rundir import RunDirectory, os_error_in, whole_archive
from .errors import CheckpointError


def rng_state() -> dict:
    """Every RNG a training step draws from (torch CPU and CUDA, Python's), as plain tensors and lists."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint with weights_only=True; a truncated or corrupt file raises CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if why := whole_archive(path):
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (not a whole torch.save archive: {why})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e) and "Weights only" not in str(e):
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt (UnpicklingError: {e})") from e
        # torch's message suggests weights_only=False, which would run whatever code the file holds.
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain containers, which "
                              "gigagan checkpoints never do; refusing to unpickle it (that could run arbitrary "
                              "code). It was not written by gigagan train.") from None
    except Exception as e:                                   # noqa: BLE001 - any failure means unusable
        err = os_error_in(e)
        if err is not None and err.errno not in (None, errno.EINVAL):
            raise err from e                                 # the environment (EIO, EACCES): not a bad file
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {e})") from e
    for key in ("step", "config", "model", "g_ema", "opt_g", "opt_d"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}; it is not a gigagan training checkpoint")
    return state


def list_checkpoints(directory: str) -> list:
    """Whole checkpoint paths in a run directory, newest first (read only: nothing is moved)."""
    return RunDirectory(directory).checkpoints(check_untracked=False)


def load_latest_checkpoint(directory: str, log=print) -> Optional[dict]:
    """The newest loadable checkpoint in `directory`, read only: a bad one is reported and the previous one
    used (a training resume moves bad ones aside instead, Trainer.resume)."""
    for path in RunDirectory(directory, log=log).checkpoints(check_untracked=False):
        try:
            state = load_checkpoint(path)
            state["path"] = path
            return state
        except CheckpointError as e:
            log(f"warning: {e}; falling back to the previous checkpoint")
    return None


# Beside config.json and model.safetensors in an exported folder: which network was trained, and from where.
EXPORT_INFO_NAME = "training.json"


def export_pretrained(path: str, directory: str) -> dict:
    """Write the EMA model of a checkpoint file or run directory as a pretrained folder (GigaGAN.save_pretrained
    plus training.json); returns what training.json says."""
    model, state = model_from_checkpoint(path)
    info = {"model": json.loads(state.get("train_config", "{}")).get("model", "base"), "step": state["step"],
            "source": os.path.abspath(state.get("path", path))}
    model.save_pretrained(directory)
    tmp = os.path.join(directory, f".{EXPORT_INFO_NAME}.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(directory, EXPORT_INFO_NAME))
    return info


def is_pretrained_folder(path: str) -> bool:
    from ..model import CONFIG_NAME, WEIGHTS_NAME
    return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, n)) for n in (CONFIG_NAME, WEIGHTS_NAME))


def model_from_checkpoint(path: str, map_location="cpu") -> tuple:
    """(GigaGAN with G replaced by its EMA, checkpoint dict) from a checkpoint file, a run directory, or a
    pretrained folder written by `gigagan export` (its weights are the EMA already)."""
    if is_pretrained_folder(path):
        info_path = os.path.join(path, EXPORT_INFO_NAME)
        info = {}
        if os.path.isfile(info_path):
            with open(info_path) as f:
                info = json.load(f)
        model = GigaGAN.from_pretrained(path, map_location=map_location)
        state = {"step": info.get("step", "?"), "path": path,
                 "train_config": json.dumps({"model": info.get("model", "base")})}
        return model.eval(), state
    if os.path.isdir(path):
        state = load_latest_checkpoint(path)
        if state is None:
            raise CheckpointError(f"no loadable checkpoint in {path}")
    else:
        state = load_checkpoint(path)
    model = GigaGAN(GigaGANConfig.from_dict(json.loads(state["config"])), load_clip_weights=False)
    model.load_state_dict(state["model"])
    trained = json.loads(state.get("train_config", "{}")).get("model", "base")
    (model.upsampler if trained == "upsampler" else model.generator).load_state_dict(state["g_ema"])
    return model.to(map_location).eval(), state

