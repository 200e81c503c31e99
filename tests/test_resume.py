"""A resumed run is the same run (issue 30, items 4 and 5): a resume that changes what the saved state means is
refused, one that steers the run is applied for real and logged, the number of ranks counts through the global
batch, and the log holds each step once. CPU, tiny preset, reference ops."""
import dataclasses
import json
import os
import shutil
import sys
import types

import pytest
import torch

pytest.importorskip("open_clip", reason="the model needs open_clip_torch (requirements.txt)")

from gigagan.__main__ import main
from gigagan.training import ConfigChangeError, TrainConfig, Trainer, list_checkpoints, load_checkpoint
from gigagan.training.config import RESUME
from gigagan.training.resume import config_changes, decisions_changed
from tests.helpers import tiny_train_config, train_cmd


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished 4-step run of train_cmd's settings (batch 2, checkpoints at steps 2 and 4)."""
    out = tmp_path_factory.mktemp("resume") / "run"
    assert main(train_cmd(out, 4)[3:]) == 0
    return out


def _copy(run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def _records(out, name="log.jsonl"):
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def _train_config(path):
    return json.loads(load_checkpoint(str(path))["train_config"])


def test_every_train_config_field_is_tagged_state_or_steer():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields == set(RESUME), f"untagged: {sorted(fields - set(RESUME))}, stale: {sorted(set(RESUME) - fields)}"
    assert set(RESUME.values()) == {"state", "steer"}


def test_a_resume_that_changes_the_saved_states_meaning_is_refused(base_run, tmp_path, capsys):
    """--batch-size 4 on a run trained at 2, --data OTHER, another --seed: each used to be accepted silently
    (the data position then replayed in batches of 4). Now exit 2, naming each field old -> new, and nothing in
    the run directory changes."""
    out = _copy(base_run, tmp_path)
    before = sorted(os.listdir(out)), (out / "log.jsonl").read_text()
    other = tmp_path / "other"
    other.mkdir()
    assert main(train_cmd(out, 6, "--resume", "--batch-size", "4", "--data", str(other), "--seed", "7",
                          "--r1-gamma", "1")[3:]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"gigagan train: --out {out}: resume refused: "
                                                         "ckpt-00000004.pt was trained with other settings")
    for change in ("--batch-size 2 x 1 rank -> 4 x 1 rank (global batch 2 -> 4)", f"--data builtin -> {other}",
                   "--seed 0 -> 7", "--r1-gamma 0.2048 -> 1.0", "--allow-config-change"):
        assert change in err, change
    assert (sorted(os.listdir(out)), (out / "log.jsonl").read_text()) == before


def test_allow_config_change_goes_on_and_the_log_records_it(base_run, tmp_path, capsys):
    out = _copy(base_run, tmp_path)
    assert main(train_cmd(out, 5, "--resume", "--batch-size", "4", "--allow-config-change")[3:]) == 0
    assert "resume: --allow-config-change: from step 4 on under --batch-size 2 x 1 rank -> 4" in capsys.readouterr().out
    record = _records(out)[-1]
    assert record["step"] == 5 and record["resumed_from"] == "ckpt-00000004.pt"
    assert record["config_changes"][0].startswith("resume: --allow-config-change")
    state = load_checkpoint(str(out / "ckpt-00000005.pt"))
    assert json.loads(state["train_config"])["batch_size"] == 4          # what drove step 5
    assert state["counters"]["samples_seen"] == 8 + 4                     # the data position, in samples


def test_lr_and_betas_reach_the_restored_optimisers(base_run, tmp_path, capsys):
    """--lr 0.01 used to be recorded in the checkpoint while the restored optimiser ran on at 0.0025."""
    out = _copy(base_run, tmp_path)
    trainer = Trainer(tiny_train_config(tmp_path, steps=5, seed=0, r1_interval=16, lr=0.01, betas=(0.5, 0.9)))
    trainer.fit(resume=True)
    for opt in (trainer.opt_g, trainer.opt_d):
        assert {g["lr"] for g in opt.param_groups} == {0.01}
        assert {tuple(g["betas"]) for g in opt.param_groups} == {(0.5, 0.9)}
        assert opt.state_dict()["state"], "the moments are the checkpoint's, not fresh ones"
    state = load_checkpoint(str(out / "ckpt-00000005.pt"))
    recorded = json.loads(state["train_config"])
    assert recorded["lr"] == 0.01 and recorded["betas"] == [0.5, 0.9]
    assert {g["lr"] for g in state["opt_g"]["param_groups"]} == {0.01}   # the value that drove the step


def test_steering_changes_are_applied_and_logged(base_run, tmp_path, capsys):
    out = _copy(base_run, tmp_path)
    assert main(train_cmd(out, 5, "--resume", "--impl", "torch", "--log-every", "5", "--lr", "0.001")[3:]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("resume: from step 4 on:"))
    for change in ("--steps 4 -> 5", "--lr 0.0025 -> 0.001", "--impl ref -> torch", "--log-every 1 -> 5",
                   f"--out {base_run} -> {out}"):                  # the directory was copied: logged, not refused
        assert change in line, change
    recorded = _train_config(out / "ckpt-00000005.pt")
    assert (recorded["impl"], recorded["log_every"], recorded["lr"]) == ("torch", 5, 0.001)
    assert decisions_changed({"op k": "triton"}, {"op k": "torch", "op j": "x"}) == \
        "resume: 1 autotune decision(s) differ from the checkpoint's (op k: triton -> torch)"
    assert decisions_changed({"op k": "torch"}, {"op k": "torch"}) is None


def test_a_field_an_older_checkpoint_lacks_takes_its_default(base_run, tmp_path, capsys):
    """A checkpoint from before a field existed: the field counts as its default, so the default resumes and
    another value is a change like any other."""
    out = _copy(base_run, tmp_path)
    path = out / "ckpt-00000004.pt"
    state = load_checkpoint(str(path))
    saved = json.loads(state["train_config"])
    for name in ("augment", "precision", "device"):
        del saved[name]
    state["train_config"] = json.dumps(saved)
    for name in ("world_size", "run_id", "autotune"):
        del state[name]
    torch.save(state, path)                                   # untracked now: checked whole, adopted (no run id)
    (out / "checkpoints.json").unlink()
    assert main(train_cmd(out, 5, "--resume", "--augment", "flip")[3:]) == 2
    assert "--augment (none) -> flip" in capsys.readouterr().err
    assert main(train_cmd(out, 5, "--resume")[3:]) == 0


def test_the_number_of_ranks_counts_through_the_global_batch(base_run, tmp_path, capsys):
    """A run of 2 ranks at batch 1 each (global batch 2) resumes on 1 rank at batch 2, with the data position
    kept in samples; at batch 1 on 1 rank (global batch 1) it is refused. Today's checkpoint is edited to say it
    was trained on 2 ranks (a 2-rank resume would take a minute of torchrun)."""
    out = _copy(base_run, tmp_path)
    path = out / "ckpt-00000004.pt"
    state = load_checkpoint(str(path))
    saved = json.loads(state["train_config"])
    saved["batch_size"] = 1
    state["train_config"], state["world_size"] = json.dumps(saved), 2
    state["counters"]["batches_seen"] = 4                    # per rank; 8 samples in all
    torch.save(state, path)
    (out / "checkpoints.json").unlink()
    assert main(train_cmd(out, 5, "--resume", "--batch-size", "1")[3:]) == 2
    assert "--batch-size 1 x 2 ranks -> 1 x 1 rank (global batch 2 -> 1)" in capsys.readouterr().err
    trainer = Trainer(tiny_train_config(tmp_path, steps=5, seed=0, r1_interval=16), log=print)
    trainer.resume()
    assert "2 ranks -> 1 at the same global batch 2 (--batch-size 1 -> 2 per rank)" in capsys.readouterr().out
    assert trainer.batches_seen == 4                         # 8 samples, global batch 2
    state_changes, steer_changes = config_changes({**saved, "batch_size": 4}, {**saved, "batch_size": 4}, 2, 1)
    assert [field for field, _ in state_changes] == ["batch_size"] and not steer_changes
    assert config_changes(saved, saved, None, 1) == ([], [])    # an old checkpoint: the ranks are not known


def test_a_resume_moves_the_abandoned_attempts_log_records_aside(base_run, tmp_path):
    """A crash after steps 5 and 6 were logged but before their checkpoint: the resumed run logged those steps
    again (88 records for 80 steps). Now log.jsonl holds each step once; the abandoned records are kept aside."""
    out = _copy(base_run, tmp_path)
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss_d": 1.0}) + "\n" + json.dumps({"step": 6, "loss_d": 2.0}) + "\n")
        f.write('{"step": 7, "loss_d": 3.')                  # torn by the kill
    Trainer(tiny_train_config(tmp_path, steps=7, seed=0, r1_interval=16)).fit(resume=True)
    assert [r["step"] for r in _records(out)] == list(range(1, 8))
    abandoned = (out / "log-abandoned.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in abandoned[:2]] == [5, 6] and abandoned[2].startswith('{"step": 7')


def test_tensorboard_purges_the_abandoned_steps(base_run, tmp_path, monkeypatch):
    calls = []

    class SummaryWriter:
        def __init__(self, log_dir, purge_step=None):
            calls.append(purge_step)

        def add_scalar(self, *args):
            pass

        def close(self):
            pass
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    _copy(base_run, tmp_path)
    Trainer(tiny_train_config(tmp_path, steps=5, seed=0, r1_interval=16, tensorboard=True)).fit(resume=True)
    assert calls == [5]                                       # the first step the resumed run trains


def test_each_log_record_carries_the_samples_skipped_since_the_last_by_reason(tmp_path):
    """The README said skipped samples are counted by reason in the log; log.jsonl held only the total."""
    from PIL import Image
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        if i in (1, 4):
            (data / f"{i}.png").write_bytes(b"\x89PNG not really")
        else:
            Image.new("RGB", (16, 16), (40 * i, 90, 20)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text("" if i == 2 else f"caption {i}")
    Trainer(tiny_train_config(tmp_path, data=str(data), steps=4)).fit()
    records = _records(tmp_path / "run")
    reasons = {}
    for r in records:
        for reason, n in r["skipped_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    assert sum(reasons.values()) == records[-1]["skipped_samples"] > 0
    assert set(reasons) == {"unreadable image (UnidentifiedImageError)", "empty caption"}
    state = load_checkpoint(list_checkpoints(str(tmp_path / "run"))[0])
    assert state["counters"]["skipped_samples"] == records[-1]["skipped_samples"]


def test_a_base_run_is_not_resumed_as_an_upsampler_run(base_run, tmp_path):
    _copy(base_run, tmp_path)
    with pytest.raises(ConfigChangeError, match="--model base -> upsampler"):
        Trainer(tiny_train_config(tmp_path, steps=6, seed=0, r1_interval=16, model="upsampler")).fit(resume=True)


def test_a_relative_data_path_is_compared_as_the_folder_it_names(tmp_path, monkeypatch):
    """`--data data` from another working directory is another folder: it used to be compared by its spelling
    (the checkpoint recorded "data"), so the resume was accepted silently. The checkpoint records the absolute
    path; a URL and an open_clip tag stay as given."""
    from gigagan.training.resume import recorded_config
    for name in ("a", "b"):
        (tmp_path / name / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a")
    cfg = TrainConfig(data="data", out="run", guidance_clip_pretrained="laion2b_s34b_b79k")
    saved = recorded_config(cfg, "cpu", "fp32")
    assert (saved["data"], saved["out"]) == (str(tmp_path / "a" / "data"), str(tmp_path / "a" / "run"))
    assert saved["guidance_clip_pretrained"] == "laion2b_s34b_b79k"
    assert recorded_config(TrainConfig(data="https://h/{0..9}.tar"), "cpu", "fp32")["data"] == "https://h/{0..9}.tar"
    assert config_changes(saved, recorded_config(cfg, "cpu", "fp32"), 1, 1) == ([], [])
    monkeypatch.chdir(tmp_path / "b")
    state_changes, _ = config_changes(saved, recorded_config(cfg, "cpu", "fp32"), 1, 1)
    assert state_changes == [("data", f"--data {tmp_path / 'a' / 'data'} -> {tmp_path / 'b' / 'data'}")]
