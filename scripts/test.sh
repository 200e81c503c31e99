#!/usr/bin/env bash
# Set everything up, lint, and run the test suite. Without a GPU the Triton kernels run in the interpreter
# (TRITON_INTERPRET=1, set by tests/conftest.py) and GPU-only tests are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# Lint first (rules in pyproject.toml [tool.ruff]): a finding fails the run before any test.
"${GIGAGAN_VENV:-.venv}/bin/ruff" check .
exec "${GIGAGAN_VENV:-.venv}/bin/python" -m pytest "$@"
