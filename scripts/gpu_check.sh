#!/usr/bin/env bash
# One command for a lent GPU machine (torch 2.11 + triton 3.6 + nvcc preinstalled, no package index):
# build the CUDA extension in place (sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise), run the whole test
# suite on CUDA tensors (bf16 / large-shape / impl="cuda" tests included), then the full benchmark suite at
# GigaGAN shapes. Results go to benchmarks/results/ (and to $OUT when the device tool runs it).
# The static kernel report is skipped here: it is CI's job on the build machine (triton 3.8).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT_DIR/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT_DIR/gpu.txt"
# The extension must be built against this machine's torch; a build failure fails the check (the tests of
# impl="cuda" would otherwise be skipped silently).
GIGAGAN_KERNELS_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
  "$PY" setup.py build_ext --inplace > "$OUT_DIR/cuda_build.log" 2>&1
build_rc=$?
tail -3 "$OUT_DIR/cuda_build.log"
"$PY" -c "import gigagan_kernels._C, torch; print('cuda extension ops:', [o for o in dir(torch.ops.gigagan_kernels_cuda) if o.endswith(('forward', 'backward'))])" 2>&1 | tee -a "$OUT_DIR/gpu.txt"
"$PY" -m pytest tests -q -rf --maxfail=40 -p no:cacheprovider -k "not kernel_report" 2>&1 | tee "$OUT_DIR/gpu_tests.log" | tail -15
tests_rc=${PIPESTATUS[0]}
"$PY" -m benchmarks --csv benchmarks/results/results.csv 2>&1 | tee "$OUT_DIR/bench.log" | tail -60
bench_rc=${PIPESTATUS[0]}
[ "$OUT_DIR" != benchmarks/results ] && cp benchmarks/results/results.csv benchmarks/results/SUMMARY.md benchmarks/results/*.png "$OUT_DIR"/ 2>/dev/null
echo "cuda build rc=$build_rc tests rc=$tests_rc bench rc=$bench_rc"
exit $(( build_rc || tests_rc || bench_rc ))
