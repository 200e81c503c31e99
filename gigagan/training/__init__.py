"""Training GigaGAN, in parts that each do one thing:

- config.py: TrainConfig, every setting with its default, range and flag stated once;
- loss.py: the base model's and the upsampler's objectives, one accumulate_gradients(phase, batch) each;
- state.py: TrainState (networks, optimisers, EMA, precision, counters, the step through the phases);
- loop.py: the Trainer, a TrainState and the loop that feeds it (set-up, first step, steps, intervals, end);
- batches.py (this rank's batches), outputs.py (log, samples, progress bar, profiler), run_dir.py (claiming
  the run directory, resuming on every rank), signals.py (SIGTERM/SIGINT);
- resume.py (what a resume may change: the state/steer table's check), ema.py, optim.py, checkpoint.py
  (loading, resume state, export), distributed.py (torchrun), errors.py.

    gigagan train --preset tiny --steps 600 --out runs/tiny            # one process
    torchrun --nproc_per_node 8 -m gigagan train --preset small ...    # NCCL on GPUs, gloo on CPU

AdamW (lr 0.0025, betas (0, 0.99), weight decay 0.01 on attention weights only) steps G and D, and G's EMA
follows. A step whose loss or gradients are not finite is skipped on every rank, counted and logged; after
max_bad_steps in a row training stops with a clear message. Checkpoints are written atomically, hold
everything needed for an exact resume, and are also written when SIGTERM/SIGINT arrive.
"""
from .checkpoint import (EXPORT_INFO_NAME, export_pretrained, is_pretrained_folder, list_checkpoints,
                         load_checkpoint, load_latest_checkpoint, model_from_checkpoint)
from .config import MODELS, PRECISIONS, TrainConfig
from .errors import CheckpointError, ConfigChangeError, ConfigError, Preempted, TrainingError
from .loop import Trainer

__all__ = ["EXPORT_INFO_NAME", "MODELS", "PRECISIONS", "CheckpointError", "ConfigChangeError", "ConfigError",
           "Preempted", "TrainConfig", "Trainer", "TrainingError", "export_pretrained", "is_pretrained_folder",
           "list_checkpoints", "load_checkpoint", "load_latest_checkpoint", "model_from_checkpoint"]
