#!/usr/bin/env bash
# Install nestir and its test tools. torch==2.13.0 first when no torch is present (on these
# machines it is a local CPU build; any other request would pull several GB of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[test]"
