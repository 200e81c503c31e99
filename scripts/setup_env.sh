#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) and install the package into it.
# Idempotent: a second run only checks that the pinned requirements are satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${GIGAGAN_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt
# --no-build-isolation: setup.py needs the venv's torch to decide whether to build the CUDA extension.
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, triton; print(f'[setup] torch {torch.__version__}, triton {triton.__version__}, cuda available: {torch.cuda.is_available()}')"
