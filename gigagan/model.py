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

<<<<<<< HEAD
import errno
import json
import os
import re
import tempfile
from typing import Optional, Union
=======
from typing import Optional, Sequence, Union
>>>>>>> 301c120 (GigaGAN follows PyTorchModelHubMixin; gigagan export writes only what the run trained; model folders are checked before anything is allocated)

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


<<<<<<< HEAD
def _as_os_error(e: Exception, path: str) -> Exception:
    """A failed write as the OSError it is. safetensors reports one as SafetensorError("... I/O error: File too
    large (os error 27)"), which would read as a bad weights file rather than a full disk at `path`."""
    if isinstance(e, OSError) or type(e).__name__ != "SafetensorError":
        return e
    found = re.search(r"\(os error (\d+)\)", str(e))
    code = int(found.group(1)) if found else errno.EIO
    return OSError(code, os.strerror(code), path)


class GigaGAN(nn.Module):
    def __init__(self, config: Union[GigaGANConfig, str], load_clip_weights: bool = True):
=======
class GigaGAN(nn.Module, HubMixin):
    def __init__(self, config: Union[GigaGANConfig, str], load_clip_weights: bool = True,
                 parts: Optional[Sequence[str]] = None):
>>>>>>> 301c120 (GigaGAN follows PyTorchModelHubMixin; gigagan export writes only what the run trained; model folders are checked before anything is allocated)
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
<<<<<<< HEAD

    def save_pretrained(self, directory: str) -> None:
        """Write config.json and model.safetensors into `directory`, each atomically (temp file, then rename)."""
        save_model = require("safetensors.torch", "save_pretrained").save_model
        os.makedirs(directory, exist_ok=True)
        for name, write in ((CONFIG_NAME, lambda p: open(p, "w").write(self.config.to_json())),
                            (WEIGHTS_NAME, lambda p: save_model(self, p, metadata={"format": "pt"}))):
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
            os.close(fd)
            try:
                try:
                    write(tmp)
                except Exception as e:
                    if (err := _as_os_error(e, os.path.join(directory, name))) is e:
                        raise
                    raise err from e
                os.replace(tmp, os.path.join(directory, name))
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    @classmethod
    def from_pretrained(cls, directory: str, map_location: Optional[Union[str, torch.device]] = "cpu") -> "GigaGAN":
        load_model = require("safetensors.torch", "from_pretrained").load_model
        config_path, weights_path = os.path.join(directory, CONFIG_NAME), os.path.join(directory, WEIGHTS_NAME)
        for path in (config_path, weights_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"from_pretrained: {path} does not exist")
        with open(config_path) as f:
            config = GigaGANConfig.from_dict(json.load(f))
        model = cls(config, load_clip_weights=False)      # the checkpoint holds the tower's weights
        missing, unexpected = load_model(model, weights_path, strict=False)
        if missing or unexpected:
            raise ValueError(f"from_pretrained: {weights_path} does not match the config: missing "
                             f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        return model.to(map_location)
=======
>>>>>>> 301c120 (GigaGAN follows PyTorchModelHubMixin; gigagan export writes only what the run trained; model folders are checked before anything is allocated)
