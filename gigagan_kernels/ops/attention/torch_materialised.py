"""Backend "torch", its small-call form: the logits materialised in one baddbmm (see dispatch.torch_form)."""
from __future__ import annotations

import math

import torch


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
