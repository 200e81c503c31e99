"""The scripts/ diagnostics."""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("open_clip", reason="the model needs open_clip_torch (requirements.txt)")

from gigagan.training import Trainer
from tests.helpers import ROOT, train_env, tiny_train_config as _cfg


def test_supervised_bound_script_trains_g_and_writes_a_loadable_checkpoint(tmp_path):
    """scripts/supervised_bound.py (the NOTES diagnostic): G moves toward the renders, its fast prefixes get
    the multiplied learning rate, and the checkpoint is the trainer's, so caption_score and sample read it."""
    from gigagan.training import model_from_checkpoint
    script = os.path.join(ROOT, "scripts", "supervised_bound.py")
    out = tmp_path / "bound"
    cmd = [sys.executable, script, "--images", "48", "--batch-size", "16", "--lr", "0.01", "--out", str(out),
           "--fast", "text_encoder,mapping", "--fast-multiplier", "3"]
    proc = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    losses = [float(line.split("loss ")[1]) for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert len(losses) == 1 and losses[0] > 0      # one report, at the last of the 3 steps
    model, state = model_from_checkpoint(str(out), map_location="cpu")
    assert state["step"] == 3
    init = Trainer(_cfg(tmp_path / "init", seed=0))    # the script's seed-0 starting point
    trained = dict(model.generator.named_parameters())
    moved = [n for n, p in init.G.named_parameters() if p.requires_grad and not torch.equal(p, trained[n])]
    assert any(n.startswith("text_encoder") for n in moved) and any(n.startswith("synthesis") for n in moved)
    lrs = sorted({g["lr"] for g in state["opt_g"]["param_groups"]})
    assert lrs == [0.01, 0.03]
    bad = subprocess.run(cmd[:-4] + ["--fast", "no_such_module"], cwd=ROOT, env=train_env(), capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "matches no parameter of G" in bad.stderr


def test_cuda_memcheck_script_needs_a_gpu():
    """scripts/cuda_memcheck.py (what the GPU check runs under compute-sanitizer) imports and says why it cannot run
    here, with its own exit code, instead of failing inside a kernel call."""
    proc = subprocess.run([sys.executable, "scripts/cuda_memcheck.py"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=train_env())
    assert proc.returncode == 2 and "needs a CUDA device" in proc.stderr, proc.stderr[-2000:]


def test_main_job_stops_with_one_line_when_training_fails(tmp_path):
    """scripts/main.sh under torchrun (2 CPU ranks) with an --out that cannot be created: the job stops with its
    own line after the ranks' one-line errors, not with torchrun's traceback, and samples nothing."""
    (tmp_path / "file").write_text("not a directory")
    env = dict(train_env(), GIGAGAN_SKIP_SETUP="1", GIGAGAN_VENV=os.path.dirname(os.path.dirname(sys.executable)),
               OUT=str(tmp_path / "file" / "run"), NPROC="2", MINUTES="0.1")
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "main.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("main job: training failed (exit codes rank 0: ")
    assert f"gigagan train: --out {tmp_path / 'file' / 'run'}: " in proc.stderr       # a rank's own line
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert "samples.png" not in proc.stdout


def test_main_job_stopped_by_a_signal_says_so_in_one_line(tmp_path):
    """A scheduler's SIGTERM to the main job's process group: the ranks save a checkpoint and name it, and the job
    ends with its own line, not torchrun's SignalException traceback."""
    import json
    import signal
    import time
    out = tmp_path / "run"
    env = dict(train_env(), GIGAGAN_SKIP_SETUP="1", GIGAGAN_VENV=os.path.dirname(os.path.dirname(sys.executable)),
               OUT=str(out), NPROC="2", MINUTES="5")
    proc = subprocess.Popen(["bash", os.path.join(ROOT, "scripts", "main.sh")], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not (out / "log.jsonl").exists():
            time.sleep(0.5)
        assert proc.poll() is None and (out / "log.jsonl").exists(), "training never logged a step"
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in err and "SignalException" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1] == "main job: stopped by SIGTERM; the lines above name the checkpoint. Nothing was sampled."
    assert any(line.startswith("gigagan train: preempted by SIGTERM at step ") for line in lines), err[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps and any(p.name.startswith("ckpt-") for p in out.iterdir())
