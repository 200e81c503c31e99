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
    assert backend.resolve_impl("auto", torch.device("cpu"), "adaptive_modconv2d") == "ref"


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
