#!/usr/bin/env bash
# One command for a lent GPU machine (torch 2.11 + triton 3.6 + nvcc preinstalled, no package index).
# Phases, each under its own time limit so that one slow phase cannot cost the others their results:
#   build  the CUDA extension against this machine's torch (sm_90 unless TORCH_CUDA_ARCH_LIST says otherwise), with
#          `python -m gigagan_kernels build-cuda`, into the user cache (once per version of csrc/ and torch),
#   model  meanwhile, the model tests on the GPU (ref, torch and Triton; not the extension);
#   cuda   first once the extension is built: every impl="cuda" test (each xdist worker a process of its own, so
#          a crash loses one test, not the verdicts of the others), then compute-sanitizer memcheck on a small
#          forward + backward of each op (scripts/cuda_memcheck.py);
#   ops    the other op tests on CUDA tensors: bf16 / fp16 / fp32, large shapes, Triton, against float64;
#   host   every path's device kernels and host syncs at issue 29's counted call, on the card (scripts/count_kernels.py:
#          the card's own count sees what the CUDA extension's C++ ops launch), then the harness's host mode
#          (python -m benchmarks --host: kernels, syncs, CPU and enqueue microseconds per call, dispatch microseconds);
#          then the model's host path (scripts/host_check.py): a generator forward and a training step under
#          torch.cuda.set_sync_debug_mode("error"), one reduce-overhead capture of Generator.synthesize; then the
#          compiled end-to-end cases (G_fwd_b1_compiled, upsampler_b1_compiled) and the paper preset's pipeline at
#          batch 1, 64 -> 256 and 64 -> 512, eager and compiled, against the paper's 0.13 s;
#   bench  the benchmarks at GigaGAN shapes: adaptive_modconv2d in bf16 and fp16 first (every provider: ref, peer,
#          torch, triton and its two strategies, auto, cuda, the floors), then the end-to-end cases (the training
#          step with auto among them), then attention; CSV, SUMMARY.md, plots. BENCH_ARGS replaces that plan with
#          one `python -m benchmarks` call;
#   train  the README's main job on this GPU with what time is left: train the tiny preset, sample, score.
# GPU_CHECK_PHASES picks some (default: all); GPU_CHECK_SECONDS is the whole script's wall clock.
# Missing Python packages (open_clip_torch, webdataset, the peer gigagan-pytorch and what it imports, ninja for the
# CUDA build: the box has no index) install from .whl/ if present:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_28_x86_64 --platform any -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 \
#       webdataset==1.0.2 braceexpand==0.1.7 gigagan-pytorch==0.3.0 beartype==0.23.1 einops==0.8.2 kornia==0.9.0 \
#       kornia-rs==0.2.0 ema-pytorch==0.8.3 numerize==0.12 accelerate==1.15.0 huggingface-hub==2.4.0 ninja==1.13.2
# A package that still cannot import leaves its provider out of the benchmarks, with the reason in bench.log.
# Outputs go to $OUT (at most 8 files; the plots, summary and samples in one archive) or benchmarks/results.
# The trainer tests (test_train, test_data) are CPU tests (torchrun with gloo) and the static kernel report
# needs CI's triton; both are CI's job.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The extension's targets are part of its build folder's name: the build and every process that loads it agree.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PY=${PYTHON:-python3}
OUT_DIR=$(mkdir -p "${OUT:-benchmarks/results}" && cd "${OUT:-benchmarks/results}" && pwd)
WORK=$(mktemp -d)
BUDGET=${GPU_CHECK_SECONDS:-470}      # under 8 minutes, building included
PHASES=",${GPU_CHECK_PHASES:-build,model,cuda,ops,host,bench,train},"
START=$SECONDS
left() { echo $(( BUDGET - (SECONDS - START) )); }
# cap MAX RESERVE: a phase's limit, at most MAX seconds and leaving RESERVE for the phases after it
cap() { local l; l=$(left); l=$(( l - $2 )); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 10 ] && l=10; echo "$l"; }
want() { [[ "$PHASES" == *",$1,"* ]]; }
LOG="$OUT_DIR/gpu_check.log"
say() { echo "[gpu_check +$((SECONDS - START))s] $*" | tee -a "$LOG"; }
# Per-test verdicts from pytest -v (xdist prints one line per test as it ends), so a phase cut by its time
# limit, or a worker that crashed, still says which tests passed and failed.
verdicts() { for v in PASSED FAILED ERROR SKIPPED; do printf '%s %s  ' "$(grep -c " $v " "$1")" "$v"; done
             echo "(crashed workers: $(grep -c 'node down' "$1"))"; }
build_rc=0 model_rc=0 cuda_rc=0 memcheck_rc=0 ops_rc=0 host_rc=0 compiled_rc=0 bench_rc=0 train_rc=0

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$LOG"
if [ -d .whl ] && ! "$PY" -c "import open_clip, ninja" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:$WORK/site" PATH="$PATH:$WORK/site/bin"
fi
"$PY" -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)" | tee -a "$LOG"

say "phases ${PHASES//,/ }"
if want build; then
  # Into the user cache, where every later impl="cuda" use (the test workers, the benchmarks) finds it.
  ( MAX_JOBS=${MAX_JOBS:-8} timeout 240 "$PY" -m gigagan_kernels build-cuda --verbose \
      > "$OUT_DIR/cuda_build.log" 2>&1 ) &
  build_pid=$!
fi
if want model; then
  timeout "$(cap 120 $(( BUDGET * 3 / 5 )))" "$PY" -m pytest tests/test_model.py tests/test_latent.py tests/test_benchmarks.py \
    -v -rfE -p no:cacheprovider -n 6 > "$WORK/model_tests.log" 2>&1
  model_rc=$?
  say "model tests rc=$model_rc: $(verdicts "$WORK/model_tests.log")"
fi
if want build; then
  wait $build_pid
  build_rc=$?
  say "cuda build rc=$build_rc: $(grep -c 'registers' "$OUT_DIR/cuda_build.log") kernels reported by ptxas"
  "$PY" -c "from gigagan_kernels import backend; print('cuda extension ops:', {op: backend.cuda_extension_has(op) for op in ('adaptive_modconv2d', 'attention')})" 2>&1 | tee -a "$LOG"
fi

if want cuda && [ "$build_rc" -eq 0 ]; then
  timeout "$(cap 90 $(( BUDGET / 2 )))" "$PY" -m pytest tests/test_adaptive_modconv.py tests/test_attention.py \
    tests/test_backend.py -k cuda -v -rfE -p no:cacheprovider -n 8 > "$WORK/cuda_tests.log" 2>&1
  cuda_rc=$?
  say "impl=cuda tests rc=$cuda_rc: $(verdicts "$WORK/cuda_tests.log")"
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  if [ -n "$sanitizer" ]; then
    timeout "$(cap 60 $(( BUDGET * 2 / 5 )))" "$sanitizer" --tool memcheck --error-exitcode 3 --print-limit 20 \
      "$PY" scripts/cuda_memcheck.py > "$OUT_DIR/memcheck.log" 2>&1
    memcheck_rc=$?
    say "compute-sanitizer memcheck rc=$memcheck_rc: $(grep -c 'Invalid\|ERROR SUMMARY: [1-9]' "$OUT_DIR/memcheck.log") findings; $(grep 'ERROR SUMMARY' "$OUT_DIR/memcheck.log")"
  else
    say "compute-sanitizer not found: no memcheck"
  fi
fi
if want ops; then
  timeout "$(cap 150 $(( BUDGET * 2 / 5 )))" "$PY" -m pytest tests/test_adaptive_modconv.py tests/test_attention.py \
    tests/test_backend.py -k "not cuda" -v -rfE -p no:cacheprovider -n 12 > "$WORK/op_tests.log" 2>&1
  ops_rc=$?
  say "op tests rc=$ops_rc: $(verdicts "$WORK/op_tests.log")"
fi
cat "$WORK"/model_tests.log "$WORK"/cuda_tests.log "$WORK"/op_tests.log > "$OUT_DIR/tests.log" 2>/dev/null

if want host; then
  timeout "$(cap 60 $(( BUDGET / 3 )))" "$PY" scripts/count_kernels.py --check > "$OUT_DIR/kernel_counts.log" 2>&1
  host_rc=$?
  say "kernel counts rc=$host_rc: $(grep -c 'kernels (' "$OUT_DIR/kernel_counts.log") paths counted, $(grep -c FAIL "$OUT_DIR/kernel_counts.log") failures"
  timeout "$(cap 60 $(( BUDGET / 4 )))" "$PY" -m benchmarks --host --quick --csv "$WORK/results/results.csv" --no-plots \
    >> "$OUT_DIR/bench.log" 2>&1 || host_rc=$?
  say "host mode rc=$host_rc"
  timeout "$(cap 150 $(( BUDGET / 3 )))" "$PY" scripts/host_check.py > "$OUT_DIR/host_check.log" 2>&1 || host_rc=$?
  say "host check rc=$host_rc: $(grep -c '^ok ' "$OUT_DIR/host_check.log") ok, $(grep -c '^FAILED ' "$OUT_DIR/host_check.log") failed"
  # Compiles take tens of seconds each: impl auto only, and the paper's networks one pair at a time.
  timeout "$(cap 240 $(( BUDGET / 4 )))" "$PY" -m benchmarks.bench_e2e --providers auto --quick \
    --shapes G_fwd_b1_compiled,upsampler_b1_compiled,paper_pipeline_512_b1,paper_pipeline_512_b1_compiled,paper_pipeline_256_b1,paper_pipeline_256_b1_compiled \
    --csv "$WORK/results/results.csv" >> "$OUT_DIR/bench.log" 2>&1
  compiled_rc=$?
  say "compiled e2e cases rc=$compiled_rc: $(grep -c 'compiled in' "$OUT_DIR/bench.log") compiles"
fi

if want bench; then
  # A CUDA kernel that faults poisons the process's context: then time the others and leave cuda out.
  no_cuda=()
  if [ "$build_rc" -ne 0 ] || [ "$memcheck_rc" -ne 0 ] || grep -q "illegal memory access\|CUDA error\|unspecified launch failure" "$WORK/cuda_tests.log" 2>/dev/null; then
    no_cuda=(--providers ref,ref_cl,peer,torch,torch:gram,triton,triton_weights,triton_fused,auto,floor,floor_cl,floor_weights,triton_fused@stages3,triton_fused@o64,triton_fused@r16,sdpa_bias,torch:sdpa-flash,torch:sdpa-cudnn,lucidrains,lucidrains_patched)
    say "cuda left out of the benchmarks (build rc=$build_rc, memcheck rc=$memcheck_rc, or a CUDA fault in its tests)"
  fi
  bench() {  # bench SECONDS ARGS...: one benchmarks run into the shared CSV, under its own time limit
    local limit=$1; shift
    timeout "$limit" "$PY" -m benchmarks --csv "$WORK/results/results.csv" --no-plots "$@" >> "$OUT_DIR/bench.log" 2>&1
  }
  if [ -n "${BENCH_ARGS:-}" ]; then
    read -r -a bench_args <<< "$BENCH_ARGS"
    bench "$(cap 220 $(( BUDGET / 8 )))" "${bench_args[@]}" "${no_cuda[@]}"; bench_rc=$?
  else
    bench "$(cap 120 110)" --ops adaptive_modconv2d --dtypes bfloat16,float16 "${no_cuda[@]}"; bench_rc=$?
    bench "$(cap 60 50)" --ops e2e "${no_cuda[@]}" || bench_rc=$?
    bench "$(cap 70 10)" --ops attention "${no_cuda[@]}" || bench_rc=$?
  fi
  say "benchmarks rc=$bench_rc"
  cp "$WORK/results/results.csv" "$OUT_DIR/" 2>/dev/null
  "$PY" -c "import sys; from benchmarks import summary; print(summary.write(sys.argv[1], sys.argv[2], True)[0])" \
    "$WORK/results/results.csv" "$WORK/results" >> "$OUT_DIR/bench.log" 2>&1
  "$PY" -m benchmarks.cost_model --csv "$WORK/results/results.csv" > "$OUT_DIR/cost_model.md" 2>&1
fi

if want train; then
  minutes=$("$PY" -c "print(max(0.2, ($(left) - 75) / 60))")
  timeout "$(cap 400 25)" "$PY" -m gigagan train --preset tiny --steps 1000000 --max-minutes "$minutes" --out "$WORK/main" \
    --batch-size 16 --sample-every 200 --ckpt-every 200 --log-every 20 --no-progress > "$OUT_DIR/train.log" 2>&1
  train_rc=$?
  timeout "$(cap 60 5)" "$PY" -m gigagan sample --ckpt "$WORK/main" --out "$WORK/main/samples.png" --columns 4 \
      --prompt "a large red circle in the center on a blue background" \
      --prompt "a large yellow square in the center on a black background" \
      --prompt "a large white triangle in the center on a green background" \
      --prompt "a large blue circle in the center on a yellow background" >> "$OUT_DIR/train.log" 2>&1
  timeout "$(cap 60 5)" "$PY" scripts/caption_score.py "$WORK/main" >> "$OUT_DIR/train.log" 2>&1
  say "train rc=$train_rc, last log record: $(tail -1 "$WORK/main/log.jsonl" 2>/dev/null | cut -c1-400)"
fi

extras=$(cd "$WORK" && ls results/SUMMARY.md results/*.png main/*.png main/log.jsonl 2>/dev/null)
[ -n "$extras" ] && tar -czf "$OUT_DIR/extras.tgz" -C "$WORK" $extras
[ "$OUT_DIR" = "$PWD/benchmarks/results" ] && cp "$WORK"/results/* benchmarks/results/ 2>/dev/null
say "done: build rc=$build_rc model tests rc=$model_rc cuda tests rc=$cuda_rc memcheck rc=$memcheck_rc op tests rc=$ops_rc host rc=$host_rc compiled e2e rc=$compiled_rc bench rc=$bench_rc train rc=$train_rc"
exit $(( build_rc || model_rc || cuda_rc || memcheck_rc || ops_rc || host_rc || compiled_rc || bench_rc || train_rc ))
