"""adaptive_modconv2d's former Triton module, kept so that code importing it keeps working. The kernels now live
in gigagan_kernels/ops/adaptive_modconv2d/: triton_weights.py and triton_fused.py (the two strategies),
triton_common.py (what both use), plans.py (the launch tables and plans)."""
from .ops.adaptive_modconv2d.common import ACT_LINEAR, ACT_LRELU
from .ops.adaptive_modconv2d.plans import (BUILD_CONFIGS, COLUMNS_CONFIG, CONV_DWEIGHT_CONFIGS, CONV_DX_CONFIGS,
                                           CONV_FWD_CONFIGS, EPILOGUE_CONFIG, FUSED_DBANK_CONFIGS, FUSED_FWD_CONFIGS,
                                           FUSED_SWEEP, MAX_FILTERS, MAX_FUSED_GROUP, MAX_GROUP_B, REDUCE_CONFIGS,
                                           WeightsPlan, bank_pad, fused_configs, fused_unsupported, group_size,
                                           pick_pixel_config, plan_weights, reduce_group, use_fused_tiles,
                                           weights_unsupported)
from .ops.adaptive_modconv2d.triton_common import dot_dtype, dot_precision, epilogue_backward
from .ops.adaptive_modconv2d.triton_fused import fused_backward, fused_forward
from .ops.adaptive_modconv2d.triton_weights import (build_weights, col2im, conv_dweight, conv_dx, conv_forward,
                                                    epilogue_forward, im2col, reduce_dweights, weights_backward,
                                                    weights_forward)

__all__ = ["ACT_LINEAR", "ACT_LRELU", "BUILD_CONFIGS", "COLUMNS_CONFIG", "CONV_DWEIGHT_CONFIGS", "CONV_DX_CONFIGS",
           "CONV_FWD_CONFIGS", "EPILOGUE_CONFIG", "FUSED_DBANK_CONFIGS", "FUSED_FWD_CONFIGS", "FUSED_SWEEP",
           "MAX_FILTERS", "MAX_FUSED_GROUP", "MAX_GROUP_B", "REDUCE_CONFIGS", "WeightsPlan", "bank_pad",
           "build_weights", "col2im", "conv_dweight", "conv_dx", "conv_forward", "dot_dtype", "dot_precision",
           "epilogue_backward", "epilogue_forward", "fused_backward", "fused_configs", "fused_forward",
           "fused_unsupported", "group_size", "im2col", "pick_pixel_config", "plan_weights", "reduce_dweights",
           "reduce_group", "use_fused_tiles", "weights_backward", "weights_forward", "weights_unsupported"]
