"""How the trainer uses its run directory (the directory itself is gigagan/rundir.py) on every rank: claiming
it for a run, set-up that rank 0 does and every rank waits on, and the checkpoint that a resume loads."""
from __future__ import annotations

import os

import torch.distributed as dist

from ..rundir import RunDirectory, RunDirError
from .checkpoint import load_checkpoint
from .distributed import agree
from .errors import CheckpointError, TrainingError


def claim_run_dir(run_dir: RunDirectory, resume: bool, overwrite: bool, log) -> None:
    """Lock the directory. Unless resuming, a directory that holds another run's checkpoints is refused, or
    with overwrite that run's files are moved aside. The lock is let go again when the claim fails."""
    run_dir.lock()
    try:
        if not resume and run_dir.holds_run():
            if not overwrite:
                newest = (run_dir.checkpoints(check_untracked=False) or ["a checkpoint"])[0]
                raise RunDirError(f"{run_dir.path} holds another run ({newest}): pass --resume to continue it, "
                                  "--overwrite to start a new run there (the old run's files move to "
                                  f"{os.path.join(run_dir.path, 'previous-runs')}), or choose another --out")
            log(f"overwrite: moved the previous run's files to {run_dir.archive_run()}")
    except BaseException:
        run_dir.release()
        raise


def set_up_on_rank0(set_up, is_main: bool, device, world: int, out: str) -> None:
    """Run rank 0's set-up of the run directory; every rank learns whether it failed, so none waits on a
    collective that rank 0 will never reach."""
    error = None
    if is_main:
        try:
            set_up()
        except (RunDirError, OSError) as e:
            error = e
    failed, = agree([error is not None], device, world)
    if failed and error is None:
        raise TrainingError(f"rank 0 could not set up {out}; its log says why")
    if error is not None:
        raise error


def checkpoint_to_resume(run_dir: RunDirectory, is_main: bool, world: int) -> tuple:
    """(path, state) of the newest whole checkpoint, or (None, None): rank 0 finds it (moving bad files aside)
    and tells the other ranks, which load the same file."""
    path, state = None, None
    if is_main:
        state = run_dir.load_latest(load_checkpoint, (CheckpointError,))
        path = state["path"] if state is not None else None
    if world > 1:
        box = [path]
        dist.broadcast_object_list(box, src=0)
        path = box[0]
        if not is_main and path is not None:
            state = load_checkpoint(path)
            state["path"] = path
    return path, state
