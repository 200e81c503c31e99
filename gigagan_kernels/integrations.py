"""Drop-in use of the fused ops inside other people's GigaGAN code.

    from gigagan_pytorch import GigaGAN                       # lucidrains/gigagan-pytorch (0.3.0)
    from gigagan_kernels.integrations import patch_gigagan_pytorch
    gan = GigaGAN(...)
    patch_gigagan_pytorch(gan)                                  # -> {"AdaptiveConv2DMod": 12, "SelfAttention": 4, ...}

Each patched module keeps its parameters, buffers and state_dict; only its forward is replaced (on the instance,
as Liger-Kernel's monkey patches do) by the same math through adaptive_modconv2d / attention:
- AdaptiveConv2DMod(fmap, mod, kernel_mod): adaptive_modconv2d(fmap, weights, kernel_mod, style = mod + 1),
  demodulated as lucidrains does (his rsqrt(max(sum, eps)) and our rsqrt(sum + eps) differ by eps = 1e-8 on a
  sum of squares of order 1). Modules with stride or dilation other than 1 are left as they are.
- SelfAttention (L2 with q as its own key, or dot product), with its learned null key/value as key 0.
- CrossAttention, with its text mask. One difference: a row whose keys are all masked attends uniformly to
  every key in lucidrains' code (its fill is -finfo.max, not -inf) and returns zeros here.
- TextAttention (dot product, null key/value, mask).
unpatch_gigagan_pytorch(model) restores the original forwards.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from .ops.adaptive_modconv2d import adaptive_modconv2d
from .ops.attention import attention

_ORIGINAL = "_gigagan_kernels_original_forward"


def _heads_split(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, heads * d, X, Y] -> [B, heads, X * Y, d]."""
    b, c, x, y = t.shape
    return t.reshape(b, heads, c // heads, x * y).transpose(-1, -2)


def _heads_merge_map(t: torch.Tensor, x: int, y: int) -> torch.Tensor:
    """[B, heads, X * Y, d] -> [B, heads * d, X, Y]."""
    b, h, _, d = t.shape
    return t.transpose(-1, -2).reshape(b, h * d, x, y)


def _repeat_batch(t, b):
    """lucidrains' multiscale inputs stack scales along the batch: repeat a per-sample tensor to match."""
    return t if t.shape[0] == b else t.repeat(b // t.shape[0], *([1] * (t.dim() - 1)))


def _adaptive_conv_forward(self, fmap, mod, kernel_mod=None):
    with torch.profiler.record_function("gigagan_kernels.adaptive_modconv2d"):
        b = fmap.shape[0]
        mod = _repeat_batch(mod, b)
        n = self.weights.shape[0]
        if self.adaptive:
            if kernel_mod is None or kernel_mod.numel() == 0:
                raise ValueError("AdaptiveConv2DMod (patched): an adaptive layer needs kernel_mod [B, N]")
            select = _repeat_batch(kernel_mod, b)
        else:
            select = fmap.new_zeros((b, n))                      # one filter: softmax weight 1
        return adaptive_modconv2d(fmap, self.weights, select, mod + 1, demodulate=self.demod, eps=self.eps,
                                  impl=self._gigagan_kernels_impl)


def _self_attention_forward(self, fmap):
    with torch.profiler.record_function("gigagan_kernels.attention"):
        batch, _, x, y = fmap.shape
        fmap = self.norm(fmap)
        q, v = _heads_split(self.to_q(fmap), self.heads), _heads_split(self.to_v(fmap), self.heads)
        k = _heads_split(self.to_k(fmap), self.heads) if self.to_k is not None else q
        null_k, null_v = (t[None, :, None, :].expand(batch, -1, -1, -1) for t in self.null_kv)
        k, v = torch.cat((null_k, k), dim=-2), torch.cat((null_v, v), dim=-2)
        out = attention(q, k, v, kind="dot" if self.dot_product else "l2", scale=self.scale,
                        impl=self._gigagan_kernels_impl)
        return self.to_out(_heads_merge_map(out, x, y))


def _cross_attention_forward(self, fmap, context, mask=None):
    with torch.profiler.record_function("gigagan_kernels.attention"):
        _, _, x, y = fmap.shape
        fmap, context = self.norm(fmap), self.norm_context(context)
        q = _heads_split(self.to_q(fmap), self.heads)
        k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.to_kv(context).chunk(2, dim=-1))
        out = attention(q, k, v, kind="dot", scale=self.scale, key_padding_mask=mask, impl=self._gigagan_kernels_impl)
        return self.to_out(_heads_merge_map(out, x, y))


def _text_attention_forward(self, encodings, mask=None):
    with torch.profiler.record_function("gigagan_kernels.attention"):
        batch = encodings.shape[0]
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for t in self.to_qkv(self.norm(encodings)).chunk(3, dim=-1))
        null_k, null_v = (t[None, :, None, :].expand(batch, -1, -1, -1) for t in self.null_kv)
        k, v = torch.cat((null_k, k), dim=-2), torch.cat((null_v, v), dim=-2)
        if mask is not None:
            mask = F.pad(mask, (1, 0), value=True)              # the null key is always visible
        out = attention(q, k, v, kind="dot", scale=self.scale, key_padding_mask=mask, impl=self._gigagan_kernels_impl)
        return self.to_out(out.transpose(1, 2).flatten(2))


_FORWARDS = {"AdaptiveConv2DMod": _adaptive_conv_forward, "SelfAttention": _self_attention_forward,
             "CrossAttention": _cross_attention_forward, "TextAttention": _text_attention_forward}


def _patchable(module) -> str | None:
    cls = type(module)
    if not cls.__module__.startswith("gigagan_pytorch") or cls.__name__ not in _FORWARDS:
        return None
    if cls.__name__ == "AdaptiveConv2DMod" and (module.stride != 1 or module.dilation != 1 or module.kernel % 2 == 0):
        return None                                              # our op is the stride-1 "same" convolution
    return cls.__name__


def patch_gigagan_pytorch(model: torch.nn.Module, impl: str = "auto") -> dict:
    """Route every AdaptiveConv2DMod, SelfAttention, CrossAttention and TextAttention of a gigagan-pytorch model
    through the fused ops. Returns {class name: how many were patched}; patching twice patches nothing more.
    Parameters and state_dict are untouched; impl is passed to the ops ("auto" by default)."""
    counts = {name: 0 for name in _FORWARDS}
    for module in model.modules():
        name = _patchable(module)
        if name is None or hasattr(module, _ORIGINAL):
            continue
        setattr(module, _ORIGINAL, module.forward)
        module._gigagan_kernels_impl = impl
        module.forward = types.MethodType(_FORWARDS[name], module)
        counts[name] += 1
    return counts


def unpatch_gigagan_pytorch(model: torch.nn.Module) -> int:
    """Restore the original forwards; returns how many modules were restored."""
    restored = 0
    for module in model.modules():
        if hasattr(module, _ORIGINAL):
            del module.forward                                   # the instance attribute: the class's forward again
            delattr(module, _ORIGINAL)
            del module._gigagan_kernels_impl
            restored += 1
    return restored
