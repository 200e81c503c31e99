"""The ops' host path: device kernels per call (gigagan_kernels.testing.count_kernels) and no host synchronisation.

The counted call (issue 29): fp32 under the interpreter, B = 2, N = 4, k = 3, at C = 32 on 4x4 and C = 16 on 16x16,
with bias, pixel noise, leaky ReLU and clamp, x / bank / logits / style / bias leaf tensors that need gradients and
whose .grad is None; one forward and one backward.
"""
import contextlib
import functools
import math

import pytest
import torch
import torch.nn.functional as F

import gigagan_kernels as gk
from gigagan_kernels import adaptive_modconv as amc
from gigagan_kernels.dispatcher import REGISTRY
from gigagan_kernels.ops.adaptive_modconv2d import triton_weights
from gigagan_kernels.testing import count_kernels

SHAPES = {"c32_4x4": (32, 4), "c16_16x16": (16, 16)}
WEIGHTS_BUDGET = 12


def modconv_leaves(C, H, B=2, N=4, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).requires_grad_()

    return dict(x=leaf(B, C, H, H), weight_bank=leaf(N, C, C, k, k, scale=1 / math.sqrt(C * k * k)),
                select_logits=leaf(B, N), style=leaf(B, C, scale=0.2, shift=1.0), bias=leaf(C),
                noise=torch.randn(B, 1, H, H, generator=g))


@contextlib.contextmanager
def forced_gemm(gemm):
    plan = triton_weights.plan_weights
    if gemm:
        triton_weights.plan_weights = lambda *args, **kwargs: plan(*args, **{**kwargs, "gemm": gemm})
    try:
        yield
    finally:
        triton_weights.plan_weights = plan


@functools.lru_cache(maxsize=None)
def count_modconv(C, H, impl, *, strategy=None, gemm=None):
    """Kernels of one forward + backward at the counted call (counted once per path for all the tests here: the
    interpreter is slow, the count deterministic)."""
    t = modconv_leaves(C, H)
    grad = torch.randn(2, C, H, H)
    with forced_gemm(gemm), amc.use_strategy(strategy) if strategy else contextlib.nullcontext():
        with count_kernels() as count:
            y = gk.adaptive_modconv2d(t["x"], t["weight_bank"], t["select_logits"], t["style"], t["bias"],
                                      noise=t["noise"], activation="lrelu", clamp=256.0, impl=impl)
            y.backward(grad)
    for name in ("x", "weight_bank", "select_logits", "style", "bias"):
        assert t[name].grad is not None and torch.isfinite(t[name].grad).all(), name
    return count


@functools.lru_cache(maxsize=None)
def count_conv2d(C, H, B=2, k=3):
    """The baseline: a plain conv2d with the same epilogue (noise, bias, leaky ReLU * gain, clamp)."""
    g = torch.Generator().manual_seed(1)
    x, w, bias = (torch.randn(*s, generator=g).requires_grad_() for s in ((B, C, H, H), (C, C, k, k), (C,)))
    noise, grad = torch.randn(B, 1, H, H, generator=g), torch.randn(B, C, H, H, generator=g)
    with count_kernels() as count:
        y = F.conv2d(x, w, padding=k // 2) + noise + bias[None, :, None, None]
        (F.leaky_relu(y, 0.2) * math.sqrt(2)).clamp(-256.0, 256.0).backward(grad)
    return count


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("gemm", [None, "bmm", "implicit"])
def test_weights_path_issues_at_most_12_kernels(shape, gemm):
    """The Triton "weights" path (its own GEMM form for the shape, and each form forced): at most 12 device kernels
    for a forward and a backward; no softmax, partial-sum, zero-fill or cast kernels among them."""
    count = count_modconv(*SHAPES[shape], "triton", strategy="weights", gemm=gemm)
    assert count.total <= WEIGHTS_BUDGET, count.describe()
    leftovers = {"aten::_softmax", "aten::sum", "aten::fill_", "aten::zero_", "aten::mul", "aten::sub"}
    assert not leftovers & set(count.aten), count.describe()
    assert count.syncs == [], count.syncs


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("path", ["weights-bmm", "weights-implicit", "fused"])
def test_triton_paths_issue_no_more_kernels_than_conv2d(shape, path):
    strategy, _, gemm = path.partition("-")
    count = count_modconv(*SHAPES[shape], "triton", strategy=strategy, gemm=gemm or None)
    baseline = count_conv2d(*SHAPES[shape])
    assert count.total <= baseline.total, f"{path}: {count.describe()}; conv2d: {baseline.describe()}"


def attention_inputs(kind, masked, B=2, H=2, L=40, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g).requires_grad_() for _ in range(3))
    mask = None
    if masked:
        mask = torch.rand(B, L, generator=g) > 0.3
        mask[1] = False                                 # a row with every key masked
    return q, k, v, mask, torch.randn(B, H, L, D, generator=g)


@pytest.mark.parametrize("kind, masked", [("l2", False), ("dot", True), ("l2", True)])
def test_attention_triton_issues_no_more_kernels_than_sdpa(kind, masked):
    q, k, v, mask, grad = attention_inputs(kind, masked)
    with count_kernels() as count:
        gk.attention(q, k, v, kind=kind, key_padding_mask=mask, impl="triton").backward(grad)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    with count_kernels() as baseline:
        attn_mask = None if mask is None else mask[:, None, None, :]
        F.scaled_dot_product_attention(q2, k2, v2, attn_mask=attn_mask).backward(grad)
    assert count.total <= baseline.total, f"{count.describe()}; SDPA: {baseline.describe()}"
    assert {"aten::zero_", "aten::fill_"}.isdisjoint(count.aten), count.describe()


def test_count_kernels_counts_what_launches_and_nothing_else():
    """The counter's own yardstick: views, allocations and no-op casts count 0; a compute op, a fill and a copy
    count 1 each (a scalar operand is not a kernel); each Triton launch counts 1, its interpreter copies 0; host
    reads are found."""
    from gigagan_kernels.ops.adaptive_modconv2d.triton_weights import im2col
    x = torch.randn(2, 3, 4, 4)
    with count_kernels() as count:
        x.view(2, 48).t()[0]
        torch.empty(5)
        x.to(torch.float32)
        x * 2.0
        torch.zeros(3)
        x.transpose(0, 1).contiguous()
        im2col(x, 3)
    assert sorted(count.aten) == ["aten::copy_", "aten::mul", "aten::zero_"], count.describe()
    assert count.triton == ["_im2col_kernel"] and count.total == 4 and count.syncs == []
    with count_kernels() as count:
        bool(x.sum() > 0)
        x.nonzero()
    assert count.syncs.count("aten::_local_scalar_dense") == 1 and "aten::nonzero" in count.syncs
    assert "Tensor.__bool__" in count.syncs


# ----------------------------------------------------------------------------------------------
# No host synchronisation, forward or backward, on any path auto can pick here, and in auto's own choice.
# ----------------------------------------------------------------------------------------------
def _runnable(op, call):
    return [c.name for c in REGISTRY[op].candidates if not c.not_supported_reasons(call)]


def test_modconv_paths_never_synchronise():
    from gigagan_kernels.ops.adaptive_modconv2d import ModconvCall
    t = modconv_leaves(8, 5, B=3, N=3)
    call = ModconvCall(t["x"], t["weight_bank"], t["select_logits"], t["style"], t["bias"], t["noise"],
                       demodulate=True, eps=1e-8, activation="lrelu", gain=math.sqrt(2), clamp=1.0, needs_grad=True)
    names = _runnable("adaptive_modconv2d", call)
    assert {"ref", "torch:bmm", "torch:activations", "triton:weights", "triton:fused"} <= set(names)
    for impl in ["auto"] + names:
        for gemm in (["bmm", "implicit"] if impl == "triton:weights" else [None]):
            leaves = {k: (v.detach().clone().requires_grad_() if k != "noise" else v) for k, v in t.items()}
            with forced_gemm(gemm), count_kernels() as count:
                y = gk.adaptive_modconv2d(leaves["x"], leaves["weight_bank"], leaves["select_logits"], leaves["style"],
                                          leaves["bias"], noise=leaves["noise"], activation="lrelu", clamp=1.0,
                                          impl=impl)
                y.backward(torch.ones_like(y))
            assert count.syncs == [], (impl, gemm, count.syncs)


def test_attention_paths_never_synchronise():
    from gigagan_kernels.ops.attention import AttentionCall
    for kind, masked in (("l2", False), ("dot", True), ("l2", True)):
        q, k, v, mask, grad = attention_inputs(kind, masked, L=24)
        call = AttentionCall(q, k, v, kind=kind, scale=0.25, key_padding_mask=mask, needs_grad=True)
        names = _runnable("attention", call)
        assert {"ref", "torch:materialised", "triton"} <= set(names)
        for impl in ["auto"] + names:
            leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
            with count_kernels() as count:
                gk.attention(*leaves, kind=kind, key_padding_mask=mask, impl=impl).backward(grad)
            assert count.syncs == [], (kind, masked, impl, count.syncs)


# ----------------------------------------------------------------------------------------------
# Dispatch on a call already seen: a dict lookup, not a new choice (its cost is in the host benchmark).
# ----------------------------------------------------------------------------------------------
def test_seen_call_is_not_chosen_again_until_its_surroundings_change(monkeypatch):
    asked = []
    for candidate in REGISTRY["adaptive_modconv2d"].candidates:
        reasons = candidate.not_supported_reasons
        monkeypatch.setattr(candidate, "not_supported_reasons",
                            lambda call, reasons=reasons, name=candidate.name: asked.append(name) or reasons(call))
    validations = []
    from gigagan_kernels.ops import adaptive_modconv2d as package
    real_validate = package.validate
    monkeypatch.setattr(package, "validate", lambda *a: validations.append(1) or real_validate(*a))
    t = modconv_leaves(4, 3, B=2, N=2)

    def run(**kwargs):
        return gk.adaptive_modconv2d(t["x"], t["weight_bank"], t["select_logits"], t["style"], t["bias"],
                                     noise=t["noise"], activation="lrelu", **kwargs)

    with torch.no_grad():
        run(impl="torch")
        first = (len(asked), len(validations))
        assert first[0] > 0 and first[1] == 1
        run(impl="torch")
        assert (len(asked), len(validations)) == first          # the second call: neither validated nor chosen
        with amc.use_strategy("fused"):                          # a new surrounding: chosen again
            run(impl="triton")
        n = len(asked)
        monkeypatch.setenv("GIGAGAN_KERNELS_IMPL", "ref")
        run()
        assert len(asked) > n
        y_ref = run()
        monkeypatch.setenv("GIGAGAN_KERNELS_IMPL", "torch:bmm")
        assert torch.allclose(run(), y_ref, atol=1e-5)
    with pytest.raises(ValueError, match="activation must be one of"):      # a bad call is never remembered
        gk.adaptive_modconv2d(t["x"], t["weight_bank"], t["select_logits"], t["style"], activation="relu")
    with pytest.raises(ValueError, match="activation must be one of"):
        gk.adaptive_modconv2d(t["x"], t["weight_bank"], t["select_logits"], t["style"], activation="relu")


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("formulation, strategy", [("triton_weights", "weights"), ("triton_fused", "fused")])
def test_cost_model_launches_are_the_counted_kernels(shape, formulation, strategy):
    """The cost model's host floor counts a launch per kernel: its stages' launches are what the path issues."""
    from gigagan_kernels import cost_model
    C, H = SHAPES[shape]
    stages = cost_model.modconv_stages(formulation, (2, C, H, H), (4, C, C, 3, 3), "fwd+bwd", element_size=4)
    assert sum(st.launches for st in stages) == count_modconv(C, H, "triton", strategy=strategy).total


def test_the_gpu_checks_count_script_runs_and_checks():
    """scripts/count_kernels.py (gpu_check's host phase): every runnable path counted, none synchronising. Run here
    without the interpreter (the Triton paths skip), which keeps it to seconds."""
    import os
    import subprocess
    import sys
    from tests.helpers import ROOT
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "scripts/count_kernels.py", "--check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "adaptive_modconv2d C=32 4x4 torch:gram:" in proc.stdout
    assert "adaptive_modconv2d C=16 16x16 auto:" in proc.stdout and "attention dot masked auto:" in proc.stdout
    assert "attention l2 torch:materialised:" in proc.stdout
    assert "triton:weights: skipped" in proc.stdout and "syncs []" in proc.stdout
