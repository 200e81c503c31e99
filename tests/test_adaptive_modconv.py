"""adaptive_modconv2d: every fast path, forward and all gradients, against the float64 reference."""
import contextlib
import math
import random

import pytest
import torch

import gigagan_kernels as gk
from gigagan_kernels import adaptive_modconv as amc
from gigagan_kernels import backend
from gigagan_kernels.ops.adaptive_modconv2d import common, cuda, triton_op, triton_weights
from gigagan_kernels import cost_model
from gigagan_kernels.nn import AdaptiveModConv2d, EqualizedConv2d

from tests.helpers import assert_close, CUDA_IMPL, uses_tf32, round_to_tf32

# Every fast path: the torch composite (it picks its form per call; test_torch_composite_every_form forces
# each), and each Triton strategy, the "weights" one in both of its GEMM forms.
TRITON_PATHS = ["triton:weights-bmm", "triton:weights-implicit", "triton:fused"]
FAST_IMPLS = ["torch"] + TRITON_PATHS + [CUDA_IMPL]


@contextlib.contextmanager
def forced_path(impl):
    """impl "triton:<strategy>[-<gemm>]" runs impl="triton" with that strategy (and GEMM form) forced."""
    if not impl.startswith("triton:"):
        yield impl
        return
    strategy, _, gemm = impl.split(":")[1].partition("-")
    plan = triton_weights.plan_weights
    if gemm:
        triton_weights.plan_weights = lambda *args, **kwargs: plan(*args, **{**kwargs, "gemm": gemm})
    try:
        with amc.use_strategy(strategy):
            yield "triton"
    finally:
        triton_weights.plan_weights = plan

INPUT_NAMES = ("x", "weight_bank", "select_logits", "style", "bias", "noise")


def make_inputs(B, Cin, Cout, H, W, N, k, *, dtype, device, seed, bias=False, noise=None):
    """Fresh random inputs (never zeros). noise: None, "full" [B,Cout,H,W] or "pixel" [B,1,H,W]."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(device=device, dtype=dtype)

    inputs = {
        "x": rnd(B, Cin, H, W),
        "weight_bank": rnd(N, Cout, Cin, k, k, scale=1.0 / math.sqrt(Cin * k * k)),
        "select_logits": rnd(B, N, scale=2.0),
        "style": rnd(B, Cin, scale=0.5, shift=1.0),
        "bias": rnd(Cout) if bias else None,
        "noise": {None: None, "full": lambda: rnd(B, Cout, H, W), "pixel": lambda: rnd(B, 1, H, W)}[noise]
    }
    if callable(inputs["noise"]):
        inputs["noise"] = inputs["noise"]()
    return inputs


def run(inputs, impl, grad_out, **options):
    """Forward and the gradients of every tensor input, for one impl."""
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    with forced_path(impl) as backend_impl:
        y = gk.adaptive_modconv2d(leaves["x"], leaves["weight_bank"], leaves["select_logits"], leaves["style"],
                                  leaves["bias"], noise=leaves["noise"], impl=backend_impl, **options)
        present = [k for k in INPUT_NAMES if leaves[k] is not None]
        grads = torch.autograd.grad(y, [leaves[k] for k in present], grad_out.to(y.dtype))
    return y, dict(zip(present, grads))


def away_from_kinks(ref_inputs, activation=None, gain=None, clamp=None, **options):
    """0 where the float64 pre-activation sits within rounding of the lrelu or clamp kink, else 1.

    There a low-precision kernel may legitimately pick the other side of the kink (seen: v = -2e-6
    computed as +3e-5 in fp16), which changes that element's gradient by 80%. Elsewhere every
    gradient is compared.
    """
    keep = torch.ones((), dtype=torch.float64, device=ref_inputs["x"].device)
    if activation != "lrelu" and clamp is None:
        return keep
    with torch.no_grad():
        pre = gk.adaptive_modconv2d(ref_inputs["x"], ref_inputs["weight_bank"], ref_inputs["select_logits"],
                                    ref_inputs["style"], ref_inputs["bias"], noise=ref_inputs["noise"], impl="ref",
                                    **options)
        margin = 1e-2 * pre.abs().max().clamp_min(1e-30)
        keep = (pre.abs() > margin).double() if activation == "lrelu" else torch.ones_like(pre)
        if clamp is not None:
            g = common.default_gain(activation) if gain is None else gain
            act = torch.where(pre > 0, pre, pre * 0.2) * g if activation == "lrelu" else pre * g
            keep = keep * ((act.abs() - clamp).abs() > margin * abs(g)).double()
    return keep


def check_against_reference(inputs, impl, dtype, *, grad_scale=1.0, **options):
    if options.get("demodulate", True) and inputs["weight_bank"][0, 0].numel() == 1 and "eps" not in options:
        # A demodulated filter of one weight: y = x Ws / sqrt((Ws)^2 + eps), so with eps = 1e-8 the bank and
        # selection gradients are differences that cancel to ~1e-8 of their terms, rounding noise in every fp32
        # formulation. A larger eps keeps the same code paths and leaves a gradient worth comparing.
        options["eps"] = 1e-2
    options.setdefault("eps", 1e-8)
    B, Cout = inputs["x"].shape[0], inputs["weight_bank"].shape[1]
    H, W = inputs["x"].shape[2:]
    grad_out = torch.randn(B, Cout, H, W, dtype=torch.float64).to(inputs["x"].device) * grad_scale
    ref_inputs = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    grad_out = grad_out * away_from_kinks(ref_inputs, **options)
    y, grads = run(inputs, impl, grad_out, **options)
    y_ref, grads_ref = run(ref_inputs, "ref", grad_out, **options)
    if uses_tf32(impl, inputs["x"]):
        # The kernel's dots round fp32 to TF32; ill-conditioned outputs (a demodulated 1x1 filter of one
        # input channel) then owe their error to that rounding, so the yardstick is exact math on TF32 inputs.
        y_low, grads_low = run({k: round_to_tf32(v) for k, v in ref_inputs.items()}, "ref", grad_out, **options)
    else:
        y_low, grads_low = run(inputs, "ref", grad_out, **options)
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, dtype, "y", same_precision_ref=y_low)
    for name, g_ref in grads_ref.items():
        assert grads[name].dtype == dtype, name
        if name == "style" and options.get("demodulate", True) and inputs["x"].shape[1] == 1 and options["eps"] < 1e-6:
            # One input channel: demodulation cancels the style's scale, so dstyle is 0 up to eps and
            # both low-precision results are rounding noise around it.
            assert grads[name].double().abs().max() < 1e-3 * grad_out.abs().max().item() + 1e-6
            continue
        # Gradients through the demodulation rsqrt and the softmax lose a little more precision.
        assert_close(grads[name], g_ref, dtype, f"d{name}", factor=4.0, same_precision_ref=grads_low[name])


EPILOGUES = {
    "plain": dict(),
    "bias": dict(bias=True),
    "noise_full": dict(noise="full"),
    "noise_pixel": dict(noise="pixel"),
    "lrelu": dict(bias=True, activation="lrelu"),
    "lrelu_gain": dict(activation="lrelu", gain=0.7),
    "clamp": dict(bias=True, noise="pixel", activation="lrelu", clamp=0.4),
    "linear_gain_clamp": dict(gain=2.0, clamp=0.5),
}


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("epilogue", list(EPILOGUES))
def test_odd_shapes_every_epilogue(impl, epilogue, device, poison_outputs):
    """Every epilogue through every path, with and without demodulation (alternating over the epilogues; the
    sweep below mixes them further)."""
    opts = dict(EPILOGUES[epilogue])
    index = list(EPILOGUES).index(epilogue)
    inputs = make_inputs(3, 5, 7, 9, 11, 3, 3, dtype=torch.float32, device=device, seed=100 + index,
                         bias=opts.pop("bias", False), noise=opts.pop("noise", None))
    check_against_reference(inputs, impl, torch.float32, demodulate=index % 2 == 0, **opts)


@pytest.mark.parametrize("impl", ["torch", "triton", CUDA_IMPL])
@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("N", [1, 2, 5])
def test_kernel_sizes_and_bank_sizes(impl, k, N, device, poison_outputs):
    """Each Triton path sees every kernel size (the paths rotate over the bank sizes)."""
    if impl == "triton":
        impl = TRITON_PATHS[(k + [1, 2, 5].index(N)) % len(TRITON_PATHS)]
    inputs = make_inputs(2, 6, 4, 7, 6, N, k, dtype=torch.float32, device=device, seed=10 * k + N, bias=True)
    check_against_reference(inputs, impl, torch.float32, activation="lrelu")


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_one_sample_one_pixel(impl, device, poison_outputs):
    """B = 1 and a 1x1 image, where every tap but the centre falls outside: the columns, the implicit GEMMs'
    border masks and the reduction at their extreme."""
    inputs = make_inputs(1, 5, 6, 1, 1, 3, 3, dtype=torch.float32, device=device, seed=21, bias=True, noise="pixel")
    check_against_reference(inputs, impl, torch.float32, activation="lrelu")


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dtypes(impl, dtype, device, poison_outputs):
    inputs = make_inputs(2, 24, 20, 8, 8, 4, 3, dtype=dtype, device=device, seed=7, bias=True, noise="pixel")
    check_against_reference(inputs, impl, dtype, activation="lrelu")


@pytest.mark.gpu
@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(8, 256, 256, 16, 16, 8, 3), (4, 128, 64, 64, 64, 4, 3), (4, 512, 3, 32, 32, 1, 1),
                                   (4, 96, 160, 4, 4, 8, 3)])
def test_gpu_large_shapes(impl, dtype, shape, poison_outputs, monkeypatch):
    B, Cin, Cout, H, W, N, k = shape
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)   # what users get: Triton's fp32 in TF32
    inputs = make_inputs(B, Cin, Cout, H, W, N, k, dtype=dtype, device="cuda", seed=sum(shape), bias=True,
                         noise="pixel")
    check_against_reference(inputs, impl, dtype, activation="lrelu", clamp=256.0)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_params"])
def test_non_contiguous_inputs(impl, layout, device, poison_outputs):
    inputs = make_inputs(3, 6, 5, 7, 9, 3, 3, dtype=torch.float32, device=device, seed=3, bias=True, noise="pixel")
    if layout == "channels_last":
        inputs["x"] = inputs["x"].to(memory_format=torch.channels_last)
        assert not inputs["x"].is_contiguous()
    elif layout == "sliced":
        inputs["x"] = torch.randn(3, 12, 9, 20, device=device)[:, ::2, 1:8, 1:10]
        assert not inputs["x"].is_contiguous()
    else:
        inputs["style"] = inputs["style"].t().contiguous().t()
        inputs["select_logits"] = inputs["select_logits"].t().contiguous().t()
        inputs["weight_bank"] = inputs["weight_bank"].transpose(1, 2).contiguous().transpose(1, 2)
        inputs["noise"] = inputs["noise"].expand(3, 1, 7, 9)
        assert not inputs["weight_bank"].is_contiguous()
    check_against_reference(inputs, impl, torch.float32, activation="lrelu")


@pytest.mark.parametrize("impl", ["ref"] + FAST_IMPLS)
def test_empty_batch(impl, device):
    inputs = make_inputs(1, 4, 6, 5, 5, 2, 3, dtype=torch.float32, device=device, seed=0, bias=True)
    leaves = {k: v[:0].clone().requires_grad_() if k in ("x", "select_logits", "style") else
              (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    with forced_path(impl) as backend_impl:
        y = gk.adaptive_modconv2d(leaves["x"], leaves["weight_bank"], leaves["select_logits"], leaves["style"],
                                  leaves["bias"], activation="lrelu", impl=backend_impl)
        assert y.shape == (0, 6, 5, 5)
        y.sum().backward()
    assert torch.equal(leaves["weight_bank"].grad, torch.zeros_like(leaves["weight_bank"]))
    assert leaves["x"].grad.shape == (0, 4, 5, 5)


SWEEP_CASES = 60


@pytest.mark.parametrize("impl", ["torch", "triton", CUDA_IMPL])
@pytest.mark.parametrize("case", range(SWEEP_CASES))
def test_random_shape_sweep(case, impl, device, poison_outputs):
    """Seeded sweep over random shapes and options through each fast path; every 4th case in fp16. The
    Triton cases rotate through the strategies and GEMM forms."""
    if impl == "triton":
        impl = TRITON_PATHS[case % len(TRITON_PATHS)]
    rng = random.Random(1234 + case)
    dtype = torch.float16 if case % 4 == 3 else torch.float32
    B, Cin, Cout = rng.randint(1, 4), rng.randint(1, 40), rng.randint(1, 40)
    H, W, N, k = rng.randint(1, 12), rng.randint(1, 12), rng.randint(1, 9), rng.choice([1, 1, 3, 3, 5, 7])
    inputs = make_inputs(B, Cin, Cout, H, W, N, k, dtype=dtype, device=device, seed=case,
                         bias=rng.random() < 0.5, noise=rng.choice([None, "pixel", "full"]))
    options = dict(demodulate=rng.random() < 0.7, activation=rng.choice([None, "lrelu"]),
                   clamp=rng.choice([None, None, 0.8]))
    if impl == "torch:activations" and options["demodulate"] and Cin * k * k == 1:
        # The candidate refuses what it cannot compute accurately, with the reason; impl="torch" takes bmm there.
        with pytest.raises(gk.BackendUnavailableError, match="demodulation cancels the filter's scale"):
            run(inputs, impl, torch.ones(B, Cout, H, W, dtype=dtype), **options)
        return
    check_against_reference(inputs, impl, dtype, **options)


@pytest.mark.parametrize("form", amc.TORCH_FORMS)
@pytest.mark.parametrize("case", range(0, SWEEP_CASES, 3))
def test_torch_composite_every_form(case, form):
    """impl="torch" picks a form per call; each form is a candidate of its own, run over the sweep's shapes."""
    test_random_shape_sweep(case, f"torch:{form}", "cpu", None)


def test_torch_composite_forms_on_cpu():
    """Activations for D's 4x4 predictors and 16x16 layers, G's 4x4 layer and every 1x1 filter (to-RGB,
    D's 1-output heads); batched matmuls up to 64 pixels otherwise; the grouped conv for G's multi-filter
    16x16 layer and 3x3 layers at 32x32."""
    form = amc.torch_form
    assert form((64, 64, 4, 4), (1, 64, 64, 3, 3)) == "activations"
    assert form((16, 64, 4, 4), (4, 64, 64, 3, 3)) == "activations"
    assert form((32, 48, 16, 16), (1, 48, 48, 3, 3)) == "activations"
    assert form((8, 64, 16, 16), (2, 48, 64, 3, 3)) == "grouped"
    assert form((16, 32, 32, 32), (1, 48, 32, 3, 3)) == "grouped"
    assert form((4, 32, 32, 32), (1, 3, 32, 1, 1)) == "activations"
    assert form((128, 65, 2, 2), (1, 1, 65, 1, 1)) == "activations"
    assert form((4, 32, 16, 16), (4, 32, 32, 3, 3)) == "grouped"
    assert form((8, 32, 8, 8), (8, 32, 32, 3, 3)) == "bmm"


def test_torch_composite_forms_on_cuda():
    """On CUDA the cost model picks: per-sample weights through batched matmuls at GigaGAN's 3x3 layers
    (predicted 2.4 against 7.4 ms forward + backward at lowres 8x8), activations for 1x1 filters."""
    form = amc.torch_form
    assert form((32, 1024, 8, 8), (8, 1024, 1024, 3, 3), "cuda") == "bmm"
    assert form((32, 1024, 16, 16), (8, 1024, 1024, 3, 3), "cuda") == "bmm"
    assert form((16, 256, 64, 64), (4, 256, 256, 3, 3), "cuda") == "bmm"
    assert form((16, 256, 64, 64), (4, 3, 256, 1, 1), "cuda") == "activations"


def test_torch_composite_never_builds_per_sample_weights():
    """N = 1 at 4x4 (D's predictors): the "torch" path keeps nothing of size B x Cout x Cin x k x k,
    forward or saved for backward; the ref keeps several such tensors."""
    B, Cin, Cout, k = 16, 24, 20, 3
    inputs = make_inputs(B, Cin, Cout, 4, 4, 1, k, dtype=torch.float32, device="cpu", seed=3, bias=True)
    per_sample = B * Cout * Cin * k * k

    def saved_sizes(impl):
        sizes = []
        leaves = [inputs[n].clone().requires_grad_() for n in ("x", "weight_bank", "select_logits", "style", "bias")]
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            gk.adaptive_modconv2d(*leaves, activation="lrelu", impl=impl)
        return sizes

    assert max(saved_sizes("ref")) >= per_sample          # the check can see the naive path's weights
    assert max(saved_sizes("torch")) < per_sample


@pytest.mark.parametrize("impl", ["ref"] + FAST_IMPLS)
def test_second_order_gradients_r1(impl, device):
    """R1: gradient of D's output wrt the input, squared, backpropagated into every parameter."""
    inputs = make_inputs(2, 5, 4, 6, 6, 3, 3, dtype=torch.float32, device=device, seed=5, bias=True, noise="pixel")

    def r1_grads(impl, dtype):
        leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in inputs.items()}
        with forced_path(impl) as backend_impl:
            y = gk.adaptive_modconv2d(leaves["x"], leaves["weight_bank"], leaves["select_logits"], leaves["style"],
                                      leaves["bias"], noise=leaves["noise"], activation="lrelu", impl=backend_impl)
            (gx,) = torch.autograd.grad((y * y.detach().cos()).sum(), leaves["x"], create_graph=True)
            penalty = gx.square().sum()
            names = ["x", "weight_bank", "select_logits", "style", "bias"]
            return dict(zip(names, torch.autograd.grad(penalty, [leaves[n] for n in names])))

    got = r1_grads(impl, torch.float32)
    want = r1_grads("ref", torch.float64)
    for name in want:
        assert_close(got[name], want[name], torch.float32, f"R1 d{name}", factor=4.0)


@pytest.mark.parametrize("form", amc.TORCH_FORMS)
def test_torch_composite_double_backward_gradgradcheck(form, device):
    """Every form of the composite differentiates to second order exactly (R1 of a plain-torch model)."""
    inputs = make_inputs(2, 3, 2, 4, 4, 2, 3, dtype=torch.float64, device=device, seed=9, bias=True)
    args = [inputs[k].requires_grad_() for k in ("x", "weight_bank", "select_logits", "style", "bias")]
    fn = lambda *a: gk.adaptive_modconv2d(*a, activation="lrelu", impl=f"torch:{form}")  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, args)


def test_reference_double_backward_gradgradcheck(device):
    inputs = make_inputs(2, 3, 2, 4, 4, 2, 3, dtype=torch.float64, device=device, seed=9, bias=True)
    args = [inputs[k].requires_grad_() for k in ("x", "weight_bank", "select_logits", "style", "bias")]
    fn = lambda *a: gk.adaptive_modconv2d(*a, activation="lrelu", impl="ref")  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("strategy, keep", [("weights", True), ("weights", False), ("fused", False)])
def test_opcheck_custom_ops(strategy, keep, device):
    inputs = make_inputs(2, 5, 4, 6, 7, 3, 3, dtype=torch.float32, device=device, seed=2, bias=True, noise="pixel")
    x, bank, logits, style, bias, noise = (inputs[k] for k in INPUT_NAMES)
    fwd_args = (x.requires_grad_(), bank.requires_grad_(), logits.requires_grad_(), style.requires_grad_(),
                bias.requires_grad_(), noise, True, 1e-8, "lrelu", math.sqrt(2), 0.9, True, strategy, keep)
    torch.library.opcheck(triton_op.triton_forward_op, fwd_args)
    with torch.no_grad():
        y, lin, d, kept = triton_op.triton_forward_op(*fwd_args)
    assert kept.shape == ((2, 4, 5 * 9) if keep else (0,))
    bwd_args = (torch.randn_like(y), x.detach(), bank.detach(), logits.detach(), style.detach(), bias.detach(),
                noise, lin, d, kept, True, "lrelu", math.sqrt(2), 0.9, strategy)
    torch.library.opcheck(triton_op.triton_backward_op, bwd_args)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", [CUDA_IMPL])
def test_opcheck_cuda_ops(impl):
    """The CUDA C++ ops with the fake kernels and autograd registered from Python, with the weights kept and not."""
    inputs = make_inputs(2, 5, 4, 6, 7, 3, 3, dtype=torch.float32, device="cuda", seed=2, bias=True, noise="pixel")
    x, bank, logits, style, bias, noise = (inputs[k] for k in INPUT_NAMES)
    op = torch.ops.gigagan_kernels_cuda.adaptive_modconv2d_forward
    for workspace in (2**20, 100):
        fwd_args = (x.requires_grad_(), bank.requires_grad_(), logits.requires_grad_(), style.requires_grad_(),
                    bias.requires_grad_(), noise, True, 1e-8, "lrelu", math.sqrt(2), 0.9, True, workspace, True)
        torch.library.opcheck(op, fwd_args)
        with torch.no_grad():
            y, lin, d, kept = op(*fwd_args)
        assert kept.shape == ((2, 4, 5 * 9) if workspace > 100 else (0,))
        bwd_args = (torch.randn_like(y), x.detach(), bank.detach(), logits.detach(), style.detach(), bias.detach(),
                    noise, lin, d, kept, True, "lrelu", math.sqrt(2), 0.9, workspace)
        torch.library.opcheck(torch.ops.gigagan_kernels_cuda.adaptive_modconv2d_backward, bwd_args)


# The CUDA path's own tiling: sample chunks under the workspace (both GEMM forms), reductions over more samples
# than one launch takes (the bank gradient accumulates in fp32), and rows that are not 16-byte multiples.
@pytest.mark.gpu
@pytest.mark.parametrize("impl", [CUDA_IMPL])
@pytest.mark.parametrize("shape, dtype, workspace_samples", [
    ((5, 6, 7, 2, 3, 3, 3), torch.float32, 2.5),      # bmm (P <= Cout), Cin*k*k = 54: scalar rows, 3 chunks
    ((5, 8, 7, 2, 3, 3, 3), torch.float16, 12),       # bmm, 16-byte rows, weights kept
    ((5, 8, 4, 6, 5, 5, 3), torch.bfloat16, 2.5),     # columns larger than the weights (P > Cout), rebuilt
    ((35, 16, 12, 3, 3, 12, 1), torch.float16, 64),   # 2 reduction launches (32 + 3 samples), N = 12, k = 1
    ((34, 24, 16, 4, 4, 20, 3), torch.float32, 64),   # N = 20 (the 32-filter tiles), 2 launches
])
def test_cuda_weights_tiles(impl, shape, dtype, workspace_samples, monkeypatch, poison_outputs):
    B, Cin, Cout, H, W, N, k = shape
    element = torch.empty((), dtype=dtype).element_size()
    per_sample = (Cout * Cin * k * k + Cin * k * k * H * W + Cout * H * W) * element
    monkeypatch.setenv(amc.WORKSPACE_ENV, str(workspace_samples * per_sample / 2**20))
    forward_chunk, backward_chunk, _ = cuda.cuda_plan((B, Cin, H, W), (N, Cout, Cin, k, k), element,
                                                      needs_grad=True)
    assert workspace_samples > 10 or (B % forward_chunk and B % backward_chunk)
    inputs = make_inputs(*shape, dtype=dtype, device="cuda", seed=sum(shape), bias=True, noise="pixel")
    check_against_reference(inputs, "cuda", dtype, activation="lrelu", clamp=2.0)


@pytest.mark.skipif(not backend.cuda_extension_has(amc.OP_NAME), reason="the CUDA extension is not built")
def test_cuda_plan_follows_the_weights_budget():
    """csrc's plan_weights is the Triton plan of the batched-GEMM form, and the weight-gradient reduction's tiles
    cover every channel and output channel."""
    from gigagan_kernels import _C
    from gigagan_kernels import adaptive_modconv_triton as kernels
    rng = random.Random(5)
    for _ in range(200):
        B, Cin, Cout, H, W = (rng.randint(1, 64) for _ in range(5))
        k, N, element = rng.choice((1, 3, 5)), rng.randint(1, 32), rng.choice((2, 4))
        workspace, needs_grad = rng.randint(1, 2**24), rng.random() < 0.7
        plan = cuda.cuda_plan((B, Cin, H, W), (N, Cout, Cin, k, k), element, needs_grad=needs_grad,
                              workspace=workspace)
        expected = kernels.plan_weights((B, Cin, H, W), (N, Cout, Cin, k, k), element, needs_grad=needs_grad,
                                        workspace=workspace, gemm="bmm")
        assert plan == (expected.forward_chunk, expected.backward_chunk, expected.keep)
        for vectorized in (False, True):
            E, channels, outputs, channel_blocks, output_blocks = _C.modconv_reduce_tiles(N, Cout, Cin, k * k,
                                                                                          vectorized, element)
            assert E >= 1 and (not vectorized or channels % 8 == 0 or channels == Cin)
            assert channel_blocks * channels >= Cin > (channel_blocks - 1) * channels
            assert output_blocks * outputs >= Cout > (output_blocks - 1) * outputs


@pytest.mark.parametrize("impl", ["auto", CUDA_IMPL])
def test_torch_compile_fullgraph(impl, device):
    torch.manual_seed(0)
    layer = AdaptiveModConv2d(6, 8, 3, num_filters=3, style_dim=5, activation="lrelu", use_noise=False,
                              impl=impl).to(device)
    x, w = torch.randn(2, 6, 5, 5, device=device, requires_grad=True), torch.randn(2, 5, device=device)
    eager = layer(x, w)
    compiled = torch.compile(layer, fullgraph=True)
    out = compiled(x, w)
    assert_close(out, eager.detach(), torch.float32, "compiled y")
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    (gx_eager,) = torch.autograd.grad(eager.square().sum(), x)
    assert_close(gx, gx_eager, torch.float32, "compiled dx")


@pytest.mark.parametrize("impl", ["ref"] + FAST_IMPLS)
def test_module_matches_functional_and_trains(impl, device):
    torch.manual_seed(1)
    with forced_path(impl) as backend_impl:
        layer = AdaptiveModConv2d(6, 5, 3, num_filters=4, style_dim=7, activation="lrelu", use_noise=True,
                                  impl=backend_impl).to(device)
        with torch.no_grad():
            layer.noise_strength.fill_(0.3)
            layer.bias.normal_()
        assert torch.allclose(layer.affine.bias.cpu(), torch.ones(6))  # style bias init 1
        x, w = torch.randn(3, 6, 8, 8, device=device), torch.randn(3, 7, device=device)
        noise = torch.randn(3, 1, 8, 8, device=device)
        y = layer(x, w, noise=noise)
        y_ref = gk.adaptive_modconv2d_ref(x.double(), layer.weight_bank.double(), layer.select(w).double(),
                                          layer.affine(w).double() * layer.weight_gain, layer.bias.double(),
                                          noise=noise.double() * 0.3, activation="lrelu")
        assert_close(y, y_ref, torch.float32, "module y")
        y.square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("impl", ["ref"] + FAST_IMPLS)
def test_one_output_layers_get_grads_with_their_parameters_strides(impl, device):
    """A [1, 1, Cin, 1, 1] bank's grad comes back from autograd with other strides; DDP's gradient
    buckets warn about that, so the modules give each grad its parameter's strides."""
    with forced_path(impl) as backend_impl:
        bank_layer = AdaptiveModConv2d(65, 1, 1, 1, 8, demodulate=False, activation=None, impl=backend_impl).to(device)
        conv = EqualizedConv2d(65, 1, 1, impl=backend_impl).to(device)
        x, w = torch.randn(4, 65, 4, 4, device=device), torch.randn(4, 8, device=device)
        (bank_layer(x, w).sum() + conv(x).sum()).backward()
    for p in (bank_layer.weight_bank, conv.weight):
        assert p.grad.stride() == p.stride()
    expected = x.sum(dim=(0, 2, 3)) / math.sqrt(65)           # d sum(conv(x)) / dW = sum of x, equalised
    assert_close(conv.weight.grad.flatten(), expected.double(), torch.float32, "conv dW")


# ----------------------------------------------------------------------------------------------
# The "weights" strategy's plan: chunks under the workspace, kept or rebuilt weights, reduction groups.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gemm", ["bmm", "implicit"])
@pytest.mark.parametrize("workspace_samples, keep", [(2.5, False), (3.5, False), (12, True)])
def test_weights_strategy_in_chunks(gemm, workspace_samples, keep, device, monkeypatch, poison_outputs):
    """A workspace of a few samples' tensors splits B = 5 into chunks that do not divide it; a larger one keeps
    the forward's weights for the backward. Both against the float64 oracle."""
    from gigagan_kernels import adaptive_modconv_triton as kernels
    B, Cin, Cout, H, W, N, k = 5, 6, 7, 2, 3, 3, 3         # weights (the kept tensor) dominate columns
    per_sample = (Cout * Cin * k * k + (Cin * k * k * H * W + Cout * H * W if gemm == "bmm" else 0)) * 4
    monkeypatch.setenv(amc.WORKSPACE_ENV, str(workspace_samples * per_sample / 2**20))
    plan = kernels.plan_weights((B, Cin, H, W), (N, Cout, Cin, k, k), 4, needs_grad=True, gemm=gemm)
    assert plan.keep == keep
    assert keep or (B % plan.forward_chunk and B % plan.backward_chunk)
    inputs = make_inputs(B, Cin, Cout, H, W, N, k, dtype=torch.float32, device=device, seed=11, bias=True,
                         noise="pixel")
    check_against_reference(inputs, f"triton:weights-{gemm}", torch.float32, activation="lrelu")


def test_weights_strategy_reduction_in_groups(device, monkeypatch, poison_outputs):
    """More samples than one reduction launch takes: the bank gradient accumulates over launches in fp32."""
    monkeypatch.setattr(triton_weights, "reduce_group", lambda bank_shape: 2)
    inputs = make_inputs(5, 6, 5, 4, 4, 3, 3, dtype=torch.float16, device=device, seed=12, bias=True, noise="full")
    check_against_reference(inputs, "triton:weights-bmm", torch.float16, activation="lrelu")


# ----------------------------------------------------------------------------------------------
# The "fused" strategy's tiling: groups of samples that share a bank read and one mix, pixel, channel and
# reduction tiles, each with a partial last tile.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, dtype, demodulate", [
    # 3 forward groups of 8 (the last of 3), 2 bank-gradient groups of 16; 2 pixel tiles (P = 99); 2 Cout
    # and Cin tiles; several reduction tiles.
    ((19, 37, 37, 9, 11, 3, 3), torch.float32, True),
    # Groups of 8 in fp16: the mix's second 8 columns carry a's residual; 8x8 takes the p64 tile.
    ((9, 7, 33, 8, 8, 8, 3), torch.float16, True),
    # N = 20 takes the N_PAD 32 tables; 4x4 takes the p16 tile and groups of 16; no demodulation.
    ((18, 9, 40, 4, 4, 20, 3), torch.float16, False),
])
def test_fused_strategy_tiles(shape, dtype, demodulate, device, poison_outputs):
    from gigagan_kernels import adaptive_modconv_triton as kernels
    B, Cin, Cout, H, W, N, k = shape
    cfg = kernels.pick_pixel_config(kernels.FUSED_FWD_CONFIGS[kernels.bank_pad(N)], H * W)
    assert B > cfg["GROUP"] and B % cfg["GROUP"]
    assert Cout > cfg["BLOCK_O"] or H * W > cfg["BLOCK_P"]
    inputs = make_inputs(*shape, dtype=dtype, device=device, seed=sum(shape), bias=True, noise="pixel")
    check_against_reference(inputs, "triton:fused", dtype, activation="lrelu", demodulate=demodulate)


@pytest.mark.parametrize("tiles", ["stages3", "o64", "r16"])
def test_fused_strategy_sweep_tiles(tiles, device, poison_outputs):
    """Every alternative the GPU check sweeps (FUSED_SWEEP) against the float64 oracle, across two groups and (o64)
    two pixel tiles per sample."""
    from gigagan_kernels import adaptive_modconv_triton as kernels
    from benchmarks.bench_adaptive_modconv import FUSED_SWEEP_PROVIDERS
    assert FUSED_SWEEP_PROVIDERS == tuple(f"triton_fused@{name}" for name in kernels.FUSED_SWEEP)
    inputs = make_inputs(10, 6, 40, 8, 8, 5, 3, dtype=torch.float16, device=device, seed=31, bias=True, noise="pixel")
    with kernels.use_fused_tiles(tiles):
        fwd, _, dbank = kernels.fused_configs(5, 64)
        assert (fwd, dbank) == (kernels.FUSED_SWEEP[tiles]["fwd"], kernels.FUSED_SWEEP[tiles]["dbank"])
        check_against_reference(inputs, "triton:fused", torch.float16, activation="lrelu")
    assert kernels.fused_configs(5, 64)[0] == kernels.FUSED_FWD_CONFIGS[16]["p64"]
    with pytest.raises(ValueError, match="use_fused_tiles"):
        with kernels.use_fused_tiles("huge"):
            pass


def test_fused_strategy_int32_limit():
    from gigagan_kernels import adaptive_modconv_triton as kernels
    assert kernels.fused_unsupported((32, 1024, 8, 8), (8, 1024, 1024, 3, 3)) is None
    assert "int32" in kernels.fused_unsupported((32, 1024, 512, 512), (4, 1024, 1024, 3, 3))


def test_plan_weights_budget(monkeypatch):
    """GigaGAN's 1024-channel 8x8 layer at B = 32 (bf16): the 604 MB of weights are kept under the default
    workspace and the backward runs in one chunk; under 512 MiB they are rebuilt, in two chunks."""
    from gigagan_kernels import adaptive_modconv_triton as kernels
    monkeypatch.delenv(amc.WORKSPACE_ENV, raising=False)
    shape, bank = (32, 1024, 8, 8), (8, 1024, 1024, 3, 3)
    plan = kernels.plan_weights(shape, bank, 2, needs_grad=True)
    assert plan == kernels.WeightsPlan("bmm", 32, 32, True)
    assert not kernels.plan_weights(shape, bank, 2, needs_grad=False).keep
    monkeypatch.setenv(amc.WORKSPACE_ENV, "512")
    plan = kernels.plan_weights(shape, bank, 2, needs_grad=True)
    assert plan == kernels.WeightsPlan("bmm", 16, 16, False)
    assert kernels.plan_weights((16, 256, 64, 64), (4, 256, 256, 3, 3), 2, needs_grad=True).gemm == "implicit"
    for bad in ("0", "-3", "lots"):
        monkeypatch.setenv(amc.WORKSPACE_ENV, bad)
        with pytest.raises(ValueError, match=amc.WORKSPACE_ENV):
            amc.workspace_bytes()


def test_triton_strategy_choice(monkeypatch):
    """The cost model picks "weights" at GigaGAN's shapes for training and ranks a forward alone on forward time;
    a bank too large for one strategy's int32 offsets falls back to the other (forcing it there is an error, and
    so is a call neither can take); use_strategy and the environment variable force one."""
    monkeypatch.delenv(amc.STRATEGY_ENV, raising=False)
    for x_shape, bank_shape in (((32, 1024, 8, 8), (8, 1024, 1024, 3, 3)), ((32, 1024, 16, 16), (8, 1024, 1024, 3, 3)),
                                ((16, 256, 64, 64), (4, 256, 256, 3, 3))):
        assert amc.triton_strategy(x_shape, bank_shape) == "weights"
        assert amc.auto_cuda_order(x_shape, bank_shape)[0] == "triton"
        # A forward alone (no input needs a gradient) is ranked on forward time.
        fwd = {st: cost_model.modconv_seconds(f"triton_{st}", x_shape, bank_shape, "fwd") for st in amc.STRATEGIES}
        assert amc.triton_strategy(x_shape, bank_shape, "fwd") == min(fwd, key=fwd.get)
    assert amc.triton_strategy((32, 1024, 8, 8), (8, 1024, 1024, 3, 3), "fwd") == "fused"
    huge = (2, 4096, 4096, 3, 3)
    assert amc.triton_strategy((1, 4096, 4, 4), huge) == "fused"
    with amc.use_strategy("weights"), pytest.raises(ValueError, match="exceed the 'weights' strategy"):
        amc.triton_strategy((1, 4096, 4, 4), huge)
    with amc.use_strategy("fused"), pytest.raises(ValueError, match="exceeds the 'fused' strategy"):
        amc.triton_strategy((64, 4096, 256, 256), (4, 64, 4096, 3, 3))
    with pytest.raises(ValueError, match="no Triton strategy can run.*impl='torch'"):
        amc.triton_strategy((64, 4096, 256, 256), huge)
    with amc.use_strategy("fused"):
        assert amc.triton_strategy((32, 1024, 8, 8), (8, 1024, 1024, 3, 3)) == "fused"
    monkeypatch.setenv(amc.STRATEGY_ENV, "fused")
    assert amc.triton_strategy((32, 1024, 8, 8), (8, 1024, 1024, 3, 3)) == "fused"
    monkeypatch.setenv(amc.STRATEGY_ENV, "fastest")
    with pytest.raises(ValueError, match=amc.STRATEGY_ENV):
        amc.triton_strategy((32, 1024, 8, 8), (8, 1024, 1024, 3, 3))
    with pytest.raises(ValueError, match=r"use_strategy\(strategy\)"):
        with amc.use_strategy("bmm"):
            pass


def test_float64_never_reaches_a_kernel(device, monkeypatch):
    """The kernels take fp32 / fp16 / bf16: auto runs float64 on the torch composite, an explicit fused impl
    raises naming the dtype."""
    monkeypatch.delenv("GIGAGAN_KERNELS_IMPL", raising=False)
    inputs = make_inputs(2, 3, 4, 5, 5, 2, 3, dtype=torch.float64, device=device, seed=1)
    args = [inputs[k] for k in ("x", "weight_bank", "select_logits", "style")]
    y = gk.adaptive_modconv2d(*args)
    assert y.dtype == torch.float64
    assert_close(y, gk.adaptive_modconv2d_ref(*args), torch.float32, "float64 auto")
    with pytest.raises(gk.BackendUnavailableError, match="take float32, float16, bfloat16 inputs, not float64"):
        gk.adaptive_modconv2d(*args, impl="triton")


# ----------------------------------------------------------------------------------------------
# Bad input: a ValueError naming the argument, before any kernel launch.
# ----------------------------------------------------------------------------------------------
def _good(device):
    return make_inputs(2, 4, 3, 5, 5, 2, 3, dtype=torch.float32, device=device, seed=0, bias=True)


@pytest.mark.parametrize("mutate, match", [
    (lambda i: i.update(x=i["x"][0]), r"x must be 4-D .*got shape \(4, 5, 5\)"),
    (lambda i: i.update(weight_bank=i["weight_bank"][0]), r"weight_bank must be 5-D"),
    (lambda i: i.update(select_logits=i["select_logits"][0]), r"select_logits must be 2-D"),
    (lambda i: i.update(style=i["style"][None]), r"style must be 2-D"),
    (lambda i: i.update(x=torch.randn(2, 5, 5, 5)), r"weight_bank has Cin=4 but x has Cin=5"),
    (lambda i: i.update(style=torch.randn(2, 6)), r"style must have shape \[B, Cin\] = \(2, 4\), got \(2, 6\)"),
    (lambda i: i.update(select_logits=torch.randn(2, 3)),
     r"select_logits must have shape \[B, N\] = \(2, 2\), got \(2, 3\)"),
    (lambda i: i.update(select_logits=torch.randn(3, 2)),
     r"select_logits must have shape \[B, N\] = \(2, 2\), got \(3, 2\)"),
    (lambda i: i.update(weight_bank=torch.randn(2, 3, 4, 2, 2)), r"odd k, got k x k = 2 x 2"),
    (lambda i: i.update(weight_bank=torch.randn(2, 3, 4, 3, 1)), r"square with odd k, got k x k = 3 x 1"),
    (lambda i: i.update(bias=torch.randn(4)), r"bias must have shape \[Cout\] = \(3,\), got \(4,\)"),
    (lambda i: i.update(noise=torch.randn(2, 2, 5, 5)), r"noise must broadcast to the output shape \(2, 3, 5, 5\)"),
    (lambda i: i.update(style=i["style"].double()), r"style has dtype torch.float64 but x has dtype torch.float32"),
    (lambda i: i.update(bias=i["bias"].half()), r"bias has dtype torch.float16"),
    (lambda i: i.update(x=i["x"].long()), r"x must be floating point"),
    (lambda i: i.update(style=i["style"].to("meta")), r"style is on meta but x is on"),
])
def test_bad_input_raises_naming_argument(mutate, match, device):
    inputs = _good("cpu")
    mutate(inputs)
    with pytest.raises(ValueError, match=match):
        gk.adaptive_modconv2d(inputs["x"], inputs["weight_bank"], inputs["select_logits"], inputs["style"],
                              inputs["bias"], noise=inputs["noise"], impl="ref")


@pytest.mark.parametrize("kwargs, match", [
    (dict(activation="relu"), r"activation must be one of"),
    (dict(clamp=-1.0), r"clamp must be >= 0"),
    (dict(eps=0.0), r"eps must be > 0"),
    (dict(gain=float("nan")), r"gain must be finite"),
])
def test_bad_options_raise(kwargs, match):
    inputs = _good("cpu")
    with pytest.raises(ValueError, match=match):
        gk.adaptive_modconv2d(inputs["x"], inputs["weight_bank"], inputs["select_logits"], inputs["style"], **kwargs)


def test_too_many_filters_for_triton(device):
    inputs = make_inputs(1, 2, 2, 3, 3, 33, 1, dtype=torch.float32, device=device, seed=0)
    with pytest.raises(gk.BackendUnavailableError, match=r"weight_bank has N=33 filters; the triton kernels support"):
        gk.adaptive_modconv2d(inputs["x"], inputs["weight_bank"], inputs["select_logits"], inputs["style"],
                              impl="triton")


@pytest.mark.parametrize("impl", ["ref", "torch", "triton", CUDA_IMPL])
@pytest.mark.parametrize("B, Cin, Cout, H, W", [(2, 3, 0, 5, 5), (2, 3, 4, 0, 5), (2, 3, 4, 5, 0), (0, 3, 4, 5, 5)])
def test_zero_size_outputs_agree_on_every_backend(impl, B, Cin, Cout, H, W, device):
    """No output channels or no pixels: an empty y of the right shape, still attached to every input."""
    leaves = [torch.randn(*s, device=device, requires_grad=True)
              for s in ((B, Cin, H, W), (2, Cout, Cin, 3, 3), (B, 2), (B, Cin))]
    bias = torch.randn(Cout, device=device, requires_grad=True)
    y = gk.adaptive_modconv2d(*leaves, bias=bias, activation="lrelu", impl=impl)
    assert y.shape == (B, Cout, H, W)
    grads = torch.autograd.grad(y.sum(), leaves + [bias], allow_unused=True)
    for g, t in zip(grads, leaves + [bias]):
        assert g is None or (g.shape == t.shape and not g.any())


@pytest.mark.parametrize("impl", ["ref", "torch", "triton", CUDA_IMPL])
def test_no_input_channels_is_a_named_error_on_every_backend(impl, device):
    x, bank = torch.randn(2, 0, 5, 5, device=device), torch.randn(2, 4, 0, 3, 3, device=device)
    with pytest.raises(ValueError, match=r"x needs at least one input channel, got shape \(2, 0, 5, 5\)"):
        gk.adaptive_modconv2d(x, bank, torch.randn(2, 2, device=device), torch.randn(2, 0, device=device), impl=impl)


# ----------------------------------------------------------------------------------------------
# One memory budget for the kept per-sample weights, planned once (gigagan_kernels/memory.py).
# ----------------------------------------------------------------------------------------------
def _weights_layer_call(inputs, impl="triton:weights"):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    y = gk.adaptive_modconv2d(leaves["x"], leaves["weight_bank"], leaves["select_logits"], leaves["style"],
                              leaves["bias"], activation="lrelu", impl=impl)
    grads = torch.autograd.grad(y.square().sum(), [leaves[k] for k in ("x", "weight_bank", "select_logits", "style")])
    return y.detach(), grads


def test_memory_plan_counts_every_call_against_one_budget(device, monkeypatch):
    """Three calls of one layer shape and one of another inside tune(): the first key's three calls fit the budget
    and keep their weights, the second no longer fits and rebuilds; decided once, when tune returns, and the same
    afterwards. Kept or rebuilt, the gradients agree."""
    from gigagan_kernels import memory
    a = make_inputs(2, 4, 6, 3, 3, 2, 3, dtype=torch.float32, device=device, seed=41, bias=True)
    b = make_inputs(2, 4, 8, 3, 3, 2, 3, dtype=torch.float32, device=device, seed=42, bias=True)
    per_call = {"a": 2 * 6 * 4 * 9 * 4, "b": 2 * 8 * 4 * 9 * 4}
    budget = 3 * per_call["a"] + per_call["b"] // 2                  # the three a calls fit, b does not
    monkeypatch.setenv(amc.WORKSPACE_ENV, str(2 * budget / 2**20))
    assert memory.budget_bytes() in (budget, budget - 1)
    kept = []
    original = memory.keep_weights
    monkeypatch.setattr(memory, "keep_weights", lambda key, n: kept.append(original(key, n)) or kept[-1])

    def step():
        return [_weights_layer_call(a) for _ in range(3)] + [_weights_layer_call(b)]

    during = gk.tune(step)
    assert kept == [False] * 4                                      # the tuning run rebuilds, and counts
    report = memory.plan_report()
    assert [(calls, n, keep) for _, calls, n, keep in report] == [(3, per_call["a"], True), (1, per_call["b"], False)]
    assert memory.kept_bytes() == 3 * per_call["a"] <= memory.budget_bytes()
    kept.clear()
    after = step()
    assert kept == [True, True, True, False]                        # the plan, not what is held now
    for (y0, g0), (y1, g1) in zip(during, after):
        assert torch.allclose(y0, y1, atol=1e-6)
        for u, v in zip(g0, g1):
            assert torch.allclose(u, v, rtol=1e-5, atol=1e-6)


def test_memory_plan_outside_tune_decides_each_key_once(device, monkeypatch):
    """A key first seen outside tune() is planned as called once per step, on the spot, and keeps that decision:
    a later key that does not fit rebuilds even when the first key's weights are long freed."""
    from gigagan_kernels import memory
    a = make_inputs(2, 4, 6, 3, 3, 2, 3, dtype=torch.float32, device=device, seed=43, bias=True)
    b = make_inputs(2, 4, 8, 3, 3, 2, 3, dtype=torch.float32, device=device, seed=44, bias=True)
    budget = 2 * 6 * 4 * 9 * 4 + 100
    monkeypatch.setenv(amc.WORKSPACE_ENV, str(2 * budget / 2**20))
    for _ in range(2):
        _weights_layer_call(a)
        _weights_layer_call(b)
    assert [keep for *_, keep in memory.plan_report()] == [True, False]
    with torch.no_grad():                                           # a forward alone keeps nothing, plans nothing
        gk.adaptive_modconv2d(a["x"], a["weight_bank"], a["select_logits"], a["style"], impl="triton:weights")
    assert len(memory.plan_report()) == 2
    # Timing runs are not the model's calls: nothing is planned inside them.
    with memory.not_the_model():
        _weights_layer_call(make_inputs(2, 4, 5, 3, 3, 2, 3, dtype=torch.float32, device=device, seed=45, bias=True))
    assert len(memory.plan_report()) == 2


# ----------------------------------------------------------------------------------------------
# torch:gram: the activations as one GEMM a pass, d from the bank's Gram matrices (fp32 contraction, fp64 combine).
# Its forward and every gradient against float64 run in the sweeps above (TORCH_FORMS), its second order in the
# gradgradcheck; here the conditioning: nearly cancelling filters against float64, the stated bound, and the
# eligibility auto decides once per key at tuning time.
# ----------------------------------------------------------------------------------------------
def _cancelling_inputs(delta, device, seed=51):
    """Two filters whose mix nearly cancels for every sample: W1 = -(a0 / a1) W0 + delta R, so the mixed filter is
    a1 delta R while each a_n W_n is of order 1 (fp32 inputs; the exact values are theirs in float64)."""
    inputs = make_inputs(3, 6, 5, 4, 4, 2, 3, dtype=torch.float64, device=device, seed=seed, bias=True)
    logits = inputs["select_logits"][:1].expand(3, 2).clone()         # one selection for every sample
    a = torch.softmax(logits[0], 0)
    bank = inputs["weight_bank"].clone()
    bank[1] = -(a[0] / a[1]) * bank[0] + delta * torch.randn_like(bank[0]) / 8
    out = dict(inputs, select_logits=logits, weight_bank=bank)
    return {k: (v.float() if v is not None else None) for k, v in out.items()}


def _exact_demodulation(inputs, eps=1e-8):
    """d in float64 through the per-sample mixed filters (the reference's order)."""
    bank, logits, style = (inputs[k].double() for k in ("weight_bank", "select_logits", "style"))
    mixed = torch.einsum("bn,noiuv->boiuv", torch.softmax(logits, 1), bank) * style[:, None, :, None, None]
    return torch.rsqrt(mixed.square().sum(dim=(2, 3, 4)) + eps)


@pytest.mark.parametrize("delta", [1.0, 1e-1, 1e-2, 1e-3])
def test_gram_demodulation_meets_its_error_bound_on_cancelling_filters(delta, device):
    """The fp32 Gram form's d against float64, within the bound gram_demodulation states, on filters whose mix
    cancels to delta of its terms; well conditioned it is eligible, cancelling beyond the tolerance it is not."""
    from gigagan_kernels.ops.adaptive_modconv2d import torch_forms
    inputs = _cancelling_inputs(delta, device)
    a = torch.softmax(inputs["select_logits"], 1)
    d = torch_forms.gram_demodulation(inputs["weight_bank"], a, inputs["style"], 1e-8)[0]
    exact = _exact_demodulation(inputs)
    error = (d.double() - exact).abs() / exact
    bound = torch_forms.gram_error_bound(inputs["weight_bank"], inputs["select_logits"], inputs["style"])
    kappa = torch_forms.gram_cancellation(inputs["weight_bank"], inputs["select_logits"], inputs["style"])
    assert (error <= bound + 1e-12).all(), (error.max(), bound.max())
    reason = torch_forms.gram_ineligible_reason(inputs["weight_bank"], inputs["select_logits"], inputs["style"], 1e-8)
    if delta == 1.0:
        assert kappa.max() < 10 and reason is None and error.max() < 1e-5
    if delta <= 1e-2:
        assert kappa.max() > 1e3
    if delta == 1e-3:
        assert reason is not None and "nearly cancel" in reason
    # The fp64 combine is what keeps the N x N cancellation out: in fp32 it would cost about kappa * u32 alone.
    assert error.max() <= 8 * (54 ** 0.5) * 2.0**-24 * kappa.max() + 1e-7


def test_auto_decides_gram_eligibility_once_per_key_at_tuning_time(monkeypatch, tmp_path):
    """With torch:gram the fastest by the (fake) timer, auto takes it for a key tuned on well-conditioned data and
    refuses it, with the reason, for a key tuned on cancelling filters; after tuning no call checks again."""
    from gigagan_kernels import autotune
    from gigagan_kernels.ops.adaptive_modconv2d import torch_forms
    monkeypatch.setenv(autotune.ENV_VAR, "on")
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("GIGAGAN_KERNELS_IMPL", raising=False)
    autotune.TABLE.forget()
    checks = []
    reason = torch_forms.gram_ineligible_reason
    monkeypatch.setattr(torch_forms, "gram_ineligible_reason", lambda *a: checks.append(1) or reason(*a))
    timer = {"ref": 1.0, "torch:activations": 0.5, "torch:bmm": 0.4, "torch:grouped": 0.9, "torch:gram": 0.1}
    try:
        with autotune.use_timer(lambda name, call: timer[name]):
            for delta, batch in ((1.0, 3), (1e-3, 2)):
                inputs = _cancelling_inputs(delta, "cpu")
                if batch != 3:                                     # another key: two samples
                    inputs = {k: (v[:batch] if k in ("x", "select_logits", "style") else v)
                              for k, v in inputs.items()}
                args = [inputs[k] for k in ("x", "weight_bank", "select_logits", "style", "bias")]
                gk.adaptive_modconv2d(*args, activation="lrelu", impl="torch")
        records = {r["key"]: r for r in gk.autotune_report()}
        good, bad = sorted(records.values(), key=lambda r: "(3, 6, 4, 4)" not in r["key"])
        assert good["choice"] == "torch:gram" and good["candidates"]["torch:gram"] == 0.1
        assert bad["choice"] == "torch:bmm" and "nearly cancel" in bad["candidates"]["torch:gram"]
        assert len(checks) == 2
        for _ in range(3):                                         # seen keys: no check, no timing
            gk.adaptive_modconv2d(*args, activation="lrelu", impl="torch")
        assert len(checks) == 2
    finally:
        autotune.TABLE.forget()
