"""Fused GigaGAN ops: sample-adaptive modulated convolution and L2 / dot-product attention. Each op is a package
under gigagan_kernels/ops/."""
from .autotune import autotune_report, tune
from .backend import BackendUnavailableError
# Through the former modules' names, which import them first: gigagan_kernels.attention stays the function even
# after a later `import gigagan_kernels.attention`.
from .adaptive_modconv import adaptive_modconv2d, adaptive_modconv2d_ref
from .attention import attention, attention_ref
from .dispatcher import NondeterministicBackendError, candidates, use_impl

__all__ = ["adaptive_modconv2d", "adaptive_modconv2d_ref", "attention", "attention_ref", "use_impl", "candidates",
           "tune", "autotune_report", "BackendUnavailableError", "NondeterministicBackendError"]
__version__ = "0.2.0"
