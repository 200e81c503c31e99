"""AdamW for G and D as the paper sets it: weight decay on attention weights only."""
from __future__ import annotations

import torch


def param_groups(module: torch.nn.Module, weight_decay: float) -> list:
    """Two AdamW groups of the trainable parameters: attention weights (decayed), everything else (undecayed)."""
    from gigagan_kernels.nn import CrossAttention, L2SelfAttention

    from ..text import TextTransformerBlock
    decay, seen = [], set()
    for m in module.modules():
        if isinstance(m, (L2SelfAttention, CrossAttention)):
            weights = [p for name, p in m.named_parameters() if name.endswith("weight")]
        elif isinstance(m, TextTransformerBlock):
            weights = [m.qkv.weight, m.proj.weight]
        else:
            continue
        for p in weights:
            if p.requires_grad and id(p) not in seen:
                decay.append(p)
                seen.add(id(p))
    rest = [p for p in module.parameters() if p.requires_grad and id(p) not in seen]
    rest = list({id(p): p for p in rest}.values())
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def adamw(groups: list, cfg) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8)


def with_lr_multiplier(groups: list, params, multiplier: float, lr: float) -> list:
    """The groups with `params` moved into groups of their own at lr * multiplier (each keeps its weight
    decay): e.g. a faster learning rate for some layers."""
    chosen = {id(p) for p in params}
    out, fast = [], []
    for group in groups:
        kept = [p for p in group["params"] if id(p) not in chosen]
        moved = [p for p in group["params"] if id(p) in chosen]
        out.append({**group, "params": kept})
        if moved:
            fast.append({**group, "params": moved, "lr": lr * multiplier})
    return out + fast
