"""Latent tools (docs/design.md §6-7): text-conditioned truncation, style mixing, prompt interpolation and
prompt mixing."""
import warnings

import pytest
import torch

pytest.importorskip("open_clip", reason="the model needs open_clip_torch (requirements.txt)")

from tests.conftest import DEVICE, SAME_MATH_ATOL
from gigagan import GigaGAN, get_preset
from gigagan.latent import conditional_w_mean, prompt_interpolation, prompt_mix, style_mix, truncate
from gigagan_kernels import use_impl

A, B = "a small red circle in the top left on a blue background", "a large green square on a white background"


@pytest.fixture(scope="module")
def G():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        G = GigaGAN(get_preset("tiny")).generator.to(DEVICE).eval()
    G.mapping.w_avg.normal_()
    return G


@pytest.fixture(autouse=True)
def _reference_ops():
    with use_impl("ref"):
        yield


def _image(G, z, captions, ws=None):
    feats = G.encode_text(captions)
    w = G.mapping(z, feats.t_global) if ws is None else ws
    return G.synthesis(w, feats.t_local, feats.mask, noise_mode="none")[0]


def test_truncation_formula(G):
    w, w_mean, w_c = (torch.randn(3, 64, device=DEVICE) for _ in range(3))
    assert torch.equal(truncate(w, w_mean[0], w_c, 1.0), w)
    assert torch.allclose(truncate(w, w_mean[0], w_c, 0.0), w_c)
    psi = 0.7
    expected = w_c + psi * ((w_mean[0] + psi * (w - w_mean[0])) - w_c)
    assert torch.allclose(truncate(w, w_mean[0], w_c, psi), expected, atol=1e-6)


def test_conditional_mean_and_truncated_sampling(G):
    feats = G.encode_text([A, B])
    w_c = conditional_w_mean(G.mapping, feats.t_global, num_samples=512)
    z = torch.randn(4096, G.z_dim, device=DEVICE)
    direct = G.mapping(z, feats.t_global[:1].expand(4096, -1)).mean(0)
    assert (w_c[0] - direct).norm() / direct.norm() < 0.05           # a Monte-Carlo mean of M(z, t_A)
    assert (w_c[0] - w_c[1]).norm() > 1e-3                            # per caption, not global
    z = torch.randn(2, G.z_dim, device=DEVICE)
    torch.manual_seed(1)
    img0 = G(z, [A, B], truncation_psi=0.0, noise_mode="none")[0]
    img0_other_z = G(torch.randn(2, G.z_dim, device=DEVICE), [A, B], truncation_psi=0.0, noise_mode="none")[0]
    assert torch.allclose(img0, img0_other_z, atol=max(1e-5, SAME_MATH_ATOL))  # psi = 0: every z gives w_mean_c
    img1 = G(z, [A, B], truncation_psi=1.0, noise_mode="none")[0]
    assert torch.allclose(img1, _image(G, z, [A, B]), atol=SAME_MATH_ATOL)


def test_style_mix(G):
    z_a, z_b = torch.randn(2, G.z_dim, device=DEVICE), torch.randn(2, G.z_dim, device=DEVICE)
    caps = [A, B]
    only_a = style_mix(G, z_a, z_b, caps, crossover=G.num_ws)
    only_b = style_mix(G, z_a, z_b, caps, crossover=0)
    assert torch.allclose(only_a, _image(G, z_a, caps), atol=SAME_MATH_ATOL)
    assert torch.allclose(only_b, _image(G, z_b, caps), atol=SAME_MATH_ATOL)
    mixed = style_mix(G, z_a, z_b, caps, crossover=2)
    feats = G.encode_text(caps)
    w_a, w_b = G.mapping(z_a, feats.t_global), G.mapping(z_b, feats.t_global)
    ws = torch.stack([w_a, w_a] + [w_b] * (G.num_ws - 2), dim=1)
    assert torch.allclose(mixed, _image(G, None, caps, ws), atol=SAME_MATH_ATOL)
    assert not torch.allclose(mixed, only_a, atol=1e-3) and not torch.allclose(mixed, only_b, atol=1e-3)
    with pytest.raises(ValueError, match="crossover"):
        style_mix(G, z_a, z_b, caps, crossover=G.num_ws + 1)


def test_prompt_interpolation_end_points_and_midpoint(G):
    z = torch.randn(1, G.z_dim, device=DEVICE)
    strip = prompt_interpolation(G, z, A, B, steps=5)
    assert strip.shape == (5, 3, G.resolution, G.resolution)
    assert torch.allclose(strip[0], _image(G, z, [A])[0], atol=max(1e-5, SAME_MATH_ATOL))
    assert torch.allclose(strip[-1], _image(G, z, [B])[0], atol=max(1e-5, SAME_MATH_ATOL))
    feats = G.encode_text([A, B])
    t_local, t_global = feats.t_local.mean(0, keepdim=True), feats.t_global.mean(0, keepdim=True)
    mid = G.synthesis(G.mapping(z, t_global), t_local, feats.mask[:1] | feats.mask[1:], noise_mode="none")[0]
    assert torch.allclose(strip[2], mid[0], atol=max(1e-5, SAME_MATH_ATOL))
    with pytest.raises(ValueError, match="steps"):
        prompt_interpolation(G, z, A, B, steps=1)


def test_prompt_mix(G):
    z = torch.randn(2, G.z_dim, device=DEVICE)
    pa, pb = [A, B], [B, A]
    assert torch.allclose(prompt_mix(G, z, pa, pb, crossover=G.num_ws), _image(G, z, pa), atol=SAME_MATH_ATOL)
    assert torch.allclose(prompt_mix(G, z, pa, pb, crossover=0), _image(G, z, pb), atol=SAME_MATH_ATOL)
    fa, fb = G.encode_text(pa), G.encode_text(pb)
    ws = torch.stack([G.mapping(z, fa.t_global)] + [G.mapping(z, fb.t_global)] * (G.num_ws - 1), dim=1)
    expected = G.synthesis(ws, [fa.t_local] + [fb.t_local] * (G.num_ws - 1),
                           [fa.mask] + [fb.mask] * (G.num_ws - 1), noise_mode="none")[0]
    assert torch.allclose(prompt_mix(G, z, pa, pb, crossover=1), expected, atol=SAME_MATH_ATOL)
    with pytest.raises(ValueError, match="same length"):
        prompt_mix(G, z, [A], pb, crossover=1)
