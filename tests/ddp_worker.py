"""Launched by test_train.py under torchrun (2 CPU processes, gloo): trains 3 steps, then checks that
every parameter is bit-identical across ranks. Then it trains on with a time budget that only rank 1
spends (max_minutes tiny there, an hour on rank 0; the budget starts after the first step): every rank must
stop at the same step. Rank 0 writes the result as JSON."""
import dataclasses
import json
import sys

import torch
import torch.distributed as dist

from gigagan.training import TrainConfig, Trainer


def main(out_dir: str, result_path: str) -> None:
    cfg = TrainConfig(preset="tiny", steps=3, batch_size=2, out=out_dir, impl="ref", log_every=1, sample_every=0,
                      ckpt_every=2, progress=False, r1_interval=2)
    trainer = Trainer(cfg)
    initial = torch.cat([p.detach().flatten().clone() for p in trainer.g_params + trainer.d_params])
    trainer.fit()
    flat = torch.cat([p.detach().flatten() for p in trainer.g_params + trainer.d_params])
    gathered = [torch.empty_like(flat) for _ in range(trainer.world)]
    dist.all_gather(gathered, flat)
    diff = max((g - gathered[0]).abs().max().item() for g in gathered)
    step = trainer.step

    trainer.cfg = dataclasses.replace(cfg, steps=1000, out=out_dir + "-timed",
                                      max_minutes=1e-9 if trainer.rank == 1 else 60.0)
    timed = trainer.fit()
    steps = [torch.zeros(1) for _ in range(trainer.world)]
    dist.all_gather(steps, torch.tensor([float(trainer.step)]))
    if trainer.rank == 0:
        with open(result_path, "w") as f:
            json.dump({"world_size": trainer.world, "step": step, "max_param_diff_across_ranks": diff,
                       "params_changed": bool((flat != initial).any()), "timed_out": timed["out_of_time"],
                       "timed_steps": [int(t.item()) for t in steps]}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
