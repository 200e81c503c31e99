"""Fused GigaGAN ops: sample-adaptive modulated convolution and L2 / dot-product attention."""
from .adaptive_modconv import adaptive_modconv2d, adaptive_modconv2d_ref
from .attention import attention, attention_ref
from .backend import BackendUnavailableError, use_impl

__all__ = ["adaptive_modconv2d", "adaptive_modconv2d_ref", "attention", "attention_ref", "use_impl",
           "BackendUnavailableError"]
__version__ = "0.1.0"
