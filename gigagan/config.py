"""Model configurations as dataclasses, and the named presets ("tiny", "small", "paper", and "paper-512": the paper
preset with the 8x upsampler, 64 -> 512).

The paper's appendix table of architecture hyper-parameters (Table A2) was not available to us,
so channels, depths, filter counts, heads and attention resolutions below are our choices. The
"paper" preset is sized so the parameter counts land within a few percent of the paper's
(G 652.5M, D 381.4M, upsampler 359.1M); docs/model.md ("Presets") gives the reasoning.

Per-resolution settings are tuples indexed by block, lowest resolution first for the generator
(4, 8, ..., resolution) and highest first for the discriminator (resolution, ..., 4).
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class TextConfig:
    """The frozen CLIP text tower and the width of the learned text transformers on top of it."""
    clip_model: str = "ViT-L-14"          # an open_clip architecture name, or "custom" (the fields below)
    clip_pretrained: Optional[str] = None  # a local checkpoint file, or an open_clip tag looked up in the cache only
    context_length: int = 77
    clip_width: int = 768                  # used when clip_model == "custom"
    clip_heads: int = 12
    clip_layers: int = 12


@dataclass
class TextEncoderConfig:
    """The learned transformer T that follows CLIP (G, D and the upsampler each own one)."""
    dim: int = 768
    layers: int = 4
    heads: int = 12


@dataclass
class GeneratorConfig:
    resolution: int = 64
    z_dim: int = 128
    w_dim: int = 1024
    mapping_layers: int = 4
    mapping_lr_multiplier: float = 0.01
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    channels: tuple = (1024, 1024, 1024, 768, 384)     # per block: 4, 8, 16, 32, 64
    num_filters: tuple = (8, 8, 8, 8, 4)              # N, the size of each layer's filter bank
    convs_per_block: tuple = (2, 2, 2, 2, 2)
    attn_resolutions: tuple = (8, 16, 32)             # self- and cross-attention after every conv there
    attn_dim_head: int = 64
    conv_clamp: Optional[float] = 256.0               # StyleGAN2's fp16 guard; None disables

    @property
    def resolutions(self) -> tuple:
        return tuple(4 * 2 ** i for i in range(len(self.channels)))


@dataclass
class DiscriminatorConfig:
    resolution: int = 64
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    t_dim: int = 512                                  # the text descriptor t_D that conditions every predictor
    channels: tuple = (1024, 1536, 1536, 1536, 1536, 1792)  # per scale: 64, 32, 16, 8, 4, 2 (input scales + 1)
    attn_resolutions: tuple = (8, 16, 32)
    attn_dim_head: int = 64
    conv_clamp: Optional[float] = 256.0
    mbstd_group: int = 4                              # StyleGAN2's minibatch-std group at the last predictor; 0: off

    @property
    def num_levels(self) -> int:
        """Pyramid levels that enter the trunk: resolution, resolution/2, ..., 4."""
        return len(self.channels) - 1

    @property
    def resolutions(self) -> tuple:
        return tuple(self.resolution // 2 ** i for i in range(len(self.channels)))


@dataclass
class UpsamplerConfig:
    in_resolution: int = 64
    scale: int = 4                                    # 64 -> 256
    z_dim: int = 128
    w_dim: int = 512
    mapping_layers: int = 4
    mapping_lr_multiplier: float = 0.01
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    down_channels: tuple = (256, 512, 768)            # three down blocks: 64->32->16->8
    mid_channels: int = 768
    up_channels: tuple = (1024, 768, 512, 256, 128)   # log2(scale)+3 up blocks: 8->16->...->256
    num_filters: int = 4
    attn_resolutions: tuple = (8, 16)
    attn_dim_head: int = 64
    noise_augment_std: float = 0.05                   # Gaussian noise on the low-res input, train and test
    conv_clamp: Optional[float] = 256.0

    @property
    def out_resolution(self) -> int:
        return self.in_resolution * self.scale


@dataclass
class GigaGANConfig:
    name: str = "custom"
    text: TextConfig = field(default_factory=TextConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    upsampler: Optional[UpsamplerConfig] = field(default_factory=UpsamplerConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "GigaGANConfig":
        """The config a dict (config.json, a checkpoint's "config") describes, every field checked for its type
        and a plausible range before anything is built: a ConfigValueError names the field (generator.w_dim)."""
        return _build(cls, data, "")

    def check(self) -> "GigaGANConfig":
        """This config, checked as from_dict checks a loaded one (for configs built in code or by --set)."""
        return GigaGANConfig.from_dict(json.loads(self.to_json()))


class ConfigValueError(ValueError):
    """A model config field of the wrong type or out of range; .field is its dotted path (generator.w_dim)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}" if field else message)
        self.field = field


# Plausible ranges (inclusive), by field name in every config class: wide enough for any model that fits a
# machine (the paper preset's largest width is 1792), narrow enough that a typo such as w_dim 2000000 (a 32 TB
# mapping network) is refused before anything is built. Tuples hold ints, each checked against the range.
_RANGES = {
    "resolution": (4, 8192), "in_resolution": (4, 8192), "scale": (2, 64),
    "z_dim": (1, 16384), "w_dim": (1, 16384), "t_dim": (1, 16384), "dim": (1, 16384), "mid_channels": (1, 16384),
    "channels": (1, 16384), "down_channels": (1, 16384), "up_channels": (1, 16384), "clip_width": (1, 16384),
    "num_filters": (1, 256), "convs_per_block": (1, 16), "mapping_layers": (1, 64), "layers": (0, 128),
    "clip_layers": (1, 128), "heads": (1, 256), "clip_heads": (1, 256), "context_length": (1, 4096),
    "attn_resolutions": (1, 8192), "attn_dim_head": (1, 1024), "mbstd_group": (0, 1024),
    "mapping_lr_multiplier": (1e-6, 100.0), "noise_augment_std": (0.0, 10.0), "conv_clamp": (1e-3, 1e6),
}
_TUPLE_LENGTH = 32                     # resolutions up to 2^32 px: more entries is not a model


def _subconfigs(kind) -> dict:
    return {"text": TextConfig if kind is GigaGANConfig else TextEncoderConfig, "generator": GeneratorConfig,
            "discriminator": DiscriminatorConfig, "upsampler": UpsamplerConfig}


def _build(kind, value, prefix: str):
    if not isinstance(value, dict):
        raise ConfigValueError(prefix, f"must be a JSON object ({kind.__name__}), got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ConfigValueError(prefix, f"{'has ' if prefix else ''}unknown config keys {unknown} ({kind.__name__} "
                               f"has {', '.join(sorted(names))})")
    hints = typing.get_type_hints(kind)
    kwargs = {}
    for f in dataclasses.fields(kind):
        if f.name not in value:
            continue
        path = f"{prefix}.{f.name}" if prefix else f.name
        v, hint = value[f.name], hints[f.name]
        optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
        if optional:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if v is None and optional:
            kwargs[f.name] = None
            continue
        sub = _subconfigs(kind).get(f.name)
        kwargs[f.name] = _build(sub, v, path) if sub is not None else _checked(path, f.name, hint, v)
    if kind is DiscriminatorConfig and "mbstd_group" not in value:
        kwargs["mbstd_group"] = 0                 # configs saved before the minibatch-std layer existed
    return kind(**kwargs)


def _checked(path: str, name: str, hint, v):
    """v as the field's type (a list for a tuple, an int for a float), in the field's plausible range."""
    def fail(what):
        raise ConfigValueError(path, f"must be {what}, got {v!r}")
    low, high = _RANGES.get(name, (None, None))
    span = f" in [{low}, {high}]" if low is not None else ""
    if hint is str:
        if not isinstance(v, str):
            fail("a string")
        return v
    if hint is int:
        if not isinstance(v, int) or isinstance(v, bool) or (low is not None and not low <= v <= high):
            fail(f"an integer{span}")
        return v
    if hint is float:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or \
                (low is not None and not low <= v <= high):
            fail(f"a finite number{span}")
        return float(v)
    if hint is tuple:
        if not isinstance(v, (list, tuple)) or len(v) > _TUPLE_LENGTH or \
                not all(isinstance(x, int) and not isinstance(x, bool) for x in v) or \
                (low is not None and not all(low <= x <= high for x in v)):
            fail(f"a list of at most {_TUPLE_LENGTH} integers{span}")
        return tuple(v)
    raise TypeError(f"{path}: no check for the type {hint}")   # a new field type: add its check here


def _tiny() -> GigaGANConfig:
    text = TextEncoderConfig(dim=64, layers=1, heads=2)
    return GigaGANConfig(
        name="tiny",
        text=TextConfig(clip_model="custom", context_length=32, clip_width=64, clip_heads=2, clip_layers=2),
        generator=GeneratorConfig(resolution=32, z_dim=32, w_dim=64, text=text, channels=(64, 64, 48, 32),
                                  num_filters=(4, 4, 2, 2), convs_per_block=(1, 1, 1, 1), attn_resolutions=(8,),
                                  attn_dim_head=32),
        discriminator=DiscriminatorConfig(resolution=32, text=text, t_dim=64, channels=(32, 48, 64, 64, 64),
                                          attn_resolutions=(8,), attn_dim_head=32),
        upsampler=UpsamplerConfig(in_resolution=16, scale=4, z_dim=32, w_dim=64, text=text,
                                  down_channels=(32, 48, 64), mid_channels=64, up_channels=(64, 64, 48, 32, 16),
                                  num_filters=2, attn_resolutions=(2, 4), attn_dim_head=32),
    )


def _small() -> GigaGANConfig:
    text = TextEncoderConfig(dim=256, layers=2, heads=4)
    return GigaGANConfig(
        name="small",
        text=TextConfig(clip_model="ViT-B-32"),
        generator=GeneratorConfig(resolution=64, z_dim=128, w_dim=256, text=text, channels=(256, 256, 256, 128, 64),
                                  num_filters=(4, 4, 4, 2, 1), convs_per_block=(2, 2, 2, 2, 2),
                                  attn_resolutions=(8, 16), attn_dim_head=64),
        discriminator=DiscriminatorConfig(resolution=64, text=text, t_dim=256,
                                          channels=(64, 128, 256, 256, 256, 256), attn_resolutions=(8, 16)),
        upsampler=UpsamplerConfig(in_resolution=64, scale=4, w_dim=256, text=text, down_channels=(64, 128, 256),
                                  mid_channels=256, up_channels=(256, 256, 128, 64, 32), num_filters=2),
    )


def _paper() -> GigaGANConfig:
    # The dataclass defaults. G: 1024 channels and 8-filter banks at 4-16 px hold 494M of its 657M.
    # D: a 1536-wide trunk over 6 scales (381M). Upsampler: 4-filter banks, widest at 8-16 px (363M).
    return GigaGANConfig(name="paper")


def _paper_512() -> GigaGANConfig:
    # The paper's text-to-image pipeline at 512 px (its 0.13 s figure): the paper preset with an 8x upsampler,
    # 64 -> 512, one more up block (64 channels, at 512 px) than the 4x one.
    cfg = _paper()
    upsampler = dataclasses.replace(cfg.upsampler, scale=8, up_channels=(1024, 768, 512, 256, 128, 64))
    return dataclasses.replace(cfg, name="paper-512", upsampler=upsampler)


def upsampler_discriminator_config(cfg: GigaGANConfig) -> DiscriminatorConfig:
    """The MS-I/O discriminator that trains the upsampler: the base D's design at the upsampler's output
    resolution, with one more trunk block (of the first block's width) per extra octave."""
    if cfg.upsampler is None:
        raise ValueError(f"preset {cfg.name!r} has no upsampler")
    d, out_res = cfg.discriminator, cfg.upsampler.out_resolution
    extra = int(math.log2(out_res / d.resolution))
    if out_res != d.resolution * 2 ** extra or extra < 0:
        raise ValueError(f"upsampler output {out_res} must be the base discriminator's resolution {d.resolution} "
                         "times a power of two")
    return dataclasses.replace(d, resolution=out_res, channels=(d.channels[0],) * extra + tuple(d.channels))


PRESETS = {"tiny": _tiny, "small": _small, "paper": _paper, "paper-512": _paper_512}


def get_preset(name: str) -> GigaGANConfig:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]()


def apply_overrides(config, items) -> "GigaGANConfig":
    """The config with fields replaced: items are "PATH=VALUE" strings, PATH a dotted field path
    (generator.mapping_lr_multiplier) and VALUE JSON (0.01, [8, 16], true, "ViT-L-14") or a bare string. The
    value must have the field's type (an int where a float is, a list where a tuple is); a ValueError names
    the item otherwise."""
    for item in items:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ValueError(f"{item!r} is not PATH=VALUE")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        config = _replace_path(config, path.split("."), value, item)
    return config.check() if isinstance(config, GigaGANConfig) else config


def _replace_path(node, names, value, item):
    if not dataclasses.is_dataclass(node) or names[0] not in {f.name for f in dataclasses.fields(node)}:
        known = sorted(f.name for f in dataclasses.fields(node)) if dataclasses.is_dataclass(node) else []
        raise ValueError(f"{item!r}: {names[0]!r} is not a field here (fields: {', '.join(known)})")
    current = getattr(node, names[0])
    if len(names) > 1:
        return dataclasses.replace(node, **{names[0]: _replace_path(current, names[1:], value, item)})
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if current is not None and type(value) is not type(current):
        raise ValueError(f"{item!r}: the field holds {type(current).__name__}, got {type(value).__name__}")
    return dataclasses.replace(node, **{names[0]: value})
