"""gigagan_kernels.integrations.patch_gigagan_pytorch against the real lucidrains/gigagan-pytorch (0.3.0): a
patched and an unpatched model agree in float64 on outputs and on every parameter gradient."""
import copy
import warnings

import pytest
import torch

from gigagan_kernels.integrations import patch_gigagan_pytorch, unpatch_gigagan_pytorch

lucidrains = pytest.importorskip("gigagan_pytorch")

# Demodulation: lucidrains computes rsqrt(max(s, eps)), we rsqrt(s + eps). With eps = 1e-30 both are rsqrt(s) and
# the patched model must agree to float64 rounding; at lucidrains' eps = 1e-8 they differ by ~eps / s.
EXACT_EPS, EXACT_RTOL = 1e-30, 1e-10


def _close(a, b, name, rtol):
    err = (a - b).norm() / b.norm().clamp(min=1e-30)
    assert err <= rtol, f"{name}: relative error {err:.2e}"


def _compare(module, inputs, impl="auto", eps=EXACT_EPS, rtol=EXACT_RTOL):
    """Outputs and every parameter (and input) gradient of module and of its patched copy, in float64."""
    module = module.double()
    for m in module.modules():
        if type(m).__name__ == "AdaptiveConv2DMod" and eps is not None:
            m.eps = eps
    patched = copy.deepcopy(module)
    counts = patch_gigagan_pytorch(patched, impl=impl)
    results = []
    for m in (module, patched):
        leaves = [t.detach().double().requires_grad_() if torch.is_tensor(t) and t.is_floating_point() else t
                  for t in inputs]
        torch.manual_seed(123)                   # lucidrains' Noise layers draw their noise in the forward
        out = m(*leaves)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        wanted = [p for p in m.parameters()] + [t for t in leaves if torch.is_tensor(t) and t.requires_grad]
        grads = torch.autograd.grad(out, wanted, grad_out, allow_unused=True)
        results.append((out, grads, [n for n, _ in m.named_parameters()]))
    (out, grads, names), (out_p, grads_p, names_p) = results
    assert names == names_p
    _close(out_p, out, "output", rtol)
    for name, g, g_p in zip(names + ["input"] * 8, grads, grads_p):
        if g is None:
            assert g_p is None or not g_p.any(), name
            continue
        _close(g_p, g, f"d{name}", rtol)
    return counts


@pytest.mark.parametrize("impl", ["auto", "ref"])
@pytest.mark.parametrize("num_conv_kernels, demod", [(3, True), (1, True), (2, False)])
def test_adaptive_conv(num_conv_kernels, demod, impl):
    torch.manual_seed(0)
    conv = lucidrains.AdaptiveConv2DMod(6, 5, 3, num_conv_kernels=num_conv_kernels, demod=demod)
    fmap, mod = torch.randn(4, 6, 7, 5), torch.randn(2, 6)            # mod repeated over 2 scales, as lucidrains
    kernel_mod = torch.randn(2, num_conv_kernels) if num_conv_kernels > 1 else None
    counts = _compare(conv, [fmap, mod, kernel_mod], impl)
    assert counts["AdaptiveConv2DMod"] == 1


@pytest.mark.parametrize("dot_product", [False, True])
def test_self_attention(dot_product):
    torch.manual_seed(1)
    attn = lucidrains.gigagan_pytorch.SelfAttention(8, dim_head=4, heads=2, dot_product=dot_product)
    assert _compare(attn, [torch.randn(2, 8, 5, 3)])["SelfAttention"] == 1


def test_cross_attention_with_mask():
    torch.manual_seed(2)
    attn = lucidrains.gigagan_pytorch.CrossAttention(8, 6, dim_head=4, heads=2)
    mask = torch.tensor([[True] * 7, [True, True, True, False, False, False, False]])
    assert _compare(attn, [torch.randn(2, 8, 4, 4), torch.randn(2, 7, 6), mask])["CrossAttention"] == 1


def test_text_attention_with_mask():
    torch.manual_seed(3)
    attn = lucidrains.gigagan_pytorch.TextAttention(6, dim_head=4, heads=2)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    assert _compare(attn, [torch.randn(2, 5, 6), mask])["TextAttention"] == 1


def _tiny_gan():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        G = lucidrains.Generator(image_size=32, dim_capacity=4, dim_max=32, style_network=dict(dim=32, depth=2),
                                 unconditional=True, self_attn_resolutions=(8,), self_attn_dim_head=8,
                                 self_attn_heads=2, cross_attn_resolutions=(), num_conv_kernels=2)
        D = lucidrains.Discriminator(image_size=32, dim_capacity=4, dim_max=32, attn_resolutions=(8,), attn_dim_head=8,
                                     attn_heads=2, unconditional=True, multiscale_input_resolutions=(16,),
                                     num_conv_kernels=2)
    return G, D


class _GeneratorThenDiscriminator(torch.nn.Module):
    def __init__(self, G, D):
        super().__init__()
        self.G, self.D = G, D

    def forward(self, noise):
        images, rgbs = self.G(noise=noise, return_all_rgbs=True)
        logits, multiscale_logits, _ = self.D(images, rgbs, calc_aux_loss=False)
        return torch.cat([logits.flatten()] + [m.flatten() for m in multiscale_logits])


def test_whole_generator_and_discriminator():
    """lucidrains' own unconditional Generator and Discriminator (adaptive convolutions, L2 and dot
    self-attention): D(G(z)) and every gradient agree patched and unpatched."""
    torch.manual_seed(4)
    G, D = _tiny_gan()
    model = _GeneratorThenDiscriminator(G, D)
    n_conv = sum(type(m).__name__ == "AdaptiveConv2DMod" for m in model.modules())
    n_attn = sum(type(m).__name__ == "SelfAttention" for m in model.modules())
    counts = _compare(model, [torch.randn(2, 32)])
    assert counts["AdaptiveConv2DMod"] == n_conv > 0 and counts["SelfAttention"] == n_attn > 0


def test_whole_model_at_lucidrains_own_eps():
    """At eps = 1e-8 the two demodulations differ by ~eps / sum of squares: 1e-7 on D(G(z)) here."""
    torch.manual_seed(4)
    _compare(_GeneratorThenDiscriminator(*_tiny_gan()), [torch.randn(2, 32)], eps=None, rtol=1e-5)


def test_patching_leaves_parameters_alone_and_can_be_undone():
    torch.manual_seed(5)
    G, _ = _tiny_gan()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    counts = patch_gigagan_pytorch(G)
    assert sum(counts.values()) > 0
    assert patch_gigagan_pytorch(G) == {name: 0 for name in counts}            # already patched
    after = G.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert unpatch_gigagan_pytorch(G) == sum(counts.values())
    assert all(not hasattr(m, "_gigagan_kernels_original_forward") for m in G.modules())


def test_profile_shows_the_fused_ops():
    torch.manual_seed(6)
    G, _ = _tiny_gan()
    patch_gigagan_pytorch(G)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        G(noise=torch.randn(1, 32))
    names = {e.key for e in prof.key_averages()}
    assert {"gigagan_kernels.adaptive_modconv2d", "gigagan_kernels.attention"} <= names
