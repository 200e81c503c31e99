"""The training loop: the Trainer feeds a TrainState (state.py: the networks, optimisers and one step) batches
until cfg.steps or cfg.max_minutes, on one process or under torchrun, and around that claims the run
directory, resumes, saves checkpoints, logs and stops cleanly on a signal. Its phases, in order:

  set-up       claim the run directory and resume (fit), then the data and the side outputs (outputs.py)
  first step   always taken, under gigagan_kernels.tune (auto times its candidates there, and the ranks agree
               on the decisions), and not profiled, for its one-time costs; the time budget starts after it
  step loop    every rank agrees on the step's branch (a stop signal, no data, out of time, a batch to
               skip), then trains on the batch
  intervals    the log record, sample grids, metrics (metrics.py) and checkpoints every log_every,
               sample_every, fid_every and ckpt_every steps
  the end      the metrics of the last step, a last checkpoint, then the final samples and the loss plot (a
               signal now stops at once: the checkpoint is whole), then every rank waits for the others

The run directory (run_dir.py), the batches (batches.py) and the stop signals (signals.py) have modules of
their own.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional

from gigagan_kernels import tune, use_impl

from ..config import GigaGANConfig
from ..data import make_dataset
from ..rundir import RunDirectory, RunDirError
from .batches import UnusableBatches, rank_batches
from .config import TrainConfig
from .distributed import agree, end_together, gather_counts
from .errors import CheckpointError, Preempted, TrainingError, signal_name
from .metrics import TrainingMetrics
from .outputs import IntervalMeans, ProgressBar, SampleGrids, ScalarLog, StepProfiler, cut_log, plot_loss
from .resume import check_resume, decisions_changed, recorded_config
from .run_dir import checkpoint_to_resume, claim_run_dir, set_up_on_rank0
from .signals import StopSignals
from .state import TrainState, autotune_decisions


class Trainer(TrainState):
    """A TrainState and the loop that trains it (fit), with its checkpoints and samples in cfg.out."""

    def __init__(self, cfg: TrainConfig, model_config: Optional[GigaGANConfig] = None, log=None):
        super().__init__(cfg, model_config, log)
        self.signals = StopSignals()
        self._run_dir = None
        self.samples = SampleGrids(cfg, self.G.z_dim)
        self.metrics = TrainingMetrics(cfg, self.rank, self.world, self.device, self.log, self.G.z_dim)
        self.last_checkpoint = None         # rank 0: the newest whole checkpoint this fit wrote or resumed from
        self.outputs_left = None            # the final outputs not yet written, once the final checkpoint is
        self.log_note = {}                  # what the next log record also carries (a resume, tuning time)

    # -- checkpoints and samples -------------------------------------------------------------------
    @property
    def run_dir(self) -> RunDirectory:
        if self._run_dir is None or self._run_dir.path != self.cfg.out:
            self._run_dir = RunDirectory(self.cfg.out, log=self.log)
        return self._run_dir

    def save_checkpoint(self) -> Optional[str]:
        """Rank 0 writes ckpt-<step>.pt (atomic, checked whole, retention over whole checkpoints only)."""
        if not self.is_main:
            return None
        os.makedirs(self.cfg.out, exist_ok=True)          # a TrainState saved outside fit (scripts/)
        with self.signals.deferred():
            self.last_checkpoint = self.run_dir.save(self.state_dict(), self.step, self.cfg.keep_checkpoints)
        return self.last_checkpoint

    def resume(self, fresh_if_none: bool = False, allow_config_change: bool = False) -> bool:
        """Load the newest whole checkpoint this run wrote in cfg.out: rank 0 finds it (moving bad files and other
        runs' aside), every rank loads that file. None there is an error unless fresh_if_none. A changed setting
        that the saved state depends on refuses the resume unless allow_config_change (resume.py)."""
        path, state = checkpoint_to_resume(self.run_dir, self.is_main, self.world)
        if path is None:
            if not fresh_if_none:
                raise CheckpointError(f"resume: no loadable checkpoint in {self.cfg.out} (bad ones are moved to "
                                      f"{os.path.join(self.cfg.out, 'corrupt')}); resume-or-start "
                                      "(--resume-or-start) starts from step 0 when there is none")
            self.log(f"resume: no checkpoint in {self.cfg.out}; starting from step 0")
            return False
        changes = check_resume(state, recorded_config(self.cfg, self.device.type, self.precision), self.world,
                               self.device.type, allow_config_change, path)
        self.load_state_dict(state)
        self.last_checkpoint = path
        for line in changes:
            self.log(line)
        self.log(f"resumed from {path} at step {self.step}")
        self.log_note = {"resumed_from": os.path.basename(path), **({"config_changes": changes} if changes else {})}
        return True

    def write_samples(self, path: str) -> None:
        """A PNG grid of G_ema's images for the fixed latents and prompts."""
        self.samples.write(path, self.G_ema, self.loss, self.device)

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, resume: bool = False, overwrite: bool = False, fresh_if_none: bool = False,
            allow_config_change: bool = False) -> dict:
        """Train until cfg.steps or cfg.max_minutes. resume: continue from the newest whole checkpoint in cfg.out
        (an error when there is none, unless fresh_if_none). Without resume, a directory that holds another
        run's checkpoints is refused unless overwrite, which moves that run's files aside."""
        set_up_on_rank0(lambda: claim_run_dir(self.run_dir, resume, overwrite, self.log), self.is_main,
                        self.device, self.world, self.cfg.out)
        self.outputs_left, self.log_note = None, {}
        try:
            with self.signals.caught():
                if resume:
                    self.resume(fresh_if_none, allow_config_change)
                if self.is_main and (moved := cut_log(self.cfg.out, self.step)):
                    self.log(f"log.jsonl: moved {moved} records of steps after {self.step} (an abandoned attempt's) "
                             "to log-abandoned.jsonl")
                return self._train_loop()
        except Preempted as e:
            stopped = {"step": self.step, "stopped_by_signal": True, "signal": e.signum}
            if self.outputs_left is not None:         # the final checkpoint is whole; outputs were left
                return {**stopped, "checkpoint": self.last_checkpoint, "skipped_outputs": list(self.outputs_left)}
            self.log(f"{signal_name(e.signum)} again: stopped at step {self.step}")
            return {**stopped, "forced": True, "newest": self.run_dir.newest() if self.is_main else None}
        except RunDirError as e:
            if e.exit_code == 1 and self.is_main and not getattr(e, "noted", False):
                e.args, e.noted = (f"{e}; {self.run_dir.newest()}",), True
            raise
        finally:
            if self.is_main:
                self.run_dir.release()

    def _train_loop(self) -> dict:
        cfg = self.cfg
        # -- set-up: the data and the side outputs
        dataset = make_dataset(cfg.data, self.resolution, seed=cfg.seed, captions=not cfg.unconditional)
        scalars = ScalarLog(cfg.out, tensorboard=cfg.tensorboard and self.is_main, purge_step=self.step + 1)
        if cfg.model == "upsampler":
            self.samples.take_real_images(dataset, self.resolution)
        n_params = sum(p.numel() for m in (self.G, self.D) for p in m.parameters() if p.requires_grad) / 1e6
        self.log(f"training {self.model_config.name} {cfg.model} ({n_params:.2f}M trainable G+D parameters) "
                 f"on {self.device} x{self.world}, impl {cfg.impl}, data {cfg.data}, "
                 f"steps {self.step}->{cfg.steps}"
                 + (f" or {cfg.max_minutes:g} minutes" if cfg.max_minutes is not None else "")
                 + f", batch {cfg.batch_size}/rank, precision {self.precision}")
        bar = ProgressBar(self.is_main and cfg.progress, cfg.steps, self.step)
        profiler = StepProfiler(cfg.profile_steps if self.is_main else 0, cfg.out, self.device, cfg.impl, self.log)
        interval, unusable = IntervalMeans(self.device), UnusableBatches(cfg, self.rank)
        # The first step is always taken, tuned and not profiled: it carries the one-time costs (timing the ops'
        # candidates, kernel compilation and the like). The time budget starts after it.
        t_last, images_since = time.perf_counter(), 0
        deadline, tune_seconds = None, None
        first_step, out_of_time = self.step, False
        batches = rank_batches(dataset, cfg, self.rank, self.world, self.device, lambda: self.batches_seen)
        try:
            with use_impl(cfg.impl):
                while self.step < cfg.steps:
                    # -- agree: every rank takes the same branch; all skip a batch that one rank lacks, and
                    # all stop together. The budget is checked only once this fit() has made a step.
                    batch = next(batches)
                    usable = batch is not None and batch[0].shape[0] > 0
                    dropped = batch[2] if batch is not None else {}
                    missing, no_data, signalled, out_of_time, any_dropped = self._agree(
                        not usable, batch is None, deadline, bool(dropped))
                    if signalled:
                        path = self.save_checkpoint()
                        self.log(f"signal {signal_name(self.signals.received)}: saved {path} at step "
                                 f"{self.step}; exiting")
                        end_together(self.world)
                        return {"step": self.step, "stopped_by_signal": True, "signal": self.signals.received,
                                "checkpoint": path}
                    if no_data:
                        raise TrainingError(f"a rank received no data at all from --data {cfg.data} (rank "
                                            f"{self.rank}: {'none' if batch is None else 'some'}); a shard pattern "
                                            f"needs at least one shard per rank ({self.world} ranks)")
                    if out_of_time:
                        self.log(f"max_minutes={cfg.max_minutes:g} reached at step {self.step}; stopping")
                        break
                    # The batch is used (trained on or skipped) only now: a stop above leaves it to a resume. Every
                    # rank counts every rank's dropped samples, by reason, for the log and the checkpoint.
                    self.batches_seen += 1
                    if any_dropped:
                        everyone = gather_counts(dropped, self.world)
                        self.skipped_samples += sum(everyone.values())
                        self.skipped_by_reason.update(everyone)
                    if not unusable.usable(dropped, missing):
                        continue
                    images, captions, _ = batch

                    # -- the step (the first under tune, the profiler from the second)
                    if self.step == first_step + 1:
                        profiler.start()
                    if tune_seconds is None:
                        t0 = time.perf_counter()
                        stats = tune(self.train_step, images, captions)
                        tune_seconds = time.perf_counter() - t0
                        self.log(f"first step, with auto's tuning: {tune_seconds:.1f} s")
                        self.log_note["tune_seconds"] = tune_seconds
                        if changed := decisions_changed(self.saved_decisions, autotune_decisions()):
                            self.log(changed)
                        if cfg.max_minutes is not None:
                            deadline = time.perf_counter() + 60.0 * cfg.max_minutes
                            bar.budget(deadline)
                    else:
                        stats = self.train_step(images, captions)
                    profiler.step_done(self.step)
                    images_since += images.shape[0] * self.world
                    interval.add(stats)
                    bar.update()

                    # -- at intervals: the log record (the interval's one read of the statistics), samples,
                    # metrics, a checkpoint
                    if self.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                        now = time.perf_counter()
                        record = {"step": self.step, **interval.read(),
                                  "images_per_s": images_since / max(now - t_last, 1e-9),
                                  "bad_steps": self.bad_steps_total, "skipped_samples": self.skipped_samples,
                                  "skipped_by_reason": dict(self.skipped_by_reason), "time": time.time(),
                                  **self.log_note}
                        t_last, images_since, self.log_note = now, 0, {}
                        self.skipped_by_reason.clear()
                        scalars.write(record)
                        bar.show(record)
                    if self.is_main and cfg.sample_every and self.step % cfg.sample_every == 0:
                        self.write_samples(os.path.join(cfg.out, f"samples-{self.step:08d}.png"))
                    if self.metrics.due(self.step):
                        self._measure(scalars)
                    if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                        self.save_checkpoint()
                if self.metrics.enabled and self.step > first_step and self.step % cfg.fid_every:
                    self._measure(scalars)                          # the last step's, unless just measured
        finally:
            # The data loader's workers are joined here; the profiler writes what it traced if training ended
            # first. A failure while closing never hides the error that ended training.
            failing = sys.exc_info()[0] is not None
            for close in (batches.close, bar.close, scalars.close, lambda: profiler.finish(self.step)):
                try:
                    close()
                except Exception as e:
                    if not failing:
                        raise
                    self.log(f"warning: while stopping: {e}")
        self._finish()
        return {"step": self.step, "bad_steps": self.bad_steps_total, "skipped_samples": self.skipped_samples,
                "out_of_time": out_of_time, "checkpoint": self.last_checkpoint}

    def _measure(self, scalars: ScalarLog) -> None:
        """The metrics of G_ema now (every rank computes its share), into log.jsonl and TensorBoard."""
        record = self.metrics.measure(self.G_ema, self.step)
        if self.is_main:
            scalars.write(record)

    def _finish(self) -> None:
        """The end: a checkpoint of the last step (unless one was just written), then rank 0's final samples and
        loss plot. From then on a signal stops the outputs at once (fit names the whole checkpoint and what was
        skipped). Every rank then waits for the others, so none exits while another still works."""
        cfg = self.cfg
        if self.step % max(cfg.ckpt_every, 1) != 0 or not cfg.ckpt_every:
            self.save_checkpoint()
        self.outputs_left = ["samples-final.png", "loss.png"] if self.is_main else []
        try:
            with self.signals.finishing():
                if self.is_main:
                    self.write_samples(os.path.join(cfg.out, "samples-final.png"))
                    self.outputs_left.pop(0)
                    plot_loss(cfg.out, self.log)
                    self.outputs_left.pop(0)
        finally:
            failing = sys.exc_info()[0] is not None
            try:
                end_together(self.world)
            except Exception:
                if not failing:                           # never hides the error (or signal) on its way out
                    raise

    def _agree(self, missing: bool, no_data: bool, deadline: Optional[float] = None, dropped: bool = False) -> tuple:
        """(a rank lacks a usable batch, a rank has no data at all, a stop signal arrived, the time budget is
        spent, a rank dropped samples), agreed by every rank, so that all take the same branch at the same step."""
        flags = agree([missing, no_data, self.signals.received is not None,
                       deadline is not None and time.perf_counter() >= deadline, dropped], self.device, self.world)
        if flags[2] and self.signals.received is None:
            self.signals.received = "peer"
        return tuple(flags)
