"""attention: the fused path, forward and dq/dk/dv, against the float64 reference."""
import contextlib
import math
import random

import pytest
import torch

import importlib

import gigagan_kernels as gk
from gigagan_kernels.nn import CrossAttention, L2SelfAttention

from tests.helpers import assert_close, CUDA_IMPL, FUSED_IMPLS

# The package exports the function `attention`, which shadows the submodule of the same name.
attn_mod = importlib.import_module("gigagan_kernels.attention")
triton_op = importlib.import_module("gigagan_kernels.ops.attention.triton_op")

# Every fast path: each form of the torch composite (it picks one per call), then the fused kernels.
FAST_IMPLS = [f"torch:{form}" for form in attn_mod.TORCH_FORMS] + FUSED_IMPLS


def attend(*args, impl="auto", **kwargs):
    """gk.attention, with impl "torch:<form>" running the torch composite in that form."""
    if isinstance(impl, str) and impl.startswith("torch:") and impl.split(":", 1)[1] in attn_mod.TORCH_FORMS:
        with attn_mod.use_torch_form(impl.split(":", 1)[1]):
            return gk.attention(*args, impl="torch", **kwargs)
    return gk.attention(*args, impl=impl, **kwargs)


def make_qkv(B, H, Lq, Lk, D, Dv, *, dtype, device, seed, mask=None, tied=False):
    """Fresh random q, k, v (never zeros). mask: None, "random" or "with_empty_row"."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)  # noqa: E731
    q = rnd(B, H, Lq, D)
    k = q if tied else rnd(B, H, Lk, D)
    v = rnd(B, H, Lk, Dv)
    key_padding_mask = None
    if mask is not None:
        key_padding_mask = (torch.rand(B, Lk, generator=g) > 0.35).to(device)
        key_padding_mask[:, 0] = True
        if mask == "with_empty_row":
            key_padding_mask[-1] = False
    return q, k, v, key_padding_mask


def run(q, k, v, impl, grad_out, tied=False, **options):
    if tied:
        qk = q.detach().clone().requires_grad_()
        vv = v.detach().clone().requires_grad_()
        out = attend(qk, qk, vv, impl=impl, **options)
        return out, dict(zip(("q", "v"), torch.autograd.grad(out, (qk, vv), grad_out.to(out.dtype))))
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = attend(*leaves, impl=impl, **options)
    return out, dict(zip(("q", "k", "v"), torch.autograd.grad(out, leaves, grad_out.to(out.dtype))))


def check(q, k, v, mask, impl, dtype, tied=False, **options):
    B, H, Lq, _ = q.shape
    grad_out = torch.randn(B, H, Lq, v.shape[-1], dtype=torch.float64).to(q.device)
    out, grads = run(q, k, v, impl, grad_out, tied=tied, key_padding_mask=mask, **options)
    out64, grads64 = run(q.double(), k.double(), v.double(), "ref", grad_out, tied=tied, key_padding_mask=mask,
                         **options)
    out_low, grads_low = run(q, k, v, "ref", grad_out, tied=tied, key_padding_mask=mask, **options)
    assert out.dtype == dtype
    assert_close(out, out64, dtype, "out", same_precision_ref=out_low)
    for name in grads64:
        assert_close(grads[name], grads64[name], dtype, f"d{name}", factor=2.0, same_precision_ref=grads_low[name])
    return out


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("kind", ["l2", "dot"])
@pytest.mark.parametrize("mask", [None, "random", "with_empty_row"])
def test_odd_lengths_cross_attention(impl, kind, mask, device, poison_outputs):
    q, k, v, m = make_qkv(2, 3, 37, 13, 32, 24, dtype=torch.float32, device=device, seed=1, mask=mask)
    out = check(q, k, v, m, impl, torch.float32, kind=kind)
    if mask == "with_empty_row":
        assert torch.equal(out[-1], torch.zeros_like(out[-1])), "fully masked rows must be exactly zero"


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("kind", ["l2", "dot"])
def test_tied_query_key_self_attention(impl, kind, device, poison_outputs):
    """k is the same tensor as q: the gradient must sum both paths."""
    q, k, v, _ = make_qkv(2, 2, 45, 45, 16, 16, dtype=torch.float32, device=device, seed=2, tied=True)
    check(q, k, v, None, impl, torch.float32, tied=True, kind=kind)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("D", [16, 48, 64, 100, 128])
def test_head_dims(impl, D, device, poison_outputs):
    q, k, v, m = make_qkv(1, 2, 33, 29, D, D, dtype=torch.float32, device=device, seed=D, mask="random")
    check(q, k, v, m, impl, torch.float32, kind="l2", scale=0.7 / math.sqrt(D))


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dtypes(impl, dtype, device, poison_outputs):
    q, k, v, m = make_qkv(2, 2, 64, 77, 32, 32, dtype=dtype, device=device, seed=4, mask="random")
    check(q, k, v, m, impl, dtype, kind="l2")


@pytest.mark.gpu
@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("kind", ["l2", "dot"])
@pytest.mark.parametrize("shape", [(4, 8, 1024, 1024, 64, 64, None), (4, 8, 1024, 77, 64, 64, "with_empty_row"),
                                   (2, 4, 4096, 4096, 64, 64, None), (2, 2, 300, 300, 48, 48, "random"),
                                   (2, 2, 256, 256, 128, 128, None)])
def test_gpu_large_shapes(impl, dtype, kind, shape, poison_outputs):
    B, H, Lq, Lk, D, Dv, mask = shape
    q, k, v, m = make_qkv(B, H, Lq, Lk, D, Dv, dtype=dtype, device="cuda", seed=Lq + D, mask=mask)
    check(q, k, v, m, impl, dtype, kind=kind)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["flash", "efficient", "cudnn"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind, mask", [("l2", None), ("dot", "with_empty_row"), ("l2", "random")])
def test_gpu_each_sdpa_kernel(kernel, dtype, kind, mask, poison_outputs):
    """Each SDPA candidate against float64 where torch can run it: cuDNN takes L2's augmented head dim 72 as is."""
    from gigagan_kernels.dispatcher import REGISTRY
    from gigagan_kernels.ops.attention import AttentionCall
    q, k, v, m = make_qkv(2, 4, 512, 300, 64, 64, dtype=dtype, device="cuda", seed=7, mask=mask)
    call = AttentionCall(q, k, v, kind=kind, scale=0.125, key_padding_mask=m, needs_grad=True)
    reasons = REGISTRY["attention"].get(f"torch:sdpa-{kernel}").not_supported_reasons(call)
    if reasons:
        pytest.skip("; ".join(reasons))
    check(q, k, v, m, f"torch:sdpa-{kernel}", dtype, kind=kind)


def test_the_sdpa_route_pads_l2_to_a_multiple_of_8_and_cudnn_runs_it_as_is():
    """L2 at head dim 64 goes to SDPA as 72 wide (not 96): cuDNN computes 72, FlashAttention-2 rounds to 96, and the
    cost model prices each so."""
    from gigagan_kernels import cost_model
    q = torch.randn(1, 2, 8, 64)
    assert attn_mod.sdpa_operands(q, q, q, "l2", 0.125)[0].shape[-1] == 72
    l2 = cost_model.AttentionShape(16, 8, 4096, 4096, 64, 64, "l2", False)
    dot = cost_model.AttentionShape(16, 8, 4096, 4096, 64, 64, "dot", False)
    flash, cudnn = (cost_model.attention_seconds(f"torch_sdpa_{k}", l2) for k in ("flash", "cudnn"))
    assert cudnn < 0.8 * flash
    assert cost_model.attention_seconds("torch_sdpa_cudnn", dot) == cost_model.attention_seconds("torch_sdpa_flash",
                                                                                                   dot)


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("case", range(24))
def test_random_shape_sweep(case, impl, device, poison_outputs):
    rng = random.Random(777 + case)
    dtype = torch.float16 if case % 3 == 2 else torch.float32
    B, H = rng.randint(1, 3), rng.randint(1, 3)
    Lq, Lk = rng.randint(1, 80), rng.randint(1, 80)
    D, Dv = rng.choice([16, 24, 32, 48, 64]), rng.choice([16, 32, 40, 64])
    q, k, v, m = make_qkv(B, H, Lq, Lk, D, Dv, dtype=dtype, device=device, seed=case,
                          mask=rng.choice([None, "random", "with_empty_row"]))
    check(q, k, v, m, impl, dtype, kind=rng.choice(["l2", "dot"]))


@pytest.mark.parametrize("impl", ["ref"] + FAST_IMPLS)
@pytest.mark.parametrize("kind", ["l2", "dot"])
def test_second_order_gradients(impl, kind, device):
    """R1 through L2 self-attention: grad of the output wrt the input tokens, squared, backpropagated."""
    q0, _, v0, m = make_qkv(2, 2, 20, 20, 16, 16, dtype=torch.float64, device=device, seed=6, mask="random")

    def r1(impl, dtype):
        x = q0.detach().to(dtype).requires_grad_()
        w_v = v0.detach().to(dtype).requires_grad_()
        out = attend(x, x, w_v, kind=kind, key_padding_mask=m, impl=impl)
        (gx,) = torch.autograd.grad((out * out.detach().sin()).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), (x, w_v))

    got, want = r1(impl, torch.float32), r1("ref", torch.float64)
    for name, a, b in zip(("x", "v"), got, want):
        assert_close(a, b, torch.float32, f"R1 d{name}", factor=4.0)


def test_reference_gradgradcheck(device):
    q, k, v, m = make_qkv(1, 1, 5, 4, 3, 2, dtype=torch.float64, device=device, seed=7, mask="random")
    fn = lambda q, k, v: attend(q, k, v, kind="l2", key_padding_mask=m, impl="ref")  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, [t.requires_grad_() for t in (q, k, v)])


def test_opcheck_custom_ops(device):
    q, k, v, m = make_qkv(1, 2, 19, 11, 16, 16, dtype=torch.float32, device=device, seed=8, mask="random")
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), "l2", 0.25, m)
    torch.library.opcheck(triton_op.triton_forward_op, args)
    with torch.no_grad():
        out, lse = triton_op.triton_forward_op(*args)
    torch.library.opcheck(triton_op.triton_backward_op, (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out,
                                                     lse, "l2", 0.25, m))


@pytest.mark.gpu
@pytest.mark.parametrize("impl", [CUDA_IMPL])
def test_opcheck_cuda_ops(impl):
    q, k, v, m = make_qkv(1, 2, 19, 11, 16, 16, dtype=torch.float32, device="cuda", seed=8, mask="random")
    op = torch.ops.gigagan_kernels_cuda.attention_forward
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), "l2", 0.25, m)
    torch.library.opcheck(op, args)
    with torch.no_grad():
        out, lse = op(*args)
    torch.library.opcheck(torch.ops.gigagan_kernels_cuda.attention_backward,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, "l2", 0.25, m))


@pytest.mark.parametrize("impl", ["auto", "torch", CUDA_IMPL])
@pytest.mark.parametrize("form", attn_mod.TORCH_FORMS)
def test_torch_compile_fullgraph(impl, form, device):
    torch.manual_seed(0)
    layer = L2SelfAttention(32, heads=2, style_dim=8, impl=impl).to(device)
    x, w = torch.randn(2, 32, 4, 4, device=device, requires_grad=True), torch.randn(2, 8, device=device)
    with attn_mod.use_torch_form(form):
        eager = layer(x, w)
        out = torch.compile(layer, fullgraph=True)(x, w)
    assert_close(out, eager.detach(), torch.float32, "compiled out")


@pytest.mark.parametrize("impl", ["torch:sdpa"] + FUSED_IMPLS)
def test_no_quadratic_buffer_saved(impl, device):
    """The fused paths and the SDPA composite save q, k, v, out and the row LSE: nothing of size Lq x Lk (the
    materialised form, for small logits on CPU only, keeps its probabilities)."""
    q, k, v, _ = make_qkv(1, 1, 64, 96, 16, 16, dtype=torch.float32, device=device, seed=9)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        attend(*(t.requires_grad_() for t in (q, k, v)), impl=impl)
    assert saved and max(saved) < 64 * 96


@pytest.mark.parametrize("impl", ["ref"] + FAST_IMPLS)
def test_nn_wrappers(impl, device):
    form = impl.split(":", 1)[1] if impl.startswith("torch:") else None
    with attn_mod.use_torch_form(form) if form else contextlib.nullcontext():
        _check_wrappers("torch" if form else impl, device)


def _check_wrappers(impl, device):
    torch.manual_seed(3)
    self_attn = L2SelfAttention(32, heads=4, style_dim=16, impl=impl).to(device)
    x, w = torch.randn(2, 32, 6, 5, device=device), torch.randn(2, 16, device=device)
    y = self_attn(x, w)
    assert y.shape == x.shape
    cross = CrossAttention(32, text_dim=24, heads=4, impl=impl).to(device)
    text = torch.randn(2, 7, 24, device=device)
    text_mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4], device=device)
    z = cross(y, text, text_mask)
    assert z.shape == x.shape
    z.square().mean().backward()
    for module in (self_attn, cross):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # The tied projection: self-attention owns one query/key weight.
    assert not hasattr(self_attn, "to_k")


def test_wrappers_match_between_impls(device):
    torch.manual_seed(5)
    layer = L2SelfAttention(16, heads=2, style_dim=8).to(device)
    x, w = torch.randn(2, 16, 5, 5, device=device), torch.randn(2, 8, device=device)
    layer.impl = "ref"
    ref = layer(x, w)
    layer.impl = "triton"
    assert_close(layer(x, w), ref.detach(), torch.float32, "L2SelfAttention triton vs ref", factor=10.0)


@pytest.mark.parametrize("args, match", [
    (lambda q, k, v: (q[0], k, v), r"q must be 4-D"),
    (lambda q, k, v: (q, k[..., :3], v), r"k must have shape \[B, H, Lk, D\] = \[2, 2, Lk, 4\], got \(2, 2, 5, 3\)"),
    (lambda q, k, v: (q, k, v[:, :, :2]), r"v must have shape \[B, H, Lk, Dv\] = \[2, 2, 5, Dv\]"),
    (lambda q, k, v: (q, k.double(), v), r"k has dtype torch.float64 but q has dtype torch.float32"),
    (lambda q, k, v: (q, k, v.to("meta")), r"v is on meta"),
])
def test_bad_input_raises_naming_argument(args, match):
    q, k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 6)
    with pytest.raises(ValueError, match=match):
        attend(*args(q, k, v), impl="ref")


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="cosine"), r"kind must be one of"),
    (dict(scale=-1.0), r"scale must be a finite positive"),
    (dict(key_padding_mask=torch.ones(2, 5)), r"key_padding_mask must be a bool tensor"),
    (dict(key_padding_mask=torch.ones(2, 4, dtype=torch.bool)),
     r"key_padding_mask must have shape \[B, Lk\] = \(2, 5\)"),
])
def test_bad_options_raise(kwargs, match):
    q, k, v = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 6)
    with pytest.raises(ValueError, match=match):
        attend(q, k, v, impl="ref", **kwargs)


@pytest.mark.parametrize("impl", ["ref"] + FAST_IMPLS)
def test_empty_inputs(impl, device):
    q, k, v = (torch.randn(0, 2, 3, 16, device=device), torch.randn(0, 2, 5, 16, device=device),
               torch.randn(0, 2, 5, 16, device=device))
    assert attend(q, k, v, impl=impl).shape == (0, 2, 3, 16)


@pytest.mark.parametrize("impl", ["ref", "torch:sdpa", "torch:materialised"])
@pytest.mark.parametrize("D", [16, 24, 200, 256])
def test_head_dims_beyond_the_kernels(impl, D, device, poison_outputs):
    """Head dims 16 to 256: the composite runs any of them (the kernels stop at 128, see below)."""
    q, k, v, m = make_qkv(1, 2, 9, 11, D, 24, dtype=torch.float32, device=device, seed=D + 1, mask="random")
    check(q, k, v, m, impl, torch.float32, kind="l2")


def test_triton_refuses_head_dims_above_its_tables(device):
    q = torch.randn(1, 1, 4, 256, device=device)
    with pytest.raises(gk.BackendUnavailableError, match=r"impl='triton' is unavailable: q head dim 256 exceeds 128"):
        attend(q, q, q, impl="triton")


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("kind", ["l2", "dot"])
@pytest.mark.parametrize("mask", [None, "random", "with_empty_row"])
def test_one_key(impl, kind, mask, device, poison_outputs):
    """Lk = 1: every visible row puts its whole weight on the one key (or is empty)."""
    q, k, v, m = make_qkv(2, 2, 7, 1, 16, 16, dtype=torch.float32, device=device, seed=11, mask=mask)
    out = check(q, k, v, m, impl, torch.float32, kind=kind)
    if mask is None:
        assert torch.allclose(out, v.expand_as(out), atol=1e-6)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_non_contiguous_inputs(impl, device, poison_outputs):
    """Tokens-major projections viewed as [B, H, L, D] (what a model's reshape/transpose gives) and a mask
    sliced out of a wider one."""
    g = torch.Generator().manual_seed(12)
    B, H, L, Lk, D = 2, 3, 21, 17, 16
    q = torch.randn(B, L, H, D, generator=g).to(device).transpose(1, 2)
    kv = torch.randn(B, Lk, 2, H, D, generator=g).to(device)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    wide = torch.rand(B, 2 * Lk, generator=g).to(device) > 0.3
    mask = wide[:, ::2]
    mask[:, 0] = True
    assert not (q.is_contiguous() or k.is_contiguous() or mask.is_contiguous())
    check(q, k, v, mask, impl, torch.float32, kind="l2")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sdpa_route_carries_the_key_norm_in_two_parts(dtype):
    """The L2 route's key bias reaches SDPA as hi + lo in the input dtype: together far finer than hi alone."""
    k = torch.randn(2, 3, 50, 64, dtype=torch.float64) * 3
    q = torch.randn(2, 3, 5, 64, dtype=torch.float64)
    q_aug, k_aug, v_aug, scale = attn_mod.sdpa_operands(q.to(dtype), k.to(dtype), k.to(dtype), "l2", 0.125)
    assert scale == 0.25 and q_aug.shape[-1] % 8 == 0 and q_aug.shape[-1] == k_aug.shape[-1] == v_aug.shape[-1]
    want = -0.5 * k.to(dtype).double().square().sum(-1)
    hi, lo = k_aug[..., 64].double(), k_aug[..., 65].double()
    err_hi = ((hi - want).abs() / want.abs()).max().item()
    err_both = ((hi + lo - want).abs() / want.abs()).max().item()
    assert err_both < 1e-4 and err_both < err_hi / 30, (err_hi, err_both)
    assert torch.equal(q_aug[..., 64:66], torch.ones_like(q_aug[..., 64:66])) and not q_aug[..., 66:].any()


def test_auto_order_never_picks_a_path_that_cannot_run():
    order = attn_mod.auto_cuda_order
    assert "triton" not in order((2, 2, 64, 256), (2, 2, 64, 256), (2, 2, 64, 256), "l2", False, torch.bfloat16)
    assert "cuda" not in order((2, 2, 64, 256), (2, 2, 64, 256), (2, 2, 64, 256), "l2", False, torch.bfloat16)
    assert "triton" not in order((2, 2, 64, 64), (2, 2, 64, 64), (2, 2, 64, 64), "l2", False, torch.float64)
    assert order((2, 2, 64, 64), (2, 2, 64, 64), (2, 2, 64, 200), "dot", True, torch.float16)[0] == "torch"


def test_auto_order_follows_the_cost_model():
    """Per call, the first choice is the cost model's fastest forward + backward of the routes that can run."""
    from gigagan_kernels import cost_model
    shapes = [((16, 8, 4096, 64), 4096, "l2", False), ((16, 8, 4096, 64), 4096, "l2", True),
              ((16, 8, 1024, 64), 77, "dot", True), ((16, 8, 256, 64), 256, "l2", False)]
    for (B, H, Lq, D), Lk, kind, masked in shapes:
        first = attn_mod.auto_cuda_order((B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, D), kind, masked, torch.bfloat16)[0]
        shape = cost_model.AttentionShape(B, H, Lq, Lk, D, D, kind, masked)
        times = {f: cost_model.attention_seconds(f, shape) for f in ("torch", "triton")}
        assert first == min(times, key=times.get), (kind, Lq, Lk, masked, times)
    # Masked L2 at 4096 tokens leaves SDPA's flash backend; the fused kernel is predicted faster there.
    assert attn_mod.auto_cuda_order((16, 8, 4096, 64), (16, 8, 4096, 64), (16, 8, 4096, 64), "l2", True,
                                    torch.bfloat16)[0] == "triton"


def test_torch_form_per_call(device):
    """The composite's form: materialised for small logits on CPU, SDPA otherwise (always on CUDA)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert attn_mod.torch_form(256, 77, cpu) == "materialised" and attn_mod.torch_form(256, 256, cpu) == "sdpa"
    assert attn_mod.torch_form(16, 16, cuda) == "sdpa"
    with attn_mod.use_torch_form("sdpa"):
        assert attn_mod.torch_form(4, 4, cpu) == "sdpa"
    with pytest.raises(ValueError, match="form must be one of"):
        with attn_mod.use_torch_form("fast"):
            pass


def test_sdpa_route_rows_without_keys_get_zero_gradient(device):
    q, k, v, m = make_qkv(2, 2, 6, 5, 16, 16, dtype=torch.float32, device=device, seed=13, mask="with_empty_row")
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = attend(*leaves, key_padding_mask=m, impl="torch:sdpa")
    dq, dk, dv = torch.autograd.grad(out.square().sum() + out.sum(), leaves)
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))
    for name, g in (("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(g).all() and not g[-1].any(), name


@pytest.mark.parametrize("impl", ["ref"] + FAST_IMPLS)
def test_zero_head_dim_is_a_named_error_on_every_backend(impl, device):
    q = torch.randn(2, 2, 3, 0, device=device)
    with pytest.raises(ValueError, match=r"head dim D >= 1"):
        attend(q, q, torch.randn(2, 2, 3, 4, device=device), impl=impl)


@pytest.mark.parametrize("impl", ["ref"] + FAST_IMPLS)
@pytest.mark.parametrize("Lq, Lk, Dv", [(0, 5, 8), (4, 0, 8), (4, 5, 0)])
def test_zero_lengths_agree_on_every_backend(impl, Lq, Lk, Dv, device):
    """No queries, no keys (zeros, as a row whose keys are all masked) or no value channels."""
    q, k, v = (torch.randn(2, 2, Lq, 8, device=device), torch.randn(2, 2, Lk, 8, device=device),
               torch.randn(2, 2, Lk, Dv, device=device))
    out = attend(q, k, v, impl=impl)
    assert out.shape == (2, 2, Lq, Dv) and not out.any()


@pytest.mark.parametrize("kind", ["l2", "dot"])
@pytest.mark.parametrize("mask", [None, "with_empty_row"])
def test_composite_in_float64(kind, mask, device):
    """float64 (the kernels do not take it) runs on the composite, gradients included."""
    q, k, v, m = make_qkv(2, 2, 9, 7, 8, 8, dtype=torch.float64, device=device, seed=21, mask=mask)
    for form in attn_mod.TORCH_FORMS:
        check(q, k, v, m, f"torch:{form}", torch.float64, kind=kind)


@pytest.mark.parametrize("impl", ["ref"] + FAST_IMPLS)
def test_backward_twice_through_a_retained_graph(impl, device):
    """retain_graph=True: a second backward through the same output gives the same gradients."""
    q, k, v, m = make_qkv(2, 2, 11, 9, 16, 16, dtype=torch.float32, device=device, seed=31, mask="random")
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = attend(*leaves, kind="l2", key_padding_mask=m, impl=impl)
    grad = torch.randn_like(out)
    first = torch.autograd.grad(out, leaves, grad, retain_graph=True)
    second = torch.autograd.grad(out, leaves, grad)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
