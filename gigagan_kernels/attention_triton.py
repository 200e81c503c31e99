"""attention's former Triton module, kept so that code importing it keeps working. The kernels now live in
gigagan_kernels/ops/attention/triton_flash.py, their launch tables in plans.py."""
from .ops.attention.plans import BWD_CONFIGS, DELTA_CONFIG, FWD_CONFIGS, KEY_BIAS_CONFIG, MAX_HEAD_DIM, head_block
from .ops.attention.triton_flash import KIND_DOT, KIND_L2, LOG2E, backward, forward, key_bias

__all__ = ["BWD_CONFIGS", "DELTA_CONFIG", "FWD_CONFIGS", "KEY_BIAS_CONFIG", "KIND_DOT", "KIND_L2", "LOG2E",
           "MAX_HEAD_DIM", "backward", "forward", "head_block", "key_bias"]
