"""The thin GigaGAN model and training package built on gigagan_kernels.

    from gigagan import GigaGAN, get_preset
    model = GigaGAN(get_preset("tiny"))
    images = model.generator(torch.randn(2, model.generator.z_dim), ["a red circle", "a blue square"])[0]

    pipe = GigaGANPipeline.from_pretrained("models/tiny")        # a folder from `gigagan export`
    pipe("a red circle", seed=0).images[0].save("circle.png")
"""
from .config import (DiscriminatorConfig, GeneratorConfig, GigaGANConfig, TextConfig, TextEncoderConfig,
                     UpsamplerConfig, get_preset, PRESETS)
from .discriminator import Discriminator, image_pyramid
from .extras import check as _check
from .generator import Generator, MappingNetwork
from .model import GigaGAN, count_parameters
from .pipeline import GigaGANPipeline, GigaGANPipelineOutput
from .text import FrozenCLIPText, TextEncoder
from .upsampler import Upsampler, upsample_tiled

# The model's optional packages (the [train] extra), named when missing; the modules above import them lazily.
for _module in ("open_clip", "safetensors", "PIL"):
    _check(_module, "gigagan (the model: CLIP text tower, pretrained folders, images)")

__all__ = ["GigaGAN", "GigaGANPipeline", "GigaGANPipelineOutput",
           "Generator", "Discriminator", "Upsampler", "MappingNetwork", "TextEncoder", "FrozenCLIPText",
           "GigaGANConfig", "GeneratorConfig", "DiscriminatorConfig", "UpsamplerConfig", "TextConfig",
           "TextEncoderConfig", "PRESETS", "get_preset", "image_pyramid", "upsample_tiled", "count_parameters"]
