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
from ..hub import CONFIG_NAME, TRAINING_NAME, WEIGHTS_NAME, ModelFolderError, is_hub_id
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
EXPORT_INFO_NAME = TRAINING_NAME


def export_pretrained(path: str, directory: str) -> dict:
    """Write the EMA network a checkpoint file or run directory trained (G for a base run, the upsampler for an
    upsampler run, each with the CLIP tower) as a pretrained folder: GigaGAN.save_pretrained, whose
    training.json and model card carry the step, the run's settings and the metrics it logged. Creates the
    folder and its parents; returns what training.json says."""
    model, state = model_from_checkpoint(path)
    train_config = json.loads(state.get("train_config", "{}"))
    source = os.path.abspath(state.get("path", path))
    info = {"model": train_config.get("model", "base"), "step": state["step"], "source": source,
            "train_config": train_config,
            "metrics": logged_metrics(os.path.join(os.path.dirname(source), "log.jsonl"), state["step"])}
    model.training_info = info
    model.save_pretrained(directory)
    return info


def logged_metrics(log_path: str, step: int) -> dict:
    """{metric: {value, step, ...}}: the newest of each metric (fid, clip_score) that a run's log.jsonl records
    at or before `step`; {} without a log."""
    found = {}
    try:
        with open(log_path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue                       # a torn last line after a crash
                if not isinstance(record, dict) or not isinstance(record.get("step"), int) or record["step"] > step:
                    continue
                for name in ("fid", "clip_score"):
                    if isinstance(record.get(name), (int, float)):
                        found[name] = {"value": record[name], "step": record["step"],
                                       **{k: record[k] for k in ("num_fake", "num_real") if k in record}}
    except OSError:
        return {}
    return found


def is_pretrained_folder(path: str) -> bool:
    """A folder holding config.json or model.safetensors (a run directory holds neither): loading it names
    whichever is missing or bad."""
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, n)) for n in (CONFIG_NAME, WEIGHTS_NAME))


def model_from_checkpoint(path: str, map_location="cpu", discriminator: bool = False) -> tuple:
    """(GigaGAN holding the trained network's EMA and the CLIP tower, checkpoint dict) from a checkpoint file, a
    run directory, a pretrained folder written by `gigagan export` (its weights are the EMA already) or a hub id
    of one. Only the network the run trained is built: G for a base run, the upsampler for an upsampler run;
    discriminator=True adds D with its trained weights (a checkpoint has them, an exported folder does not)."""
    if is_pretrained_folder(path) or (not os.path.exists(path) and is_hub_id(path)):
        try:
            model = GigaGAN.from_pretrained(path, map_location=map_location)
        except ModelFolderError as e:
            raise CheckpointError(str(e)) from None
        if discriminator and model.discriminator is None:
            raise CheckpointError(f"{path}: an exported model folder holds no discriminator; give the run's "
                                  "checkpoint or run directory")
        info = model.training_info
        trained = info.get("model", "base" if model.generator is not None else "upsampler")
        state = {"step": info.get("step", "?"), "path": path, "train_config": json.dumps({"model": trained})}
        return model.eval(), state
    if os.path.isdir(path):
        state = load_latest_checkpoint(path)
        if state is None:
            raise CheckpointError(f"no loadable checkpoint in {path}")
    else:
        state = load_checkpoint(path)
    try:
        config = GigaGANConfig.from_dict(json.loads(state["config"]))
    except ValueError as e:
        raise CheckpointError(f"checkpoint {state.get('path', path)}: its model config is unusable ({e})") from None
    trained = json.loads(state.get("train_config", "{}")).get("model", "base")
    part = "upsampler" if trained == "upsampler" else "generator"
    parts = (part, "discriminator") if discriminator else (part,)
    model = GigaGAN(config, load_clip_weights=False, parts=parts)
    keep = ("clip.",) + tuple(p + "." for p in parts)
    model.load_state_dict({k: v for k, v in state["model"].items() if k.startswith(keep)})
    getattr(model, part).load_state_dict(state["g_ema"])
    return model.to(map_location).eval(), state
