"""This rank's batches: a DataLoader placed at the run's data position, pass after pass, and the count of
batches in a row that some rank could not use."""
from __future__ import annotations

import collections
from typing import Callable

import torch

from ..data import StepSampler, TarShards, collate_pairs
from .errors import TrainingError


def rank_batches(dataset, cfg, rank: int, world: int, device, data_position: Callable[[], int]):
    """This rank's batches, pass after pass (a finite stream starts over); None forever when a fresh pass
    yields nothing at all (e.g. more ranks than shards). Each pass starts at data_position(), the batches the
    run has used by then (a resume continues from there too)."""
    while True:
        empty_pass = True
        for batch in _loader(dataset, cfg, rank, world, device, data_position()):
            empty_pass = False
            yield batch
        if empty_pass:
            while True:
                yield None


def _loader(dataset, cfg, rank: int, world: int, device, batches_seen: int):
    # Its own generator: creating a loader must not draw from the global RNG, or a resumed run's
    # z and noise would drift from an uninterrupted run's.
    common = dict(batch_size=cfg.batch_size, collate_fn=collate_pairs, num_workers=cfg.num_workers,
                  drop_last=True, pin_memory=device.type == "cuda",
                  generator=torch.Generator().manual_seed(cfg.seed + rank))
    if isinstance(dataset, TarShards):
        # Endless and placed after the batches already trained on: a resume continues the same stream.
        common["num_workers"] = dataset.position(rank, world, cfg.batch_size, batches_seen, cfg.num_workers)
        return torch.utils.data.DataLoader(dataset, **common)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return torch.utils.data.DataLoader(dataset, **common)
    sampler = StepSampler(len(dataset), cfg.batch_size, rank, world, cfg.seed, batches_seen)
    return torch.utils.data.DataLoader(dataset, sampler=sampler, **common)


class UnusableBatches:
    """Batches in a row that some rank had no usable sample in (every rank skips them), with how many samples
    this rank tried meanwhile and why it dropped them; max_bad_batches in a row stop training."""

    def __init__(self, cfg, rank: int):
        self.cfg, self.rank = cfg, rank
        self.in_row, self.tried, self.why = 0, 0, collections.Counter()

    def usable(self, dropped: dict, missing: bool) -> bool:
        """Count one batch (`dropped`: this rank's dropped samples by reason); False when every rank skips it."""
        self.tried += self.cfg.batch_size
        self.why.update(dropped)
        if missing:
            self.in_row += 1
            if self.in_row >= self.cfg.max_bad_batches:
                reasons = ", ".join(f"{n} {r}" for r, n in self.why.most_common()) or "none counted here"
                raise TrainingError(
                    f"no usable sample in {self.in_row} batches in a row from --data {self.cfg.data} "
                    f"({self.tried} samples tried on rank {self.rank}; dropped: {reasons}). Check the data; "
                    f"max_bad_batches (--max-bad-batches) sets the limit")
            return False
        self.in_row, self.tried = 0, 0
        self.why.clear()
        return True
