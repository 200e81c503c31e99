"""attention's former module, kept so that code importing it keeps working. The op now lives in the package
gigagan_kernels/ops/attention/: the public function, one file per backend, dispatch.py."""
from .ops.attention import attention, attention_materialised, attention_ref, attention_sdpa, validate
from .ops.attention.common import KINDS, OP_NAME
from .ops.attention.cuda import CUDA_MAX_HEAD_DIM
from .ops.attention.dispatch import (CPU_MATERIALISED_MAX_LOGITS, TORCH_FORMS, auto_cuda_order, torch_form,
                                     use_torch_form)
from .ops.attention.torch_sdpa import sdpa_operands

__all__ = ["CPU_MATERIALISED_MAX_LOGITS", "CUDA_MAX_HEAD_DIM", "KINDS", "OP_NAME", "TORCH_FORMS", "attention",
           "attention_materialised", "attention_ref", "attention_sdpa", "auto_cuda_order", "sdpa_operands",
           "torch_form", "use_torch_form", "validate"]
