"""The GigaGAN container: one frozen CLIP text tower shared by G, D and the upsampler, plus sharing.

    model = GigaGAN(get_preset("tiny"))
    model.save_pretrained("ckpt/")                 # config.json, model.safetensors, README.md (the model card)
    model = GigaGAN.from_pretrained("ckpt/")       # or a hub id, "org/name"; model.push_to_hub("org/name")

    with torch.device("meta"):                     # paper scale, allocating nothing
        print(GigaGAN(get_preset("paper")).parameter_counts())

`parts` builds some of the networks only: a base run's export holds the generator, an upsampler run's the
upsampler (each with the CLIP tower), and from_pretrained builds what the file holds (gigagan/hub.py).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import nn

from .config import GigaGANConfig, get_preset
from .discriminator import Discriminator
from .generator import Generator
from .hub import CONFIG_NAME, PARTS, WEIGHTS_NAME, HubMixin, ModelFolderError
from .text import FrozenCLIPText
from .upsampler import Upsampler

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "GigaGAN", "ModelFolderError", "count_parameters"]


def count_parameters(module: nn.Module, trainable: bool = True) -> int:
    """Parameters of `module` that are (or, with trainable=False, are not) trained, each counted once."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) in seen or p.requires_grad != trainable:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


class GigaGAN(nn.Module, HubMixin):
    def __init__(self, config: Union[GigaGANConfig, str], load_clip_weights: bool = True,
                 parts: Optional[Sequence[str]] = None):
        super().__init__()
        if isinstance(config, str):
            config = get_preset(config)
        if parts is None:
            parts = PARTS if config.upsampler is not None else PARTS[:2]
        if set(parts) - set(PARTS) or ("upsampler" in parts and config.upsampler is None):
            raise ValueError(f"GigaGAN: parts must be some of {PARTS} (the upsampler only with an upsampler "
                             f"config), got {tuple(parts)}")
        self.config = config
        self.training_info = {}                       # what training.json says: trained network, step, metrics
        self.clip = FrozenCLIPText(config.text, load_pretrained=load_clip_weights)
        self.generator = Generator(config.generator, self.clip) if "generator" in parts else None
        self.discriminator = Discriminator(config.discriminator, self.clip) if "discriminator" in parts else None
        self.upsampler = Upsampler(config.upsampler, self.clip) if "upsampler" in parts else None

    def parameter_counts(self) -> dict:
        """Trainable parameters per network built (the frozen CLIP tower shared by all of them counted apart)."""
        counts = {name: count_parameters(getattr(self, name)) for name in PARTS if getattr(self, name) is not None}
        counts["clip_text_frozen"] = count_parameters(self.clip, trainable=False)
        return counts
