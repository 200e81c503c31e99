"""adaptive_modconv2d's former module, kept so that code importing it keeps working. The op now lives in the
package gigagan_kernels/ops/adaptive_modconv2d/: the public function, one file per backend, dispatch.py."""
from .ops.adaptive_modconv2d import adaptive_modconv2d, adaptive_modconv2d_ref, adaptive_modconv2d_torch, validate
from .ops.adaptive_modconv2d.common import (ACTIVATIONS, DEFAULT_WORKSPACE_MB, LRELU_SLOPE, OP_NAME, WORKSPACE_ENV,
                                            default_gain, workspace_bytes)
from .ops.adaptive_modconv2d.cuda import CUDA_MAX_FILTERS
from .ops.adaptive_modconv2d.dispatch import (STRATEGIES, STRATEGY_ENV, auto_cuda_order, triton_strategy,
                                              use_strategy)
from .ops.adaptive_modconv2d.torch_forms import TORCH_FORMS, torch_form

__all__ = ["ACTIVATIONS", "CUDA_MAX_FILTERS", "DEFAULT_WORKSPACE_MB", "LRELU_SLOPE", "OP_NAME", "STRATEGIES",
           "STRATEGY_ENV", "TORCH_FORMS", "WORKSPACE_ENV", "adaptive_modconv2d", "adaptive_modconv2d_ref",
           "adaptive_modconv2d_torch", "auto_cuda_order", "default_gain", "torch_form", "triton_strategy",
           "use_strategy", "validate", "workspace_bytes"]
