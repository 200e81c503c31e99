"""A resumed run is the run it continues. The checkpoint's train_config is compared with this run's, field by
field, by the RESUME table of config.py: a changed "state" field (what the saved state means) refuses the
resume with exit 2, naming each field old -> new, unless --allow-config-change; a changed "steer" field is
applied and logged. The number of ranks counts through the global batch (batch_size x ranks): a changed
global batch is a state change, the same global batch on another number of ranks a steer change, with the
data position kept in samples."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from .config import RESUME, TrainConfig, config_flag
from .errors import ConfigChangeError

PATH_FIELDS = ("data", "out", "perceptual_weights", "guidance_clip_pretrained", "text_encoder_pretrained", "fid_real",
               "inception_weights", "metrics_clip_weights")
FLAGS = {f.name: config_flag(f) for f in dataclasses.fields(TrainConfig)}


def resolved_precision(precision: str, device_type: Optional[str]) -> str:
    """The precision "auto" stands for on a device: bf16 on CUDA, fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if device_type == "cuda" else "fp32"


def recorded_config(cfg: TrainConfig, device_type: str, precision: str) -> dict:
    """The train_config a checkpoint records: the values that drove the run, with the device and the precision
    resolved ("auto" and None record what they stood for)."""
    values = dataclasses.asdict(cfg)
    values["device"], values["precision"] = device_type, precision
    for name in PATH_FIELDS:
        values[name] = _absolute(values[name], always=name in ("data", "out"))
    return values


def _absolute(value, always: bool):
    """A local path as an absolute one: a resume from another working directory compares the same folder, not
    the same spelling (`--data data` there may be another folder). URLs, pipes, "builtin" and, unless always,
    names that are no file (an open_clip tag) stay as given."""
    if not isinstance(value, str) or value == "builtin" or value.startswith(("builtin:", "pipe:")) or "://" in value:
        return value
    return os.path.abspath(value) if always or os.path.exists(value) else value


def saved_config(state: dict, device_type: str) -> dict:
    """The checkpoint's train_config, a field an older checkpoint lacks taking its default; a device it did not
    record counts as this run's."""
    values = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    values.update(json.loads(state.get("train_config") or "{}"))
    values["device"] = values.get("device") or device_type
    values["precision"] = resolved_precision(values.get("precision") or "auto", values["device"])
    return values


def _comparable(name: str, value):
    if isinstance(value, list):
        value = tuple(value)
    if name in PATH_FIELDS and isinstance(value, str) and value != "builtin" and not value.startswith("builtin:"):
        value = os.path.abspath(value) if "{" in value else os.path.realpath(value)   # the same file, any spelling
    return value


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return "none" if value is None else str(value) or "(none)"


def _ranks(n: int) -> str:
    return f"{n} rank{'s' if n != 1 else ''}"


def config_changes(saved: dict, current: dict, saved_world: Optional[int], world: int) -> tuple:
    """(state changes, steer changes), each a list of (field, text "flag old -> new")."""
    state, steer = [], []
    for name, tag in RESUME.items():
        if name == "batch_size":
            continue
        old, new = saved.get(name), current[name]
        if _comparable(name, old) != _comparable(name, new):
            (state if tag == "state" else steer).append((name, f"{FLAGS[name]} {_shown(old)} -> {_shown(new)}"))
    old_batch, new_batch = saved["batch_size"], current["batch_size"]
    old_world = world if saved_world is None else saved_world          # not recorded: taken as unchanged
    if old_batch * old_world != new_batch * world:
        state.append(("batch_size", f"--batch-size {old_batch} x {_ranks(old_world)} -> {new_batch} x "
                                    f"{_ranks(world)} (global batch {old_batch * old_world} -> {new_batch * world})"))
    elif old_world != world:
        steer.append(("batch_size", f"{_ranks(old_world)} -> {world} at the same global batch "
                                    f"{new_batch * world} (--batch-size {old_batch} -> {new_batch} per rank)"))
    return state, steer


def check_resume(state: dict, current: dict, world: int, device_type: str, allow: bool, path: str) -> list:
    """Refuse a resume from `state` that changes a "state" field (ConfigChangeError), unless allow; return the
    log lines that say what changed."""
    saved = saved_config(state, device_type)
    state_changes, steer_changes = config_changes(saved, current, state.get("world_size"), world)
    name = os.path.basename(path)
    if state_changes and not allow:
        raise ConfigChangeError(
            f"resume refused: {name} was trained with other settings that its saved state depends on: "
            + "; ".join(text for _, text in state_changes)
            + ". Resume with the run's own values (its train_config, which --config takes), or pass "
              "--allow-config-change to go on under the new ones", [field for field, _ in state_changes])
    lines = []
    if state_changes:
        lines.append(f"resume: --allow-config-change: from step {state['step']} on under "
                     + "; ".join(text for _, text in state_changes) + f" (the state in {name} was made under the "
                     "old values)")
    if steer_changes:
        lines.append(f"resume: from step {state['step']} on: " + "; ".join(text for _, text in steer_changes))
    return lines


def decisions_changed(saved: Optional[dict], now: dict) -> Optional[str]:
    """A log line naming the autotune decisions that differ from the checkpoint's (steer), or None."""
    if not saved:
        return None
    changed = sorted(k for k in saved.keys() & now.keys() if saved[k] != now[k])
    if not changed:
        return None
    shown = ", ".join(f"{k}: {saved[k]} -> {now[k]}" for k in changed[:4]) + (" ..." if len(changed) > 4 else "")
    return f"resume: {len(changed)} autotune decision(s) differ from the checkpoint's ({shown})"
