"""Test setup. Without a GPU the Triton kernels run through the interpreter on CPU tensors,
which must be switched on before triton.jit decorates anything, so it happens here."""
import os
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The suite runs the untuned rules (tests/test_autotune.py switches autotuning on), with a cache of its own so that
# no test reads or writes the user's decisions. Subprocesses inherit both.
os.environ["GIGAGAN_KERNELS_AUTOTUNE"] = "off"
os.environ["GIGAGAN_KERNELS_CACHE_DIR"] = tempfile.mkdtemp(prefix="gigagan-kernels-test-cache-")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# fp32 means fp32 in the tests: cuDNN's TF32 default would make results depend on the batch's algorithm
# (1e-4 apart) and Triton's fp32 dots follow it. Tests of the TF32 paths switch it on themselves.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
# The same fp32 math run on batches of other shapes: bitwise equal on CPU, but on a GPU cuDNN picks its
# algorithm per shape, and the summation order differs.
SAME_MATH_ATOL = 1e-6 if DEVICE == "cpu" else 1e-4


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (bf16, large shapes); skipped without one")
    config.addinivalue_line("markers", "slow: long-running; deselect with -m 'not slow'")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def poison_outputs():
    """Every torch.empty / empty_like in the op fills with NaN, so an unwritten element fails the test."""
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.utils.deterministic.fill_uninitialized_memory = old_fill


@pytest.fixture(autouse=True)
def _seed_per_test(request):
    """Fresh random inputs per test, reproducible from the test's id."""
    import zlib
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _fresh_memory_plan():
    """Each test starts with no kept-weights decisions (gigagan_kernels/memory.py plans once per process)."""
    from gigagan_kernels import memory
    memory.forget()
    yield

