"""The optional dependencies of the model and trainer, named by the pip extra that installs them.

`pip install gigagan-kernels` installs the ops alone (torch, triton, numpy); `gigagan-kernels[train]` adds what
`import gigagan` and the `gigagan` command need, `[eval]` what `gigagan eval` needs. A part whose package is
missing raises an ImportError that says which extra to install, at import or first use.
"""
from __future__ import annotations

import importlib
import importlib.util

# module -> (pip package, extra)
PACKAGES = {
    "open_clip": ("open_clip_torch", "train"), "torchvision": ("torchvision", "train"),
    "safetensors": ("safetensors", "train"), "PIL": ("pillow", "train"), "tqdm": ("tqdm", "train"),
    "webdataset": ("webdataset", "train"), "braceexpand": ("webdataset", "train"),
    "matplotlib": ("matplotlib", "train"),
    "torchmetrics": ("torchmetrics", "eval"), "torch_fidelity": ("torch-fidelity", "eval"), "scipy": ("scipy", "eval"),
}


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
        package, extra = PACKAGES[top]
        raise MissingExtraError(f"{purpose} needs {package}, which is not installed: "
                                f"pip install 'gigagan-kernels[{extra}]'", name=top) from e


def check(module: str, purpose: str) -> None:
    """Raise MissingExtraError for `purpose` when `module` is not installed, without importing it."""
    if importlib.util.find_spec(module) is None:
        package, extra = PACKAGES[module]
        raise MissingExtraError(f"{purpose} needs {package}, which is not installed: "
                                f"pip install 'gigagan-kernels[{extra}]'", name=module)
