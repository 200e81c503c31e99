"""Helpers shared by the tests: comparisons for the op tests, command lines for the training tests."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Relative-norm tolerances ||out - ref64|| / ||ref64|| per input dtype. fp32 on a GPU may run TF32 dots (the
# CUDA extension always does; Triton with torch.backends.cudnn.allow_tf32); the interpreter computes fp32 exactly.
RTOL = {torch.float32: 2e-3 if torch.cuda.is_available() else 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2,
        torch.float64: 1e-10}


def uses_tf32(impl: str, x: torch.Tensor) -> bool:
    """Whether adaptive_modconv2d's fp32 dots on x run in TF32. The Triton kernels and the CUDA extension's
    cuDNN convolutions follow torch.backends.cudnn.allow_tf32 (conftest turns it off for the tests), the
    extension's cuBLAS GEMMs torch.backends.cuda.matmul.allow_tf32 (off by default)."""
    if not (x.is_cuda and x.dtype == torch.float32):
        return False
    if impl == "cuda":
        return torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
    return impl.startswith("triton") and torch.backends.cudnn.allow_tf32


def round_to_tf32(t):
    """t (float64 or None) rounded to TF32's 10-bit mantissa, nearest, as the tensor cores see fp32 inputs."""
    if t is None:
        return None
    bits = t.float().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).double()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert torch.isfinite(out).all(), "output has NaN/Inf (unwritten or overflowed elements)"
    denom = ref.norm().item()
    return (out - ref).norm().item() / (denom if denom > 0 else 1.0)


def assert_close(out, ref, dtype, name, factor=1.0, same_precision_ref=None):
    """out vs the float64 ref. With same_precision_ref (plain torch in out's dtype), the tolerance also
    admits twice torch's own error: ill-conditioned outputs (cancellation) are hard for everyone."""
    err = rel_err(out, ref)
    tol = RTOL[dtype] * factor
    if same_precision_ref is not None:
        tol = max(tol, 2.0 * rel_err(same_precision_ref, ref))
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e} ({dtype})"
    # Elementwise guard so that one wrong element cannot hide in the norm of a large tensor.
    scale = ref.double().abs().max().item() or 1.0
    worst = (out.double() - ref.double()).abs().max().item() / scale
    assert worst <= 50 * tol, f"{name}: worst element off by {worst:.3e} of max|ref| ({dtype})"


def _cuda_extension_built() -> bool:
    from gigagan_kernels import backend
    return backend.cuda_extension_ops() is not None


# The fast paths every op test runs: the plain-torch composite and the fused kernels. "cuda" needs a GPU and the
# built extension (gigagan_kernels._C).
CUDA_IMPL = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not _cuda_extension_built(), reason="the CUDA extension gigagan_kernels._C is not built")])
FUSED_IMPLS = ["triton", CUDA_IMPL]
FAST_IMPLS = ["torch"] + FUSED_IMPLS


def train_env():
    """The environment of a `gigagan train` subprocess: this checkout importable, reference ops, no interpreter."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    env["GIGAGAN_KERNELS_IMPL"] = "ref"
    return env


def train_cmd(out, steps, *extra):
    """`python -m gigagan train` on the tiny preset, CPU, checkpoints every 2 steps."""
    return [sys.executable, "-m", "gigagan", "train", "--preset", "tiny", "--steps", str(steps), "--batch-size", "2",
            "--ckpt-every", "2", "--sample-every", "0", "--log-every", "1", "--impl", "ref", "--no-progress",
            "--device", "cpu", "--out", str(out), *extra]


def tiny_train_config(tmp_path, **overrides):
    """The tiny preset on CPU with the reference ops: 4 steps of 2 images, checkpoints every 2, lazy R1 every 2,
    written to tmp_path/run."""
    from gigagan.training import TrainConfig
    base = dict(preset="tiny", steps=4, batch_size=2, out=str(tmp_path / "run"), impl="ref", log_every=1,
                sample_every=0, ckpt_every=2, progress=False, r1_interval=2, seed=3, device="cpu")
    base.update(overrides)
    return TrainConfig(**base)
