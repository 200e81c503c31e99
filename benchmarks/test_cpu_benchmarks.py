"""The CPU benchmark cases as pytest-benchmark tests: the ops' composites at the CPU shapes and the tiny
model's training step, with op, shape, provider, mode, dtype and device in each result's extra_info.

    pytest benchmarks --benchmark-only                                  # time them
    pytest benchmarks --benchmark-only --benchmark-save=baseline        # keep a run (.benchmarks/)
    pytest benchmarks --benchmark-only --benchmark-compare=0001 \\
        --benchmark-compare-fail=median:10%                              # fail on a 10% regression

The GPU harness (`python -m benchmarks`, its CSV and plots) is separate; these cases time what a CPU can
run (ref, the torch composites, the floors), the same closures the harness times.
"""
import platform
import warnings

import pytest
import torch

from gigagan_kernels import use_impl

from . import bench_adaptive_modconv, bench_attention, bench_e2e
from .common import mode_call

CPU = torch.device("cpu")
MODES = ("fwd", "fwd+bwd")


def _cases(module):
    for shape_name, shape in module.CPU_SHAPES.items():
        for provider in module.PROVIDERS:
            if module.available(provider, CPU) is None:
                yield pytest.param(module, shape_name, shape, provider, id=f"{module.OP}-{shape_name}-{provider}")


def _info(benchmark, **info):
    benchmark.extra_info.update(device=f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
                                torch=torch.__version__, **info)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("module, shape_name, shape, provider",
                         list(_cases(bench_adaptive_modconv)) + list(_cases(bench_attention)))
def test_op(benchmark, module, shape_name, shape, provider, mode):
    fwd, wrt = module.setup(provider, shape, CPU, torch.float32)
    fn = mode_call(fwd, wrt, mode)
    _info(benchmark, op=module.OP, shape=shape_name, params=shape, provider=provider, mode=mode, dtype="float32")
    benchmark(fn)


@pytest.fixture(scope="module")
def tiny_trainer(tmp_path_factory):
    from gigagan.training import TrainConfig, Trainer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                    # the random CLIP tower: fine for timing
        torch.manual_seed(0)
        return Trainer(TrainConfig(preset="tiny", device="cpu", out=str(tmp_path_factory.mktemp("run")),
                                   progress=False))


@pytest.mark.parametrize("provider", ["ref", "torch", "auto"])
def test_train_step(benchmark, tiny_trainer, provider):
    batch = bench_e2e.CPU_CASES["train_step_b4"]
    images = torch.rand(batch, 3, tiny_trainer.resolution, tiny_trainer.resolution) * 2 - 1
    captions = [bench_e2e.CAPTION] * batch

    def step():
        tiny_trainer.step = 0                              # every timed step includes the lazy R1 term
        with use_impl(provider):
            return tiny_trainer.train_step(images, captions)
    _info(benchmark, op="e2e", shape="train_step_b4", params={"preset": "tiny", "batch": batch}, provider=provider,
          mode="step", dtype="float32")
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
