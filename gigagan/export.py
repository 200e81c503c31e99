"""The generator's tensor-only entry as a torch.export program or an ONNX file, with a dynamic batch.

    program = export_generator(G)                      # torch.export.ExportedProgram: (z, tokens) -> pyramid
    images = program.module()(z, G.tokenize(captions))[0]
    export_onnx(G, "generator.onnx")                   # needs onnxscript (the [export] extra)

The trace runs the ops under impl="ref" by default: plain aten ops, which every runtime (ONNX included) takes, and
which keep the batch symbolic. The other backends' dispatchers choose per concrete shape (their decisions are keyed
by it), so exporting under them specialises the batch: pass dynamic_batch=False with them.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from gigagan_kernels import use_impl

from .extras import require
from .generator import Generator

MAX_EXPORT_BATCH = 4096


class SynthesizeEntry(nn.Module):
    """Generator.synthesize(z, tokens, truncation=...) as a module's forward (torch.export takes modules), with the
    pyramid as a tuple."""

    def __init__(self, generator: Generator, truncation: float = 1.0):
        super().__init__()
        self.generator, self.truncation = generator, float(truncation)

    def forward(self, z: torch.Tensor, tokens: torch.Tensor) -> tuple:
        return tuple(self.generator.synthesize(z, tokens, truncation=self.truncation))


def example_inputs(generator: Generator, batch_size: int = 2, device=None) -> tuple:
    """(z, tokens) to trace with: two different captions, so nothing specialises on one."""
    device = device or generator.synthesis.const.device
    captions = ["a red circle on a blue background", "a green square"] * batch_size
    z = torch.randn(batch_size, generator.z_dim, device=device, dtype=generator.synthesis.const.dtype)
    return z, generator.tokenize(captions[:batch_size]).to(device)


def export_generator(generator: Generator, truncation: float = 1.0, dynamic_batch: bool = True,
                     impl: str = "ref", example: Optional[tuple] = None) -> "torch.export.ExportedProgram":
    """torch.export of the entry; with dynamic_batch the batch is a symbol in [1, MAX_EXPORT_BATCH]."""
    generator = generator.eval()
    example = example or example_inputs(generator)
    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
        shapes = ({0: batch}, {0: batch})
    with torch.no_grad(), use_impl(impl):
        return torch.export.export(SynthesizeEntry(generator, truncation), example, dynamic_shapes=shapes)


def export_onnx(generator: Generator, path: str, truncation: float = 1.0, dynamic_batch: bool = True,
                impl: str = "ref") -> str:
    """The entry as an ONNX file through torch.onnx's dynamo exporter (inputs z, tokens; outputs image_0 (full
    resolution) .. image_n). Needs onnxscript: pip install -e ".[export]"."""
    require("onnxscript", "ONNX export")
    program = export_generator(generator, truncation, dynamic_batch, impl)
    levels = len(generator.synthesis.blocks)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with use_impl(impl):
        torch.onnx.export(program, (), path, dynamo=True, input_names=["z", "tokens"],
                          output_names=[f"image_{i}" for i in range(levels)])
    return path
