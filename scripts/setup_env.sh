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
"$VENV/bin/python" -m pip install -q --no-deps -r benchmarks/requirements-peer.txt
# --no-build-isolation: setup.py needs the venv's torch to decide whether to build the CUDA extension.
# The editable install rebuilds the extension every time (1.5 min on 2 cores), so it is skipped when
# nothing it depends on changed: csrc/, setup.py, pyproject.toml, torch and the build switch.
stamp="$VENV/.gigagan-kernels-install"
want="$(cat setup.py pyproject.toml csrc/* 2>/dev/null | sha256sum | cut -d' ' -f1) $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') ${GIGAGAN_KERNELS_BUILD_CUDA:-auto}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c "import gigagan_kernels" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
"$VENV/bin/python" -c "import torch, triton; print(f'[setup] torch {torch.__version__}, triton {triton.__version__}, cuda available: {torch.cuda.is_available()}')"
