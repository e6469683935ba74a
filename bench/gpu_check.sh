#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): on a CUDA machine as is, or with --dry-run on any CPU (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" -m bench.gpu_check "$@"
