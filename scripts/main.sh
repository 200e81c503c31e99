#!/usr/bin/env bash
# Set everything up and run the main job:
#   1. train the tiny GigaGAN on the built-in captioned-shapes dataset (a GPU if present, else one
#      process per CPU core under torchrun);
#   2. sample a captioned grid and a prompt-interpolation strip from the EMA generator;
#   3. plot the losses (written by train as loss.png);
#   4. run the kernel benchmarks and print their summary.
# Outputs go to $OUT (default runs/main, replaced on each run). Training stops after MINUTES of training
# (default 6.5, which keeps the whole job under 10 minutes on a 2-core CPU) or STEPS steps, whichever
# comes first, so a faster machine trains on more images in the same time.
set -euo pipefail
cd "$(dirname "$0")/.."
# Without a GPU the CUDA extension cannot run, so the main job skips building it ahead (1.5-3 min on 2 cores);
# the test command builds it. GIGAGAN_KERNELS_BUILD_CUDA set by the caller wins.
if ! { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
  export GIGAGAN_KERNELS_BUILD_CUDA=${GIGAGAN_KERNELS_BUILD_CUDA:-0}
fi
# GIGAGAN_SKIP_SETUP=1: the environment is there already (the tests run this script so).
[ "${GIGAGAN_SKIP_SETUP:-0}" = 1 ] || bash scripts/setup_env.sh
PY="${GIGAGAN_VENV:-.venv}/bin/python"

# A failed training stops the job with one line (each rank has printed its own one-line error above), not with
# torchrun's traceback of its agent.
train_failed() {
  echo "main job: training failed (exit code $1); the lines above say why. Nothing was sampled." >&2
  exit 1
}
torchrun_quietly() {
  "$PY" -c '
import signal, sys
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main
try:
    main(sys.argv[1:])
except ChildFailedError as e:
    codes = ", ".join(f"rank {rank}: {failure.exitcode}" for rank, failure in sorted(e.failures.items()))
    sys.exit(f"main job: training failed (exit codes {codes}); the lines above say why. Nothing was sampled.")
except SignalException as e:     # the job was stopped (a scheduler): the ranks have saved and said where
    print(f"main job: stopped by {signal.Signals(e.sigval).name}; the lines above name the checkpoint. Nothing was "
          "sampled.", file=sys.stderr)
    sys.exit(128 + e.sigval)
' "$@"
}
OUT="${OUT:-runs/main}"
STEPS="${STEPS:-1000000}"
MINUTES="${MINUTES:-6.5}"

rm -rf "$OUT"
TRAIN=(-m gigagan train --preset tiny --steps "$STEPS" --max-minutes "$MINUTES" --out "$OUT" --sample-every 200 --ckpt-every 200 --log-every 20)
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$PY" "${TRAIN[@]}" --batch-size 16 || train_failed $?
else
  # On CPU, single-threaded DDP processes (gloo) outrun one multi-threaded process: 34-36 against
  # 32 images/s on a 2-core machine (docs/experiments/2026-11-26-cpu-training-demo.md). The global batch
  # stays 16.
  NPROC="${NPROC:-$(nproc)}"
  for n in 16 8 4 2 1; do if [ "$NPROC" -ge "$n" ]; then NPROC=$n; break; fi; done
  OMP_NUM_THREADS=1 torchrun_quietly --standalone --nproc_per_node "$NPROC" "${TRAIN[@]}" \
      --batch-size $((16 / NPROC))
fi
"$PY" -m gigagan sample --ckpt "$OUT" --out "$OUT/samples.png" --columns 4 \
    --prompt "a large red circle in the center on a blue background" \
    --prompt "a large yellow square in the center on a black background" \
    --prompt "a large white triangle in the center on a green background" \
    --prompt "a large blue circle in the center on a yellow background" \
    --prompt "a small green square in the top left on a white background" \
    --prompt "a small orange circle in the bottom right on a purple background" \
    --prompt "a large black triangle in the center on an orange background" \
    --prompt "a small purple square in the top right on a yellow background"
"$PY" -m gigagan interpolate --ckpt "$OUT" --out "$OUT/interpolation.png" --steps 8 \
    --prompt-a "a large red circle in the center on a blue background" \
    --prompt-b "a large yellow square in the center on a black background"
"$PY" scripts/caption_score.py "$OUT"           # do the samples follow their captions? (chance 14/112)
echo "main job: samples, interpolation strip and loss curve are in $OUT/ (samples.png, interpolation.png, loss.png)"
exec "$PY" -m gigagan bench "$@"
