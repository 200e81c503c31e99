"""Text conditioning: the frozen CLIP text tower (open_clip) and the learned transformer T on top.

    clip = FrozenCLIPText(TextConfig(...))         # frozen; shared by G, D and the upsampler
    tokens = clip.tokenize(["a red circle"])       # [B, context_length] int64
    feats = clip(tokens)                           # CLIPText: penultimate-layer tokens, mask, EOT index
    t = TextEncoder(clip, TextEncoderConfig(...))(feats)   # TextFeatures: t_local, t_global, mask

Pretrained weights come from a local file (``clip_pretrained="/path/ckpt.safetensors"``) or an
open_clip tag (e.g. "openai") that is already in the local cache; nothing is ever downloaded.
Without weights the tower is randomly initialised. One warning line says so, once per process, where weights
exist to load (an open_clip architecture with published weights); a "custom" tower has none anywhere, and is
random by design.
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import nn

from gigagan_kernels.attention import attention
from gigagan_kernels.nn import EqualizedLinear

from .config import TextConfig, TextEncoderConfig
from .extras import require

_WARNED_RANDOM = set()                  # holds "warned" once the line is out: one per process
_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


@dataclass
class CLIPText:
    """The frozen tower's output for a batch of captions."""
    features: torch.Tensor   # [B, L, clip_width], penultimate layer, after ln_final
    mask: torch.Tensor       # [B, L] bool, True for start, word and end tokens
    eot: torch.Tensor        # [B] int64, index of the end-of-text token

    def __len__(self):
        return self.features.shape[0]

    def index(self, idx) -> "CLIPText":
        return CLIPText(self.features[idx], self.mask[idx], self.eot[idx])

    @staticmethod
    def cat(texts: Sequence["CLIPText"]) -> "CLIPText":
        """Batches stacked along the batch dimension."""
        return CLIPText(torch.cat([t.features for t in texts]), torch.cat([t.mask for t in texts]),
                        torch.cat([t.eot for t in texts]))


@dataclass
class TextFeatures:
    t_local: torch.Tensor    # [B, L, dim]
    t_global: torch.Tensor   # [B, dim], the end-of-text token
    mask: torch.Tensor       # [B, L] bool


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer     # bundled BPE vocabulary, no download
    return SimpleTokenizer(context_length=context_length)


def _tower_shape(cfg: TextConfig) -> dict:
    if cfg.clip_model == "custom":
        return dict(context_length=cfg.context_length, vocab_size=49408, width=cfg.clip_width,
                    heads=cfg.clip_heads, layers=cfg.clip_layers, output_dim=cfg.clip_width)
    open_clip = require("open_clip", "the CLIP text encoder")
    model_cfg = open_clip.get_model_config(cfg.clip_model)
    if model_cfg is None:
        raise ValueError(f"TextConfig.clip_model: unknown open_clip architecture {cfg.clip_model!r}")
    text_cfg = model_cfg["text_cfg"]
    unsupported = set(text_cfg) - {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
    if unsupported:
        raise ValueError(f"TextConfig.clip_model: {cfg.clip_model!r} has a text tower this encoder does not "
                         f"build (fields {sorted(unsupported)}); use a CLIP ViT model such as ViT-L-14")
    if cfg.context_length > text_cfg.get("context_length", 77):
        raise ValueError(f"TextConfig.context_length: {cfg.context_length} exceeds the tower's "
                         f"{text_cfg.get('context_length', 77)}")
    shape = dict(context_length=text_cfg.get("context_length", 77), vocab_size=text_cfg.get("vocab_size", 49408),
                 width=text_cfg["width"], heads=text_cfg["heads"], layers=text_cfg["layers"],
                 output_dim=model_cfg["embed_dim"])
    if "mlp_ratio" in text_cfg:
        shape["mlp_ratio"] = text_cfg["mlp_ratio"]
    return shape


def _cached_checkpoint(model: str, tag: str) -> Optional[str]:
    """The path of an open_clip pretrained checkpoint already on disk, or None. Never downloads."""
    from open_clip.pretrained import get_pretrained_cfg
    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        raise ValueError(f"TextConfig.clip_pretrained: open_clip has no tag {tag!r} for {model!r}")
    if cfg.get("hf_hub"):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        repo, filename = os.path.split(cfg["hf_hub"])      # "org/name/" or "org/name/file.bin"
        for name in ([filename] if filename else []) + ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
            path = try_to_load_from_cache(repo, name)
            if isinstance(path, str) and os.path.isfile(path):
                return path
    if cfg.get("url"):
        path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        if os.path.isfile(path):
            return path
    return None


def read_state_dict(path: str) -> dict:
    """A checkpoint file's tensors (safetensors or torch, weights_only), unwrapped from a "state_dict" key
    and from DDP's "module." prefix."""
    if path.endswith(".safetensors"):
        load_file = require("safetensors.torch", "loading CLIP weights").load_file
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_text_state(path: str) -> dict:
    out = {}
    for key, value in read_state_dict(path).items():
        key = key.removeprefix("text.")
        if key.startswith(_TEXT_PREFIXES):
            out[key] = value
    if not out:
        raise ValueError(f"TextConfig.clip_pretrained: {path} holds no CLIP text-tower weights")
    return out


class RandomCLIPWarning(UserWarning):
    """A CLIP tower that has published weights runs randomly initialised."""


def _has_published_weights(clip_model: str) -> bool:
    """Whether open_clip lists pretrained weights for the architecture (a "custom" tower has none anywhere)."""
    if clip_model == "custom":
        return False
    open_clip = require("open_clip", "the CLIP text encoder")
    return bool(open_clip.list_pretrained_tags_by_model(clip_model))


class FrozenCLIPText(nn.Module):
    """open_clip's CLIP text transformer, frozen, returning penultimate-layer token features."""

    def __init__(self, cfg: TextConfig, load_pretrained: bool = True):
        super().__init__()
        from open_clip.transformer import QuickGELU, TextTransformer
        shape = _tower_shape(cfg)
        self.config = cfg
        self.context_length = cfg.context_length
        self.width = shape["width"]
        act = QuickGELU if cfg.clip_model != "custom" else nn.GELU    # OpenAI's CLIP weights use QuickGELU
        self.tower = TextTransformer(act_layer=act, **shape)
        on_meta = self.tower.token_embedding.weight.device.type == "meta"
        self.pretrained_from = self._load_pretrained(cfg) if load_pretrained and not on_meta else None
        self.requires_grad_(False)
        self.eval()

    def _load_pretrained(self, cfg: TextConfig) -> Optional[str]:
        path = cfg.clip_pretrained
        if path and not os.path.isfile(path) and cfg.clip_model != "custom":
            path = _cached_checkpoint(cfg.clip_model, path)
        elif path and not os.path.isfile(path):
            raise FileNotFoundError(f"TextConfig.clip_pretrained: no file at {path!r}")
        if path:
            missing, unexpected = self.tower.load_state_dict(_load_text_state(path), strict=False)
            missing = [m for m in missing if m != "attn_mask"]
            if missing:
                raise ValueError(f"TextConfig.clip_pretrained: {path} lacks text-tower weights {missing[:5]}")
            return path
        if not _WARNED_RANDOM and _has_published_weights(cfg.clip_model):
            _WARNED_RANDOM.add("warned")
            what = f"tag {cfg.clip_pretrained!r} is not in the local cache" if cfg.clip_pretrained else "none given"
            warnings.warn(f"CLIP text tower {cfg.clip_model!r} is RANDOMLY INITIALISED ({what}); text conditioning "
                          "is weaker: set TextConfig.clip_pretrained (gigagan train --text-encoder-pretrained) to a "
                          "local checkpoint", RandomCLIPWarning, stacklevel=3)
        return None

    def train(self, mode: bool = True):
        return super().train(False)          # frozen: dropout and friends stay in eval mode

    def tokenize(self, captions: Union[str, Sequence[str]]) -> torch.Tensor:
        if isinstance(captions, str):
            captions = [captions]
        if not all(isinstance(c, str) for c in captions):
            raise TypeError("captions must be a list of str")
        return _tokenizer(self.context_length)(list(captions))

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> CLIPText:
        if tokens.dim() != 2 or tokens.dtype != torch.int64:
            raise ValueError(f"FrozenCLIPText: tokens must be [B, L] int64, got {tuple(tokens.shape)} {tokens.dtype}")
        tower = self.tower
        # non_blocking: no stream synchronisation for the copy (CUDA stages pageable memory before returning).
        tokens = tokens.to(tower.token_embedding.weight.device, non_blocking=True)
        L = tokens.shape[1]
        x = tower.token_embedding(tokens) + tower.positional_embedding[:L]
        mask = None if tower.attn_mask is None else tower.attn_mask[:L, :L].to(x.dtype)
        for block in tower.transformer.resblocks[:-1]:       # penultimate layer, as Stable Diffusion 2 and GigaGAN
            x = block(x, attn_mask=mask)
        x = tower.ln_final(x)
        eot = tokens.argmax(dim=-1)                          # the end-of-text id is the largest in CLIP's vocabulary
        valid = torch.arange(L, device=tokens.device)[None, :] <= eot[:, None]
        return CLIPText(x, valid, eot)

    def encode(self, captions: Union[str, Sequence[str]]) -> CLIPText:
        return self(self.tokenize(captions))


class TextTransformerBlock(nn.Module):
    """Pre-norm transformer block whose attention is the fused dot-product op with a padding mask."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"TextEncoderConfig: dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = EqualizedLinear(dim, 3 * dim)
        self.proj = EqualizedLinear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = EqualizedLinear(dim, int(dim * mlp_ratio))
        self.fc2 = EqualizedLinear(int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, kind="dot", key_padding_mask=mask)
        x = x + self.proj(out.transpose(1, 2).reshape(B, L, D))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class TextEncoder(nn.Module):
    """Frozen CLIP tower, then the learned transformer T: gives t_local (tokens) and t_global (EOT token)."""

    def __init__(self, clip: FrozenCLIPText, cfg: TextEncoderConfig):
        super().__init__()
        self.clip = clip
        self.dim = cfg.dim
        self.proj_in = EqualizedLinear(clip.width, cfg.dim)
        self.blocks = nn.ModuleList(TextTransformerBlock(cfg.dim, cfg.heads) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, text: Union[CLIPText, Sequence[str], str]) -> TextFeatures:
        if not isinstance(text, CLIPText):
            text = self.clip.encode(text)
        x = self.proj_in(text.features.to(self.proj_in.weight.device, self.proj_in.weight.dtype))
        mask = text.mask.to(x.device)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        t_global = x[torch.arange(x.shape[0], device=x.device), text.eot.to(x.device)]
        return TextFeatures(x, t_global, mask)
