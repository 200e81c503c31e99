"""torchrun set-up and the few collectives the trainer needs: every rank takes the same branch at the same step."""
from __future__ import annotations

import collections
import contextlib
import inspect
import os
import re
from typing import Optional

import torch
import torch.distributed as dist

from .errors import TrainingError


def init_distributed(device_type: Optional[str] = None):
    """(rank, world_size, device) from torchrun's environment; a plain process is rank 0 of 1.
    device_type: "cuda", "cpu", or None for CUDA when available. CPU ranks use gloo, CUDA ranks NCCL."""
    if device_type not in (None, "cuda", "cpu"):
        raise ValueError(f"TrainConfig.device must be 'cuda', 'cpu' or None, got {device_type!r}")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("TrainConfig.device='cuda' but torch sees no CUDA device")
    use_cuda = torch.cuda.is_available() if device_type is None else device_type == "cuda"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, torch.device("cuda" if use_cuda else "cpu")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return rank, world, device


def agree(flags, device, world: int, op=dist.ReduceOp.MAX) -> list:
    """Flags (bools or 0-d tensors) reduced over every rank (MAX: any rank's; MIN: all ranks'), read back in
    one host sync."""
    # Host values travel in one copy; device values are gathered on the device.
    t = torch.tensor([0.0 if torch.is_tensor(f) else float(f) for f in flags], device=device)
    on_device = [i for i, f in enumerate(flags) if torch.is_tensor(f)]
    if on_device:
        t[on_device] = torch.stack([flags[i].to(device=device, dtype=torch.float32).reshape(()) for i in on_device])
    if world > 1:
        dist.all_reduce(t, op=op)
    return [v > 0 for v in t.tolist()]


def gather_counts(counts: dict, world: int) -> collections.Counter:
    """Counts (e.g. dropped samples by reason) summed over every rank; every rank calls it at the same step."""
    if world == 1:
        return collections.Counter(counts)
    everyone = [None] * world
    dist.all_gather_object(everyone, dict(counts))
    total = collections.Counter()
    for c in everyone:
        total.update(c)
    return total


def end_together(world: int) -> None:
    """Every rank waits here for the others (rank 0 writes the final outputs meanwhile), so none exits while
    another still works: see shutdown()."""
    if world > 1 and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Destroy the process group (torchrun): call it in a `finally`, after end_together on the ranks that
    finished. Its gloo worker threads may outlive it (DDP keeps the group referenced); `python -m gigagan`
    then ends the process without the interpreter's finalisation (__main__._exit_without_finalizing)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def peer_failure(e: BaseException) -> Optional[str]:
    """Under torchrun, the cause in words when `e` is a collective failing because another rank stopped (gloo's
    "Connection closed by peer", NCCL's DistBackendError): that rank's own line says why, so this one needs no
    traceback. None for anything else."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not (isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and "gloo" in str(e))):
        return None
    lines = str(e).strip().splitlines() or [type(e).__name__]
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0])             # gloo's "[.../pair.cc:561] "
    return text.split(". ")[0]


def wrap(module: Optional[torch.nn.Module], device, world: int):
    """The module under DistributedDataParallel when world > 1 (else itself), without buffer sync in forward:
    G's w_avg is each rank's own running mean."""
    if module is None or world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.14 renames broadcast_buffers to forward_sync_buffers (which also syncs once at init: the same
    # here, as every rank starts from the same seed); older torch, as on the GPU machine, lacks it.
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})
    return DDP(module, device_ids=ids, **no_sync)


def maybe_no_sync(module, skip: bool):
    """DDP's no_sync for all but the last micro-batch of a step; a plain module has nothing to skip."""
    return module.no_sync() if skip and hasattr(module, "no_sync") else contextlib.nullcontext()
