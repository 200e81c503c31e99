#!/usr/bin/env bash
# Set everything up and run the main job: the kernel benchmark suite on the available device,
# appended to benchmarks/results/results.csv, with the markdown summary printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${GIGAGAN_VENV:-.venv}/bin/python" -m gigagan bench "$@"
