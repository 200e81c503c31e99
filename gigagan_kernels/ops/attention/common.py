"""attention's contract, shared by every backend: its constants and the input validation that runs before any
launch."""
from __future__ import annotations

import math

import torch

OP_NAME = "attention"
KINDS = ("l2", "dot")


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
