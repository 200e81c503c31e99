#!/usr/bin/env bash
# One command for a lent GPU machine (torch 2.11 + triton 3.6 preinstalled, no package index):
# the whole test suite on CUDA tensors (bf16 / large-shape GPU tests included), then the full benchmark
# suite at GigaGAN shapes. Results go to benchmarks/results/ (and to $OUT when the device tool runs it).
# The static kernel report is skipped here: it is CI's job on the build machine (triton 3.8).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-benchmarks/results}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT_DIR/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT_DIR/gpu.txt"
"$PY" -m pytest tests -q -x -p no:cacheprovider -k "not kernel_report" 2>&1 | tee "$OUT_DIR/gpu_tests.log" | tail -15
tests_rc=${PIPESTATUS[0]}
"$PY" -m benchmarks --csv benchmarks/results/results.csv 2>&1 | tee "$OUT_DIR/bench.log" | tail -60
bench_rc=${PIPESTATUS[0]}
[ "$OUT_DIR" != benchmarks/results ] && cp benchmarks/results/results.csv benchmarks/results/SUMMARY.md benchmarks/results/*.png "$OUT_DIR"/ 2>/dev/null
echo "tests rc=$tests_rc bench rc=$bench_rc"
exit $(( tests_rc || bench_rc ))
