#!/usr/bin/env bash
# The prepared device check (issue 29, point 3; docs/setup.md): environment, the cuda test tier,
# nerf / e-nerf on fern at factor 4 for 2,000 iterations each, ns-eval, one JSON file.
#   bash scripts/gpu_check.sh                 # on a GPU machine (about 8 minutes on an H100)
#   bash scripts/gpu_check.sh --dry-run       # every step at toy size on the CPU
# Every argument goes to `python -m wcnerf.tools.gpu_check` (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
exec "$PY" -m wcnerf.tools.gpu_check "$@"
