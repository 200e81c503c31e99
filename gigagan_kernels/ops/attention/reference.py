"""Backend "ref": the full logit matrix in plain torch ops (the naive way), the oracle of every test and the
naive baseline of every benchmark; and the reference's vector-Jacobian product, which every fused backward
runs under create_graph=True."""
from __future__ import annotations

import math

import torch

from ... import fused_op


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



def reference_grads(q, k, v, kind, scale, mask, grad_out):
    """Gradients through the reference with create_graph=True, so that higher orders are exact."""
    return fused_op.reference_vjp(lambda q_, k_, v_: attention_ref(q_, k_, v_, kind=kind, scale=scale,
                                                                   key_padding_mask=mask), (q, k, v), grad_out)
