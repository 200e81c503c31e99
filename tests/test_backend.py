"""Backend dispatch: auto, the env var, the context manager, and errors for unavailable backends."""
import pytest
import torch

import gigagan_kernels as gk
from gigagan_kernels import backend


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 3, 4, 4, generator=g), torch.randn(2, 2, 3, 3, 3, generator=g),
            torch.randn(1, 2, generator=g), torch.randn(1, 3, generator=g))


def test_auto_on_cpu_follows_interpreter(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.resolve_impl("auto", torch.device("cpu"), "adaptive_modconv2d") == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for op in ("adaptive_modconv2d", "attention"):
        assert backend.resolve_impl("auto", torch.device("cpu"), op) == "torch"


def test_auto_on_cuda_picks_the_fastest(monkeypatch):
    """The order is a pure function of the device type (and, for the modconv, of the cost model's per-call
    order), so it is checked without a GPU."""
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    cuda = torch.device("cuda")
    assert backend.resolve_impl("auto", cuda, "adaptive_modconv2d") == "triton"
    assert backend.resolve_impl("auto", cuda, "adaptive_modconv2d", cuda_order=("torch", "triton")) == "torch"
    assert backend.resolve_impl("auto", cuda, "attention") == "triton"


def test_kernel_dtypes(monkeypatch):
    """float64 never reaches a kernel: auto falls back to the torch composite, an explicit fused impl raises."""
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    for device in (torch.device("cuda"), torch.device("cpu")):
        assert backend.resolve_impl("auto", device, "attention", torch.float64) == "torch"
        assert backend.resolve_impl("auto", device, "adaptive_modconv2d", torch.float64) == "torch"
    assert "not float64" in backend.unavailable_reason("triton", torch.device("cuda"), "attention", torch.float64)
    assert backend.unavailable_reason("triton", torch.device("cuda"), "attention", torch.bfloat16) is None
    with pytest.raises(gk.BackendUnavailableError, match="impl='triton' is unavailable: the triton kernels take"):
        backend.resolve_impl("triton", torch.device("cuda"), "attention", torch.float64)


def test_use_impl_is_per_thread(monkeypatch):
    import threading
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    seen = []
    with gk.use_impl("ref"):
        worker = threading.Thread(target=lambda: seen.append(backend.resolve_impl("auto", torch.device("cuda"),
                                                                                  "adaptive_modconv2d")))
        worker.start()
        worker.join()
        assert backend.resolve_impl("auto", torch.device("cuda"), "adaptive_modconv2d") == "ref"
    assert seen == ["triton"]


def test_env_var_and_context_manager_override_auto(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(backend.ENV_VAR, "ref")
    assert backend.resolve_impl("auto", cpu, "adaptive_modconv2d") == "ref"
    with gk.use_impl("triton"):
        if backend.triton_interpret():
            assert backend.resolve_impl("auto", cpu, "adaptive_modconv2d") == "triton"
        # an explicit impl is never overridden
        assert backend.resolve_impl("ref", cpu, "adaptive_modconv2d") == "ref"
    assert backend.resolve_impl("auto", cpu, "adaptive_modconv2d") == "ref"


def test_context_manager_switches_the_op(monkeypatch):
    """The override reaches the op: forcing "cuda" on CPU tensors raises instead of running ref."""
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    with gk.use_impl("cuda"):
        with pytest.raises(gk.BackendUnavailableError, match=r"impl='cuda' is unavailable"):
            gk.adaptive_modconv2d(*_inputs())
    gk.adaptive_modconv2d(*_inputs())  # back to auto


def test_bad_env_var_names_the_variable(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=backend.ENV_VAR):
        gk.adaptive_modconv2d(*_inputs())


def test_unknown_impl_is_an_error():
    with pytest.raises(ValueError, match=r"adaptive_modconv2d\(impl=...\): expected one of"):
        gk.adaptive_modconv2d(*_inputs(), impl="fast")
    with pytest.raises(ValueError, match=r"use_impl\(impl\)"):
        with gk.use_impl("fast"):
            pass


def test_unavailable_backends_raise(monkeypatch):
    with pytest.raises(gk.BackendUnavailableError, match="needs CUDA tensors"):
        gk.adaptive_modconv2d(*_inputs(), impl="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(gk.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        gk.adaptive_modconv2d(*_inputs(), impl="triton")


def test_poison_fixture_really_poisons(poison_outputs):
    assert torch.isnan(torch.empty(16)).all()
    assert torch.isnan(torch.empty_like(torch.ones(4, 4))).all()


CUDA_OPS = {
    "adaptive_modconv2d_forward": "(Tensor x, Tensor weight_bank, Tensor select_logits, Tensor style, Tensor? bias, "
                                  "Tensor? noise, bool demodulate, float eps, str activation, float gain, "
                                  "float? clamp, bool save_lin, int workspace, bool keep_weights) "
                                  "-> (Tensor, Tensor, Tensor, Tensor)",
    "adaptive_modconv2d_backward": "(Tensor grad_y, Tensor x, Tensor weight_bank, Tensor select_logits, "
                                   "Tensor style, Tensor? bias, Tensor? noise, Tensor lin, Tensor d, Tensor kept, "
                                   "bool demodulate, str activation, float gain, float? clamp, int workspace) "
                                   "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "attention_forward": "(Tensor q, Tensor k, Tensor v, str kind, float scale, Tensor? key_padding_mask) "
                         "-> (Tensor, Tensor)",
    "attention_backward": "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, str kind, "
                          "float scale, Tensor? key_padding_mask) -> (Tensor, Tensor, Tensor)",
}


def _toolchain_present() -> bool:
    import os
    from torch.utils.cpp_extension import CUDA_HOME
    return torch.version.cuda is not None and (os.path.isfile("/usr/local/cuda/bin/nvcc") or CUDA_HOME is not None)


@pytest.mark.skipif(not _toolchain_present(), reason="needs a CUDA build of torch and nvcc to build the extension")
def test_cuda_extension_builds_and_registers_its_ops():
    """setup.py built gigagan_kernels._C (CI has nvcc and the CUDA torch); importing it registers every op with
    the documented schema, and importing gigagan_kernels gives each a fake kernel and the forwards their
    autograd, so raw torch.ops calls propagate shapes and gradients without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    ops = backend.cuda_extension_ops()
    assert ops is not None, "gigagan_kernels._C did not build or import: run `pip install --no-build-isolation -e .`"
    for name, schema in CUDA_OPS.items():
        assert str(getattr(ops, name).default._schema) == f"gigagan_kernels_cuda::{name}{schema}"
    # What the dispatcher asks before it runs impl="cuda" (only the device's type matters, so no GPU is needed).
    for op in ("adaptive_modconv2d", "attention"):
        assert backend.cuda_extension_has(op) and backend.unavailable_reason("cuda", torch.device("cuda"), op) is None
    assert not backend.cuda_extension_has("no_such_op")
    with FakeTensorMode():
        x = torch.empty(2, 4, 5, 7, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        bank, logits, style = (torch.empty(*s, device="cuda", dtype=torch.bfloat16)
                               for s in ((3, 6, 4, 3, 3), (2, 3), (2, 4)))
        y, lin, d, kept = ops.adaptive_modconv2d_forward(x, bank, logits, style, None, None, True, 1e-8, "lrelu",
                                                         1.4, None, True, 2**20, True)
        assert (y.shape, lin.shape, d.shape, d.dtype) == ((2, 6, 5, 7), (2, 6, 5, 7), (2, 6), torch.float32)
        assert kept.shape == (2, 6, 4 * 9)                               # the weights fit half the workspace
        assert ops.adaptive_modconv2d_forward(x, bank, logits, style, None, None, True, 1e-8, "lrelu", 1.4, None,
                                              True, 100, True)[3].shape == (0,)
        assert y.grad_fn is not None                                     # autograd registered at import
        grads = ops.adaptive_modconv2d_backward(y, x, bank, logits, style, None, None, lin, d, kept, True, "lrelu",
                                                1.4, None, 2**20)
        assert [g.shape for g in grads] == [x.shape, bank.shape, logits.shape, style.shape, (0,), (0,)]
        q, k, v = (torch.empty(2, 3, L, 16, device="cuda", dtype=torch.float16) for L in (9, 5, 5))
        out, lse = ops.attention_forward(q.requires_grad_(), k, v, "l2", 0.25, None)
        assert (out.shape, lse.shape, lse.dtype) == ((2, 3, 9, 16), (2, 3, 9), torch.float32)
        assert out.grad_fn is not None
        assert [g.shape for g in ops.attention_backward(out, q, k, v, out, lse, "l2", 0.25, None)] == [q.shape,
                                                                                                      k.shape, v.shape]
