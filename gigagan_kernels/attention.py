"""Attention with L2-distance or dot-product logits and a key padding mask.

    kind "l2":  logit[i, j] = -scale * ||q_i - k_j||^2     (GigaGAN's Lipschitz self-attention)
    kind "dot": logit[i, j] =  scale * <q_i, k_j>
    out = softmax_j(logits, masked keys -> -inf) @ v;  a row with every key masked returns zeros.

This module holds the public function, validation, the reference ("ref": materialised logits, the
oracle and the naive baseline), the SDPA composite ("torch": torch's scaled_dot_product_attention on
operands that make it compute L2 logits exactly, the CPU default), the per-call choice of "auto", and
the torch.library registration of the flash-style fused paths: the Triton kernels (attention_triton.py)
and the CUDA C++ kernels (csrc/attention.{cu,cpp}, ops gigagan_kernels_cuda::attention_*, whose fake
kernels and autograd are registered here).

Gradient order: first-order backward of the fused paths runs fused kernels; under create_graph=True
(R1 through the discriminator) it is recomputed through the reference, so every order is exact.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Optional

import torch

from . import backend, fused_op

OP_NAME = "attention"
KINDS = ("l2", "dot")


# ----------------------------------------------------------------------------------------------
# Validation: every assumption the kernels make, checked before any launch.
# ----------------------------------------------------------------------------------------------
def validate(q, k, v, kind, scale, key_padding_mask):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D [B, H, L, D], got shape {tuple(t.shape)}")
    if kind not in KINDS:
        raise ValueError(f"attention: kind must be one of {KINDS}, got {kind!r}")
    B, H, Lq, D = q.shape
    if D < 1:
        raise ValueError(f"attention: q and k need a head dim D >= 1 (the default scale is 1/sqrt(D)), "
                         f"got q shape {tuple(q.shape)}")
    if k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"attention: k must have shape [B, H, Lk, D] = [{B}, {H}, Lk, {D}], got {tuple(k.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"attention: v must have shape [B, H, Lk, Dv] = [{B}, {H}, {k.shape[2]}, Dv], "
                         f"got {tuple(v.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"attention: {name} is on {t.device} but q is on {q.device}")
        if t.dtype != q.dtype:
            raise ValueError(f"attention: {name} has dtype {t.dtype} but q has dtype {q.dtype}")
    if not q.dtype.is_floating_point:
        raise ValueError(f"attention: q must be floating point, got dtype {q.dtype}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            got = key_padding_mask.dtype if isinstance(key_padding_mask, torch.Tensor) else type(key_padding_mask)
            raise ValueError(f"attention: key_padding_mask must be a bool tensor (True = attend), got {got}")
        if tuple(key_padding_mask.shape) != (B, k.shape[2]):
            raise ValueError(f"attention: key_padding_mask must have shape [B, Lk] = {(B, k.shape[2])}, "
                             f"got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"attention: key_padding_mask is on {key_padding_mask.device} but q is on {q.device}")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"attention: scale must be a finite positive number, got {scale}")


# ----------------------------------------------------------------------------------------------
# Reference composite: the full logit matrix in plain torch ops (the naive way; the tests' oracle).
# ----------------------------------------------------------------------------------------------
def attention_ref(q, k, v, *, kind="l2", scale=None, key_padding_mask=None):
    """Materialised logits in plain torch ops; differentiable to any order."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qk = q @ k.transpose(-1, -2)
    if kind == "l2":
        sq_dist = q.square().sum(-1, keepdim=True) - 2 * qk + k.square().sum(-1)[..., None, :]
        logits = -scale * sq_dist
    else:
        logits = scale * qk
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, None, :]
        row_has_keys = key_padding_mask.any(dim=-1)[:, None, None, None]
        # Fully masked rows get finite logits (then zero weights) so that softmax never sees all -inf.
        logits = logits.masked_fill(~keep, float("-inf")).masked_fill(~row_has_keys, 0.0)
        probs = torch.softmax(logits, dim=-1) * row_has_keys
    else:
        probs = torch.softmax(logits, dim=-1)
    return probs @ v


# ----------------------------------------------------------------------------------------------
# "torch" composite: SDPA on exact operands, or the materialised form for small CPU calls.
# ----------------------------------------------------------------------------------------------
def attention_materialised(q, k, v, *, kind="l2", scale=None, key_padding_mask=None):
    """The composite's small-call form: L2 logits as dot logits at 2*scale plus the per-key bias -scale*||k||^2
    in one baddbmm, masking folded into the same bias, then softmax and bmm. It materialises Lq x Lk, so it
    serves only calls whose logits are small (torch_form); plain torch ops, so differentiable to any order."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    if kind == "l2":
        bias, alpha = -scale * k.square().sum(-1), 2.0 * scale                     # [B, H, Lk]
    else:
        bias, alpha = q.new_zeros((B, H, Lk)), scale
    if key_padding_mask is not None:
        bias = bias.masked_fill(~key_padding_mask[:, None, :], float("-inf"))
    logits = torch.baddbmm(bias.reshape(B * H, 1, Lk), q.reshape(B * H, Lq, D),
                           k.reshape(B * H, Lk, D).transpose(1, 2), alpha=alpha)
    if key_padding_mask is not None:
        row_has_keys = key_padding_mask.any(dim=-1).repeat_interleave(H)[:, None, None]   # [B*H, 1, 1]
        logits = logits.masked_fill(~row_has_keys, 0.0)
        probs = torch.softmax(logits, dim=-1) * row_has_keys
    else:
        probs = torch.softmax(logits, dim=-1)
    return torch.bmm(probs, v.reshape(B * H, Lk, v.shape[3])).view(B, H, Lq, v.shape[3])


TORCH_FORMS = ("sdpa", "materialised")
# CPU: below this many logits per head the materialised form measured faster on the 2-core build machine
# (256 x 77 masked: 3.7 against 9.4 ms fwd+bwd; 64 x 65: 6.4 against 13.9), above it SDPA (256 x 256: 9.6
# against 14.0). CUDA always takes SDPA: flash-style, O(L) memory.
CPU_MATERIALISED_MAX_LOGITS = 32768
_forced_torch_form = threading.local()


@contextlib.contextmanager
def use_torch_form(form: str):
    """Force the torch composite's form ("sdpa" or "materialised"), e.g. to test or time each."""
    if form not in TORCH_FORMS:
        raise ValueError(f"use_torch_form: form must be one of {TORCH_FORMS}, got {form!r}")
    with backend.thread_override(_forced_torch_form, form):
        yield


def torch_form(Lq: int, Lk: int, device: torch.device) -> str:
    """Which exact form the torch composite runs for a call."""
    forced = getattr(_forced_torch_form, "value", None)
    if forced is not None:
        return forced
    return "materialised" if device.type == "cpu" and Lq * Lk <= CPU_MATERIALISED_MAX_LOGITS else "sdpa"


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def sdpa_operands(q, k, v, kind, scale):
    """(q', k', v', scale') such that torch's dot-product SDPA on them is our attention, or the inputs as they
    are for dot logits.

    L2 logits -s||q_i - k_j||^2 equal 2s (q_i . k_j - ||k_j||^2 / 2) up to the row term -s||q_i||^2, which
    cancels in the softmax. So q' = [q, 1, 1, 0...] and k' = [k, hi, lo, 0...] with hi + lo = -||k_j||^2 / 2:
    the norm is reduced in fp32 and split into two parts of the input dtype (hi = the rounded value, lo = its
    rounding error), so it reaches the tensor cores' fp32 accumulator with ~16 (bf16) or ~22 (fp16) bits,
    against the fused kernels' 24-bit fp32 bias; in fp32 and fp64 lo is 0 and the bias is exact. All three
    are padded to one head dim, a multiple of 8, because the flash backend takes only equal head dims."""
    if kind == "dot":
        return q, k, v, scale
    B, H, Lq, D = q.shape
    Lk, Dv = k.shape[2], v.shape[3]
    width = _round_up(max(D + 2, Dv), 8)
    norm_dtype = torch.promote_types(k.dtype, torch.float32)                                    # fp32, or fp64
    bias = -0.5 * torch.linalg.vector_norm(k, dim=-1, dtype=norm_dtype).square()               # [B, H, Lk]
    hi = bias.to(k.dtype)
    lo = (bias - hi.to(norm_dtype)).to(k.dtype)
    q_aug = torch.cat([q, q.new_ones(B, H, Lq, 2), q.new_zeros(B, H, Lq, width - D - 2)], dim=-1)
    k_aug = torch.cat([k, hi[..., None], lo[..., None], k.new_zeros(B, H, Lk, width - D - 2)], dim=-1)
    v_aug = v if Dv == width else torch.cat([v, v.new_zeros(B, H, Lk, width - Dv)], dim=-1)
    return q_aug, k_aug, v_aug, 2.0 * scale


def attention_sdpa(q, k, v, *, kind="l2", scale=None, key_padding_mask=None):
    """torch's scaled_dot_product_attention on the operands of sdpa_operands: flash-style on CUDA (flash
    backend without a mask, memory-efficient or cuDNN with one) and on CPU, so O(L) memory. A row whose
    keys are all masked attends to every key inside SDPA (which would otherwise return NaN there) and is
    zeroed after. First-order gradients are SDPA's own; attention() wraps this for higher orders."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    Dv = v.shape[-1]
    q_, k_, v_, sdpa_scale = sdpa_operands(q, k, v, kind, scale)
    attn_mask, row_has_keys = None, None
    if key_padding_mask is not None:
        row_has_keys = key_padding_mask.any(dim=-1)                                             # [B]
        attn_mask = (key_padding_mask | ~row_has_keys[:, None])[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, attn_mask=attn_mask, scale=sdpa_scale)
    if out.shape[-1] != Dv:
        out = out[..., :Dv]
    if row_has_keys is not None:
        out = out * row_has_keys[:, None, None, None].to(out.dtype)
    return out


def _reference_grads(q, k, v, kind, scale, mask, grad_out):
    """Gradients through the reference with create_graph=True, so that higher orders are exact."""
    return fused_op.reference_vjp(lambda q_, k_, v_: attention_ref(q_, k_, v_, kind=kind, scale=scale,
                                                                   key_padding_mask=mask), (q, k, v), grad_out)


class _SdpaAttention(torch.autograd.Function):
    """attention_sdpa with SDPA's first-order backward, and the reference's under create_graph=True (SDPA's
    flash and memory-efficient backwards are not differentiable). The forward records SDPA's graph on
    detached inputs and the first backward replays and frees it; a second backward through the same graph
    (retain_graph=True) records it again."""

    @staticmethod
    def _record(q, k, v, kind, scale, mask):
        inner = [t.detach().requires_grad_(t.requires_grad) for t in (q, k, v)]
        with torch.enable_grad():
            return attention_sdpa(*inner, kind=kind, scale=scale, key_padding_mask=mask), inner

    @staticmethod
    def forward(ctx, q, k, v, kind, scale, mask):
        out, inner = _SdpaAttention._record(q, k, v, kind, scale, mask)
        ctx.save_for_backward(q, k, v)
        ctx.inner = (out, inner)
        ctx.options = (kind, scale, mask)
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out):
        kind, scale, mask = ctx.options
        q, k, v = ctx.saved_tensors
        if torch.is_grad_enabled():
            return (*_reference_grads(q, k, v, kind, scale, mask, grad_out), None, None, None)
        out, inner = ctx.inner if ctx.inner is not None else _SdpaAttention._record(q, k, v, kind, scale, mask)
        ctx.inner = None                                  # SDPA's saved tensors go with the replay
        wanted = [t for t in inner if t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out) if wanted else ())
        return (*(next(grads) if t.requires_grad else None for t in inner), None, None, None)


# ----------------------------------------------------------------------------------------------
# Triton path as torch.library custom ops: a forward op and a backward op, autograd glued on.
# ----------------------------------------------------------------------------------------------
_KIND_CODES = {"dot": 0, "l2": 1}


def _mask_for_kernel(mask):
    return None if mask is None else mask.contiguous().view(torch.int8)


@torch.library.custom_op("gigagan_kernels::attention_triton", mutates_args=())
def _triton_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: str, scale: float,
                   key_padding_mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    from . import attention_triton as kernels
    return kernels.forward(q, k, v, _KIND_CODES[kind], scale, _mask_for_kernel(key_padding_mask))


@_triton_fwd_op.register_fake
def _forward_fake(q, k, v, kind, scale, key_padding_mask):
    B, H, Lq, _ = q.shape
    return q.new_empty((B, H, Lq, v.shape[-1])), q.new_empty((B, H, Lq), dtype=torch.float32)


@torch.library.custom_op("gigagan_kernels::attention_triton_backward", mutates_args=())
def _triton_bwd_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, kind: str, scale: float,
                   key_padding_mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import attention_triton as kernels
    return kernels.backward(grad_out, q, k, v, out, lse, _KIND_CODES[kind], scale, _mask_for_kernel(key_padding_mask))


@_triton_bwd_op.register_fake
def _backward_fake(grad_out, q, k, v, out, lse, kind, scale, key_padding_mask):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, kind, scale, mask = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask)
    ctx.options = (kind, scale)
    ctx.trailing_inputs = 3                              # kind, scale, key_padding_mask


def _first_order(backward_op):
    """The first-order backward of a fused forward op, through its backward op (same arguments)."""
    def first_order(ctx, grad_out):
        q, k, v, out, lse, mask = ctx.saved_tensors
        return backward_op(grad_out.contiguous(), q, k, v, out, lse, *ctx.options, mask)
    return first_order


def _fused_reference_grads(ctx, grad_out):
    q, k, v, _out, _lse, mask = ctx.saved_tensors
    return _reference_grads(q, k, v, *ctx.options, mask, grad_out)


fused_op.register_autograd(_triton_fwd_op, _setup_context, _first_order(_triton_bwd_op), _fused_reference_grads)


# ----------------------------------------------------------------------------------------------
# CUDA C++ path (csrc/attention.cpp registers the ops; fake kernels and autograd added here at import).
# ----------------------------------------------------------------------------------------------
CUDA_MAX_HEAD_DIM = 128  # kAttentionMaxHeadDim in csrc/attention.h


def _cuda_backward(*args):
    return backend.cuda_extension_ops().attention_backward(*args)


fused_op.register_cuda_op(OP_NAME, _forward_fake, _backward_fake, _setup_context, _first_order(_cuda_backward),
                          _fused_reference_grads)


# ----------------------------------------------------------------------------------------------
# Choosing a backend: auto's per-call order, from the cost model.
# ----------------------------------------------------------------------------------------------
_CUDA_ORDERS: dict = {}


def auto_cuda_order(q_shape, k_shape, v_shape, kind, masked, dtype) -> tuple:
    """impl="auto"'s order of preference on CUDA for one call, fastest first as the cost model predicts
    forward + backward (gigagan_kernels/cost_model.py, fit to the committed H200 measurements): the SDPA
    composite ("torch") or the Triton kernels; Triton only where its kernels run (head dims <= 128, fp32 /
    fp16 / bf16); the CUDA extension last (opt-in: unmeasured since its rewrite on mma.sync, and predicted
    slower than Triton's wgmma forward; benchmarks/NOTES.md, "CUDA C++ v2"). Under torch.compile Triton
    comes first, since the composite is first-order only there. A plain dict cache, which dynamo traces."""
    key = (tuple(q_shape), tuple(k_shape), tuple(v_shape), kind, bool(masked), dtype)
    if key not in _CUDA_ORDERS:
        from . import cost_model
        from .attention_triton import MAX_HEAD_DIM
        (B, H, Lq, D), Lk, Dv = q_shape, k_shape[2], v_shape[3]
        shape = cost_model.AttentionShape(B, H, Lq, Lk, D, Dv, kind, bool(masked),
                                          4 if dtype == torch.float32 else 2)
        candidates = ["torch"]
        if backend.triton_installed() and max(D, Dv) <= MAX_HEAD_DIM and dtype in backend.KERNEL_DTYPES:
            candidates.append("triton")
        candidates.sort(key=lambda f: cost_model.attention_seconds(f, shape))                       # stable
        if max(D, Dv) <= CUDA_MAX_HEAD_DIM:
            candidates.append("cuda")
        _CUDA_ORDERS[key] = tuple(candidates)
    order = _CUDA_ORDERS[key]
    if torch.compiler.is_compiling() and "triton" in order:
        order = ("triton",) + tuple(c for c in order if c != "triton")
    return order


# ----------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------
def attention(q, k, v, *, kind="l2", scale=None, key_padding_mask=None, impl="auto"):
    """Softmax attention with L2-distance ("l2") or dot-product ("dot") logits.

    Args:
        q: [B, H, Lq, D]; k: [B, H, Lk, D]; v: [B, H, Lk, Dv]. One device and dtype (fp32/fp16/bf16).
           k may be the same tensor as q (tied query/key weights, GigaGAN's self-attention).
        kind: "l2" (logit = -scale ||q_i - k_j||^2) or "dot" (logit = scale <q_i, k_j>).
        scale: default 1/sqrt(D).
        key_padding_mask: [B, Lk] bool, True = attend. A row with every key masked returns zeros.
        impl: "auto", "ref", "torch", "triton" or "cuda" (see gigagan_kernels.backend). "torch" is torch's
            scaled_dot_product_attention on exact operands (attention_sdpa); on CUDA "auto" takes it or the
            Triton kernels per call, whichever the cost model predicts faster (auto_cuda_order).

    Accumulation is fp32; the SDPA, Triton and CUDA paths keep O(L) memory (only the row log-sum-exp is
    saved). Gradients of every order are supported for every impl: create_graph=True backwards run through
    the reference. One exception: under torch.compile, impl="torch" is first-order (auto picks Triton there).
    """
    validate(q, k, v, kind, scale, key_padding_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    order = (auto_cuda_order(q.shape, k.shape, v.shape, kind, key_padding_mask is not None, q.dtype)
             if impl == "auto" and q.device.type == "cuda" else None)
    chosen = backend.resolve_impl(impl, q.device, OP_NAME, q.dtype, cuda_order=order)
    if chosen == "ref" or q.numel() == 0 or k.shape[2] == 0:
        return attention_ref(q, k, v, kind=kind, scale=scale, key_padding_mask=key_padding_mask)
    if chosen == "torch" and torch_form(q.shape[2], k.shape[2], q.device) == "materialised":
        return attention_materialised(q, k, v, kind=kind, scale=scale, key_padding_mask=key_padding_mask)
    if chosen == "torch":
        if torch.compiler.is_compiling():
            # dynamo traces SDPA itself; the Function's replayed inner graph is not traceable (first order only).
            return attention_sdpa(q, k, v, kind=kind, scale=scale, key_padding_mask=key_padding_mask)
        return _SdpaAttention.apply(q, k, v, kind, scale, key_padding_mask)
    if chosen == "triton":
        from . import attention_triton as kernels
        max_head_dim, forward_op = kernels.MAX_HEAD_DIM, _triton_fwd_op
    else:
        max_head_dim, forward_op = CUDA_MAX_HEAD_DIM, backend.cuda_op(OP_NAME)
    for name, dim in (("q", q.shape[-1]), ("v", v.shape[-1])):
        if dim > max_head_dim:
            raise ValueError(f"attention(impl={chosen!r}): {name} head dim {dim} exceeds {max_head_dim}")
    out, _ = forward_op(q, k, v, kind, scale, key_padding_mask)
    return out
