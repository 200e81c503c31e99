"""Backend "torch": the plain-torch composite in three exact forms (candidates torch:activations, torch:bmm,
torch:grouped). Plain torch ops, so gradients of every order."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import default_gain
from .reference import adaptive_modconv2d_ref, epilogue_ref

TORCH_FORMS = ("activations", "bmm", "grouped")
_CUDA_FORMS: dict = {}


def torch_form(x_shape, bank_shape, device_type: str = "cpu") -> str:
    """The "torch" composite's form for a call:
      "activations": conv(x * s, all N filters) as one shared-weight convolution, mixed with a and scaled by
                     d (StyleGAN2's fused_modconv=False, generalised to N filters);
      "bmm":         per-sample weights mixed by one matmul, the convolution as a batched matmul on
                     unfold(x * s), d as an output scale;
      "grouped":     the reference's per-sample weights and one B-group convolution.

    CUDA: the cost model (gigagan_kernels/cost_model.py) picks between activations and bmm (cuDNN's grouped
    convolution took ~0.2 ms per group in its backward on an H200, so it is never the fastest there).
    CPU (measured on this project's 2-core x86 build machine, benchmarks/NOTES.md): activations for 1x1
    filters (one matmul) and where per-sample weights, counted twice because a B-group convolution runs
    about half as fast per FLOP as a batched one, outweigh the N-fold convolution's activations:
    2*Cout*Cin*k^2 > N*(Cin+Cout)*H*W. Otherwise bmm up to 64 pixels (0.4-0.7x the grouped convolution's
    forward + backward at 4x4 and 8x8) and grouped above (bmm took 1.2-3x at 16x16 and 32x32)."""
    _, Cin, H, W = x_shape
    N, Cout, _, k, _ = bank_shape
    if k == 1:
        return "activations"
    if device_type == "cuda":
        key = (tuple(x_shape), tuple(bank_shape))
        if key not in _CUDA_FORMS:             # a plain dict, which dynamo traces (functools caches it warns on)
            from ... import cost_model         # on first use: the cost model imports this op's plans
            _CUDA_FORMS[key] = {"torch_activations": "activations", "torch_weights": "bmm"}[
                cost_model.fastest(("torch_activations", "torch_weights"), x_shape, bank_shape)]
        return _CUDA_FORMS[key]
    if 2 * Cout * Cin * k * k > N * (Cin + Cout) * H * W:
        return "activations"
    return "bmm" if H * W <= 64 else "grouped"


class _SumOfSquares(torch.autograd.Function):
    """sum(t^2) over the last dimension, in at least fp32, without the squared temporary: one norm reduction forward
    (square().sum() would write a tensor as large as the per-sample weights, 604 MB at GigaGAN's 1024-channel
    layers). The backward, 2 t g, is plain torch ops, so gradients of every order stay exact."""

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return torch.linalg.vector_norm(t, dim=-1, dtype=torch.promote_types(t.dtype, torch.float32)).square()

    @staticmethod
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        return (2 * t * grad.unsqueeze(-1)).to(t.dtype)


def activations_form_cancels(demodulate: bool, Cin: int, k: int) -> bool:
    """Each filter is one scalar that demodulation divides by itself, so y cannot see its scale and the
    activation form's dbank would be a difference of two large terms."""
    return demodulate and Cin * k * k == 1


def adaptive_modconv2d_torch(x, weight_bank, select_logits, style, bias=None, *, demodulate=True, eps=1e-8,
                             noise=None, activation=None, gain=None, clamp=None, form=None):
    """The plain-torch composite in one of three exact forms (TORCH_FORMS): `form`, or by default the one
    dispatch.torch_form predicts cheapest for the call. Plain torch ops, so gradients of every order.

    d[b,o]^2 = sum_i s[b,i]^2 sum_{kh,kw} K[b,o,i]^2, with K[b] = sum_n a[b,n] W[n] mixed first (mixing keeps d
    as well conditioned as the reference's; Gram cross terms would cancel where the mixed filter is small).
    With N = 1 the activation form needs only the bank's per-(o, i) sums of squares.
    """
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = weight_bank.shape
    if form is None:
        form = torch_form(x.shape, weight_bank.shape, x.device.type)
        if form == "activations" and activations_form_cancels(demodulate, Cin, k):
            form = "bmm"
    elif form not in TORCH_FORMS:
        raise ValueError(f"adaptive_modconv2d_torch: form must be one of {TORCH_FORMS}, got {form!r}")
    if form == "grouped":
        return adaptive_modconv2d_ref(x, weight_bank, select_logits, style, bias, demodulate=demodulate, eps=eps,
                                      noise=noise, activation=activation, gain=gain, clamp=clamp)
    gain = default_gain(activation) if gain is None else float(gain)
    a = torch.softmax(select_logits, dim=1)
    xs = x * style[:, :, None, None]
    mixed = None
    if form == "activations":
        filters = weight_bank.reshape(N * Cout, Cin, k, k)
        if x.is_cuda:       # cuDNN's NHWC kernels are the fast ones for 16-bit convolutions
            xs = xs.contiguous(memory_format=torch.channels_last)
            filters = filters.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(xs, filters, padding=k // 2)
        # N = 1 too: select_logits gets its (zero) gradient.
        y = torch.einsum("bn,bnohw->bohw", a, y.view(B, N, Cout, H, W))
    else:
        mixed = (a @ weight_bank.reshape(N, -1)).view(B, Cout, Cin * k * k)            # one matmul
        y = torch.bmm(mixed, F.unfold(xs, k, padding=k // 2)).view(B, Cout, H, W)
    if demodulate:
        if mixed is None and N == 1:
            sq = _SumOfSquares.apply(weight_bank.reshape(1, Cout, Cin, k * k)).expand(B, Cout, Cin)
        else:
            if mixed is None:
                mixed = a @ weight_bank.reshape(N, -1)
            sq = _SumOfSquares.apply(mixed.view(B, Cout, Cin, k * k))                        # [B, Cout, Cin]
        norm2 = torch.bmm(sq.to(style.dtype), style.square()[:, :, None])                 # [B, Cout, 1]
        y = y * torch.rsqrt(norm2 + eps)[..., None]
    return epilogue_ref(y, bias, noise, activation, gain, clamp)
