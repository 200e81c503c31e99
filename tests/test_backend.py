"""Backend dispatch: auto, the env var, the context manager, and errors for unavailable backends."""
import os

import pytest
import torch

import gigagan_kernels as gk
from gigagan_kernels import backend, dispatcher


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 3, 4, 4, generator=g), torch.randn(2, 2, 3, 3, 3, generator=g),
            torch.randn(1, 2, generator=g), torch.randn(1, 3, generator=g))


def _call(op, device="cpu", dtype=torch.float32, shape="small"):
    """A call of `op` for dispatch to choose on. On "cuda" its tensors are meta tensors and the call reports a CUDA
    device: the choice is tested without a GPU."""
    from gigagan_kernels.ops.adaptive_modconv2d.dispatch import ModconvCall
    from gigagan_kernels.ops.attention.dispatch import AttentionCall
    on = "meta" if device == "cuda" else device
    if op == "adaptive_modconv2d":
        B, C, H, N = (32, 1024, 8, 8) if shape == "large" else (1, 3, 4, 2)
        x = torch.empty(B, C, H, H, device=on, dtype=dtype)
        tensors = (x, torch.empty(N, C, C, 3, 3, device=on, dtype=dtype), torch.empty(B, N, device=on, dtype=dtype),
                   torch.empty(B, C, device=on, dtype=dtype), None, None)
        cls = type("Call", (ModconvCall,), {"__slots__": (), "device": property(lambda self: torch.device(device))})
        return cls(*tensors, demodulate=True, eps=1e-8, activation=None, gain=1.0, clamp=None, needs_grad=True)
    B, H, L, D = (16, 8, 4096, 64) if shape == "large" else (1, 2, 8, 16)
    q = torch.empty(B, H, L, D, device=on, dtype=dtype)
    cls = type("Call", (AttentionCall,), {"__slots__": (), "device": property(lambda self: torch.device(device))})
    return cls(q, q, q, kind="l2", scale=0.25, key_padding_mask=None, needs_grad=True)


def chosen(op, impl="auto", **kwargs):
    return dispatcher.choose(op, impl, _call(op, **kwargs)).name


def test_auto_on_cpu_follows_interpreter(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert chosen("adaptive_modconv2d").startswith("triton:")
    assert chosen("attention") == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert chosen("adaptive_modconv2d").startswith("torch:")
    assert chosen("attention").startswith("torch:")


def test_auto_on_cuda_picks_the_fastest_predicted(monkeypatch):
    """Without timing (GIGAGAN_KERNELS_AUTOTUNE=off in the suite) auto on CUDA takes the cost model's pick."""
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    assert chosen("adaptive_modconv2d", device="cuda", dtype=torch.bfloat16, shape="large") == "triton:weights"
    # (SDPA's own checks refuse meta tensors, so which SDPA kernel is not decided here.)
    picked = chosen("attention", device="cuda", dtype=torch.bfloat16, shape="large")
    assert picked == "triton" or picked.startswith("torch:sdpa-"), picked
    call = _call("adaptive_modconv2d", device="cuda", dtype=torch.bfloat16, shape="large")
    entry = dispatcher.REGISTRY["adaptive_modconv2d"]
    predicted = {c.name: c.predicted_seconds(call) for c in entry.candidates}
    assert all(p is not None and p > 0 for p in predicted.values()), predicted
    auto_pickable = {name: p for name, p in predicted.items() if not name.startswith("cuda:")}  # cuda is opt-in
    assert min(auto_pickable, key=auto_pickable.get) == "triton:weights"


def test_candidates_lists_every_name():
    assert gk.candidates("adaptive_modconv2d") == ("ref", "torch:activations", "torch:bmm", "torch:grouped",
                                                   "torch:gram", "triton:weights", "triton:fused", "cuda:weights")
    assert gk.candidates("attention") == ("ref", "torch:materialised", "torch:sdpa-flash", "torch:sdpa-efficient",
                                          "torch:sdpa-cudnn", "torch:sdpa-math", "triton", "cuda")
    with pytest.raises(ValueError, match=r"candidates\(op\): expected one of"):
        gk.candidates("conv2d")


def test_a_backend_means_the_best_of_its_candidates(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert chosen("adaptive_modconv2d", "torch") in ("torch:activations", "torch:bmm", "torch:grouped")
    assert chosen("adaptive_modconv2d", "ref") == "ref"
    assert chosen("adaptive_modconv2d", "torch:grouped") == "torch:grouped"
    with pytest.raises(gk.BackendUnavailableError, match=r"impl='triton' is unavailable: triton:weights: Triton "
                                                         r"kernels need CUDA tensors.*triton:fused: Triton"):
        chosen("adaptive_modconv2d", "triton")
    with pytest.raises(gk.BackendUnavailableError, match=r"impl='torch:sdpa-cudnn' is unavailable: SDPA's "
                                                         r"cudnn kernel needs CUDA tensors"):
        chosen("attention", "torch:sdpa-cudnn")


def test_kernel_dtypes(monkeypatch):
    """float64 never reaches a kernel: auto falls back to the torch composite, an explicit fused impl raises."""
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    for device in ("cuda", "cpu"):
        for op in ("attention", "adaptive_modconv2d"):
            assert chosen(op, device=device, dtype=torch.float64).startswith("torch:"), (op, device)
    assert "not float64" in backend.unavailable_reason("triton", torch.device("cuda"), "attention", torch.float64)
    assert backend.unavailable_reason("triton", torch.device("cuda"), "attention", torch.bfloat16) is None
    with pytest.raises(gk.BackendUnavailableError, match="impl='triton' is unavailable: the triton kernels take"):
        chosen("attention", "triton", device="cuda", dtype=torch.float64)


def test_use_impl_is_per_thread(monkeypatch):
    import threading
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    seen = []
    with gk.use_impl("ref"):
        worker = threading.Thread(target=lambda: seen.append(chosen("adaptive_modconv2d", device="cuda",
                                                                    shape="large")))
        worker.start()
        worker.join()
        assert chosen("adaptive_modconv2d", device="cuda", shape="large") == "ref"
    assert seen == ["triton:weights"]


def test_env_var_and_context_manager_override_auto(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    attention_auto = chosen("attention")
    monkeypatch.setenv(backend.ENV_VAR, "ref")
    assert chosen("adaptive_modconv2d") == "ref"
    with gk.use_impl("torch:bmm"):
        assert chosen("adaptive_modconv2d") == "torch:bmm"
        assert chosen("attention") == attention_auto         # a candidate of another op leaves this one on auto
        # an explicit impl is never overridden
        assert chosen("adaptive_modconv2d", "ref") == "ref"
    assert chosen("adaptive_modconv2d") == "ref"


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
    from gigagan_kernels import cuda_extension
    return cuda_extension.toolchain_problem() is None


@pytest.mark.skipif(not _toolchain_present(), reason="needs a CUDA build of torch and nvcc to build the extension")
def test_cuda_extension_builds_and_registers_its_ops():
    """The first impl="cuda" use compiles gigagan_kernels._C (CI has nvcc and the CUDA torch; its setup built it
    ahead, with `python -m gigagan_kernels build-cuda`, so this finds it built). Loading it registers every op with
    the documented schema and gives each a fake kernel and the forwards their autograd, so raw torch.ops calls
    propagate shapes and gradients without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from gigagan_kernels import cuda_extension
    # What the dispatcher asks before it runs an explicit impl="cuda" (only the device's type matters, so no GPU
    # is needed); it compiles the extension if need be.
    for op in ("adaptive_modconv2d", "attention"):
        assert backend.unavailable_reason("cuda", torch.device("cuda"), op, allow_compile=True) is None
    ops = backend.cuda_extension_ops()
    assert ops is not None and backend.cuda_extension_has("attention")
    library = cuda_extension.built_library()
    assert os.path.dirname(library) == cuda_extension.build_dir()
    assert cuda_extension.build_record(cuda_extension.build_dir())["cuda_archs"] == cuda_extension.arch_list()
    from gigagan_kernels import _C                                    # the pybind module under its package name
    assert _C.__file__ == library and callable(_C.modconv_plan_weights)
    for name, schema in CUDA_OPS.items():
        assert str(getattr(ops, name).default._schema) == f"gigagan_kernels_cuda::{name}{schema}"
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
        assert y.grad_fn is not None                                     # autograd registered as it loaded
        grads = ops.adaptive_modconv2d_backward(y, x, bank, logits, style, None, None, lin, d, kept, True, "lrelu",
                                                1.4, None, 2**20)
        assert [g.shape for g in grads] == [x.shape, bank.shape, logits.shape, style.shape, (0,), (0,)]
        q, k, v = (torch.empty(2, 3, L, 16, device="cuda", dtype=torch.float16) for L in (9, 5, 5))
        out, lse = ops.attention_forward(q.requires_grad_(), k, v, "l2", 0.25, None)
        assert (out.shape, lse.shape, lse.dtype) == ((2, 3, 9, 16), (2, 3, 9), torch.float32)
        assert out.grad_fn is not None
        assert [g.shape for g in ops.attention_backward(out, q, k, v, out, lse, "l2", 0.25, None)] == [q.shape,
                                                                                                      k.shape, v.shape]
