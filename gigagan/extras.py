"""The optional dependencies of the model and trainer, named by the pip extra that installs them.

The package alone installs the ops (torch, triton, numpy, ninja); the extra `train` adds what `import gigagan` and
the `gigagan` command need, `eval` what `gigagan eval` needs. A part whose package is missing raises an ImportError
with a pip command that installs it, at import or first use: the extra from this checkout when the package runs
from one, else the package itself (no package index has gigagan-kernels).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shlex

# module -> (pip package, extra)
PACKAGES = {
    "open_clip": ("open_clip_torch", "train"), "torchvision": ("torchvision", "train"),
    "safetensors": ("safetensors", "train"), "PIL": ("pillow", "train"), "tqdm": ("tqdm", "train"),
    "webdataset": ("webdataset", "train"), "braceexpand": ("webdataset", "train"),
    "matplotlib": ("matplotlib", "train"), "huggingface_hub": ("huggingface_hub", "train"),
    "torchmetrics": ("torchmetrics", "eval"), "torch_fidelity": ("torch-fidelity", "eval"), "scipy": ("scipy", "eval"),
    "onnxscript": ("onnxscript", "export"), "onnx": ("onnx", "export"),
}


def checkout_root() -> str | None:
    """The repository this package runs from (editable install or PYTHONPATH), or None for an installed wheel."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        with open(os.path.join(root, "pyproject.toml")) as f:
            return root if 'name = "gigagan-kernels"' in f.read() else None
    except OSError:
        return None


def install_command(package: str, extra: str) -> str:
    """A pip command that installs `package` here: `pip install -e '<checkout>[extra]'` from a checkout."""
    root = checkout_root()
    if root is None:
        return f"pip install {package} (the [{extra}] extra of gigagan-kernels)"
    return f"pip install -e {shlex.quote(f'{root}[{extra}]')}"


def _message(purpose: str, module: str) -> str:
    package, extra = PACKAGES[module]
    return f"{purpose} needs {package}, which is not installed: {install_command(package, extra)}"


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the pip extra that installs it."""


def require(module: str, purpose: str):
    """Import `module` (a top-level name or a dotted submodule) or raise MissingExtraError for `purpose`."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if top not in PACKAGES or (e.name and e.name.split(".")[0] != top):
            raise                                          # a different failure inside the package
        raise MissingExtraError(_message(purpose, top), name=top) from e


def check(module: str, purpose: str) -> None:
    """Raise MissingExtraError for `purpose` when `module` is not installed, without importing it."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(_message(purpose, module), name=module)
