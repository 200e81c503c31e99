"""--precision: bf16 / fp16 autocast (fp16 with dynamic loss scaling, overflowing steps skipped without counting
as bad), fp32, and an exact resume of the loss scale."""
import json

import pytest
import torch

from gigagan.training import ConfigError, TrainConfig, Trainer
from gigagan_kernels import use_impl


def _cfg(tmp_path, **kw):
    base = dict(preset="tiny", steps=3, batch_size=2, out=str(tmp_path / "run"), impl="ref", log_every=1,
                sample_every=0, ckpt_every=3, progress=False, seed=3, device="cpu", r1_interval=2)
    base.update(kw)
    return TrainConfig(**base)


def test_fp16_trains_with_loss_scaling_and_resumes_the_scale(tmp_path):
    trainer = Trainer(_cfg(tmp_path, precision="fp16"))
    assert trainer.precision == "fp16" and trainer.scaler is not None
    assert trainer.fit()["bad_steps"] == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["loss_scale"] > 0 for r in records)
    state = torch.load(tmp_path / "run" / "ckpt-00000003.pt", weights_only=True)
    assert state["grad_scaler"]["scale"] == trainer.scaler.get_scale()
    resumed = Trainer(_cfg(tmp_path, precision="fp16", steps=4))
    resumed.load_state_dict(state)
    assert resumed.scaler.get_scale() == trainer.scaler.get_scale()


def test_fp16_overflow_skips_the_step_and_lowers_the_scale(tmp_path):
    trainer = Trainer(_cfg(tmp_path, precision="fp16", steps=1))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)      # every scaled gradient overflows
    before = {k: v.clone() for k, v in trainer.G.named_parameters()}
    images = torch.rand(2, 3, trainer.resolution, trainer.resolution) * 2 - 1
    with use_impl("ref"):                                                      # what fit() runs under
        stats = trainer.train_step(images, ["a red circle", "a blue square"])
    assert stats["skipped"] and stats["loss_scale"] == 2.0 ** 99
    assert trainer.bad_steps_total == 0                                        # not a bad step
    assert all(torch.equal(before[k], v) for k, v in trainer.G.named_parameters())   # no optimiser step


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", None), ("auto", None)])
def test_other_precisions(tmp_path, precision, dtype):
    trainer = Trainer(_cfg(tmp_path, precision=precision, steps=1))
    assert trainer.scaler is None
    assert trainer.autocast.fast_dtype == dtype if dtype else not trainer.autocast._enabled
    assert trainer.fit()["bad_steps"] == 0


def test_bad_precision_names_the_field():
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8").validate()
