"""The static kernel report compiles every dispatchable Triton config for sm_80 and sm_90, reads every kernel of
the built CUDA extension, and passes --check."""
import os
import subprocess
import sys

from benchmarks import kernel_report


def test_kernel_report_check_passes():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the report compiles for real
    proc = subprocess.run([sys.executable, "-m", "benchmarks.kernel_report", "--check"], capture_output=True,
                          text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert " 0 with problems" in proc.stdout
    # Every kernel the dispatcher can launch appears, for both targets.
    for name in ("_fused_fwd_kernel", "_fused_dx_kernel", "_fused_dbank_kernel", "_build_weights_kernel",
                 "_reduce_dweights_kernel", "_conv_fwd_kernel", "_conv_dx_kernel", "_conv_dweight_kernel",
                 "_im2col_kernel", "_col2im_kernel", "_epilogue_fwd_kernel", "_epilogue_bwd_kernel",
                 "_finish_grads_kernel", "_attn_fwd_kernel", "_attn_bwd_delta_kernel", "_attn_bwd_kernel",
                 "_key_bias_kernel"):
        assert f"| {name}" in proc.stdout
    assert "sm_80" in proc.stdout and "sm_90" in proc.stdout
    if kernel_report.cuda_extension_path() is not None:
        for name in ("build_weights_kernel", "im2col_kernel", "col2im_kernel", "epilogue_forward_kernel",
                     "epilogue_backward_kernel", "reduce_weight_grad_kernel",
                     "key_bias_kernel", "attention_forward_kernel", "attention_delta_kernel",
                     "attention_backward_kernel", "attention_scale_grad_q_kernel"):
            for target in ("sm_80", "sm_90"):
                assert any(line.startswith("| cuda:") and f"| {name} " in line and f"| {target} " in line
                           for line in proc.stdout.splitlines()), (name, target)


def test_check_flags_spills_and_missing_tensor_cores():
    ok = dict(error="", spill=0, spill_ops=0, tensor_cores=True, hmma=4, hgmma=0)
    assert kernel_report.problems(ok) == []
    assert kernel_report.problems(dict(ok, spill=16, spill_ops=2)) == ["spills 16 B (2 STL/LDL)"]
    assert kernel_report.problems(dict(ok, hmma=0)) == ["no tensor-core instructions"]
    assert kernel_report.problems(dict(ok, error="CompilationError: x")) == ["compile error"]
    assert kernel_report.problems(dict(ok, target="sm_90", shared=232448)) == []
    assert kernel_report.problems(dict(ok, target="sm_80", shared=232448)) == [
        "232448 B of shared memory, over sm_80's 166912 B per block"]
