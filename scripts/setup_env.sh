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
"$VENV/bin/python" -m pip install -q --upgrade pip "setuptools>=77"
"$VENV/bin/python" -m pip install -q -r requirements.txt
"$VENV/bin/python" -m pip install -q --no-deps -r benchmarks/requirements-peer.txt
# The editable install compiles nothing (seconds); it reruns only when the packaging changed.
# --no-build-isolation: the venv's setuptools (>= 77, above) builds it, so no index is needed.
stamp="$VENV/.gigagan-kernels-install"
want="$(cat setup.py pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c "import gigagan_kernels" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
# Left by the install-time build before 0.2.0; the extension now lives in the user cache (docs/install.md).
rm -f gigagan_kernels/_C.*.so
# The CUDA extension, ahead of its first impl="cuda" use, where nvcc and a CUDA build of torch are present: once
# per version of csrc/ and torch (1.5-3 min on 2 cores), then nothing. GIGAGAN_KERNELS_BUILD_CUDA=0 skips it,
# =1 fails without a toolchain.
case "${GIGAGAN_KERNELS_BUILD_CUDA:-}" in
  0) ;;
  1) "$VENV/bin/python" -m gigagan_kernels build-cuda ;;
  "") "$VENV/bin/python" -m gigagan_kernels build-cuda --skip-without-toolchain ;;
  *) echo "[setup] GIGAGAN_KERNELS_BUILD_CUDA=$GIGAGAN_KERNELS_BUILD_CUDA: expected 1, 0 or unset" >&2; exit 2 ;;
esac
"$VENV/bin/python" -c "import torch, triton; print(f'[setup] torch {torch.__version__}, triton {triton.__version__}, cuda available: {torch.cuda.is_available()}')"
