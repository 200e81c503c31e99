"""Backend "torch": the plain-torch composite in four exact forms (candidates torch:activations, torch:bmm,
torch:grouped, torch:gram). Plain torch ops, so gradients of every order."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import default_gain
from .reference import adaptive_modconv2d_ref, epilogue_ref

TORCH_FORMS = ("activations", "bmm", "grouped", "gram")
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


def gram_demodulation(weight_bank, a, style, eps):
    """d[b, o] = rsqrt(sum_i s[b,i]^2 sum_t (sum_n a[b,n] W[n,o,i,t])^2 + eps) from the bank's Gram matrices, with no
    per-sample weights: G[o,i,n,m] = sum_t W[n,o,i,t] W[m,o,i,t] and H[b,o,n,m] = sum_i s[b,i]^2 G[o,i,n,m] (the
    Gram contraction, in fp32 at least), then d^2 = sum_{n,m} a[b,n] a[b,m] H[b,o,n,m] (the N x N combine, in fp64).

    Error bound: each H entry sums K = Cin*k*k products in fp32, so its relative error is at most
    gamma_K = K u32 / (1 - K u32) (u32 = 2^-24; ~sqrt(K) u32 in practice); the fp64 combine adds at most N^2 u64
    relative to sum |a_n a_m H_nm|. Hence |d^2' - d^2| <= (gamma_K + N^2 u64) kappa d^2 and d is off by half that,
    where kappa = sum_{n,m} |a_n a_m H_nm| / d^2 >= 1 measures how much the mixed filters cancel (1 when the a_n W_n
    agree in sign). Where they nearly cancel, kappa is large and so is the error: eligible_for_gram decides, per
    call key at tuning time, whether a call's data allows this form."""
    N, Cout, Cin, k, _ = weight_bank.shape
    contraction = torch.promote_types(weight_bank.dtype, torch.float32)
    bank = weight_bank.reshape(N, Cout * Cin, k * k).to(contraction).transpose(0, 1)          # [Cout*Cin, N, k*k]
    gram = torch.bmm(bank, bank.transpose(1, 2)).view(Cout, Cin, N * N)                       # [Cout, Cin, N*N]
    s2 = style.to(contraction).square()                                                       # [B, Cin]
    h = torch.matmul(s2, gram)                                                                 # [Cout, B, N*N]
    a64 = a.double()
    pairs = (a64[:, :, None] * a64[:, None, :]).reshape(a.shape[0], N * N)                   # [B, N*N]
    norm2 = (h.double() * pairs).sum(-1).transpose(0, 1)                                       # [B, Cout], fp64
    return torch.rsqrt(norm2 + eps), h, pairs


def gram_cancellation(weight_bank, select_logits, style):
    """kappa[b, o] = sum_{n,m} |a_n a_m H_nm| / d^2 (fp64): how much the call's mixed filters cancel."""
    with torch.no_grad():
        a = torch.softmax(select_logits.double(), dim=1)
        d, h, pairs = gram_demodulation(weight_bank.double(), a, style.double(), 0.0)
        return (h.abs() * pairs.abs()).sum(-1).transpose(0, 1) * d.square()


def gram_error_bound(weight_bank, select_logits, style):
    """The bound of gram_demodulation on the relative error of d, per [b, o], for these inputs:
    (gamma_K + N^2 u64) kappa / 2 (fp64)."""
    N, Cout, Cin, k, _ = weight_bank.shape
    K = Cin * k * k
    gamma = K * 2.0**-24 / (1 - K * 2.0**-24)
    return (gamma + N * N * 2.0**-53) * gram_cancellation(weight_bank, select_logits, style) / 2


# The relative error of d the Gram form may make and still be eligible: what the per-sample forms make (d from
# fp32 sums of K squares, ~sqrt(K) u32, with a margin of 16), or the call's own rounding, whichever is larger.
_UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24, torch.float64: 2.0**-53}


def gram_ineligible_reason(weight_bank, select_logits, style, eps) -> str | None:
    """Why the Gram form must not run calls like this one, or None: its d on this call's data (in the call's
    precision) against the same d in fp64, beside the tolerance above. Run once per call key, at tuning time (it
    reads a value back to the host, which a per-call check must never do)."""
    N, Cout, Cin, k, _ = weight_bank.shape
    with torch.no_grad():
        a = torch.softmax(select_logits.float(), dim=1)
        d = gram_demodulation(weight_bank, a, style, eps)[0]
        d_exact = gram_demodulation(weight_bank.double(), a.double(), style.double(), eps)[0]
        error = float(((d - d_exact).abs() / d_exact).max())
    u = _UNIT_ROUNDOFF.get(weight_bank.dtype, 2.0**-24)
    tolerance = max(u, 16 * (Cin * k * k) ** 0.5 * 2.0**-24)
    if error <= tolerance:
        return None
    return (f"its Gram demodulation is off by {error:.1e} (relative) on the data this key was tuned on, over the "
            f"{tolerance:.1e} allowed: the mixed filters nearly cancel")


def activations_form_cancels(demodulate: bool, Cin: int, k: int) -> bool:
    """Each filter is one scalar that demodulation divides by itself, so y cannot see its scale and the
    activation form's dbank would be a difference of two large terms."""
    return demodulate and Cin * k * k == 1


def adaptive_modconv2d_torch(x, weight_bank, select_logits, style, bias=None, *, demodulate=True, eps=1e-8,
                             noise=None, activation=None, gain=None, clamp=None, form=None):
    """The plain-torch composite in one of four exact forms (TORCH_FORMS): `form`, or by default the one
    dispatch.torch_form predicts cheapest for the call. Plain torch ops, so gradients of every order.

    d[b,o]^2 = sum_i s[b,i]^2 sum_{kh,kw} K[b,o,i]^2, with K[b] = sum_n a[b,n] W[n] mixed first (mixing keeps d
    as well conditioned as the reference's; Gram cross terms would cancel where the mixed filter is small).
    With N = 1 the activation form needs only the bank's per-(o, i) sums of squares.
    "gram": the activation form as one GEMM a pass (the batch folded into the GEMM's N: the bank's N*Cout filters
    times the im2col columns of every sample) and d from the bank's Gram matrices (gram_demodulation): no
    per-sample weights anywhere, at the price of d's conditioning where mixed filters nearly cancel. Never the
    default form: auto takes it only where tuning measured it and eligible_for_gram accepted the call's data.
    """
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = weight_bank.shape
    if form is None:
        form = torch_form(x.shape, weight_bank.shape, x.device.type)
        if form == "activations" and activations_form_cancels(demodulate, Cin, k):
            form = "bmm"
    elif form not in TORCH_FORMS:
        raise ValueError(f"adaptive_modconv2d_torch: form must be one of {TORCH_FORMS}, got {form!r}")
    if form == "gram":
        return _gram_form(x, weight_bank, select_logits, style, bias, demodulate, eps, noise, activation, gain, clamp)
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


def _gram_form(x, weight_bank, select_logits, style, bias, demodulate, eps, noise, activation, gain, clamp):
    gain = default_gain(activation) if gain is None else float(gain)
    B, Cin, H, W = x.shape
    N, Cout, _, k, _ = weight_bank.shape
    a = torch.softmax(select_logits, dim=1)
    a_demod = torch.softmax(select_logits.to(torch.promote_types(select_logits.dtype, torch.float32)), dim=1)
    cols = F.unfold(x * style[:, :, None, None], k, padding=k // 2)                           # [B, R, P]
    cols = cols.transpose(0, 1).reshape(Cin * k * k, B * H * W)                               # [R, B*P]
    z = torch.mm(weight_bank.reshape(N * Cout, Cin * k * k), cols)                            # one GEMM: [N*Cout, B*P]
    y = torch.einsum("bn,nobp->bop", a, z.view(N, Cout, B, H * W)).reshape(B, Cout, H, W)
    if demodulate:
        y = y * gram_demodulation(weight_bank, a_demod, style, eps)[0].to(y.dtype)[:, :, None, None]
    return epilogue_ref(y, bias, noise, activation, gain, clamp)
