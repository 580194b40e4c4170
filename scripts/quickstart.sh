#!/usr/bin/env bash
# The main job on a fresh machine: install, then run it on the embedded default data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m nestir.cli synthesize lenet-300-100 --out runs/quickstart --force --test-data mnist-idx:../shared/data/mnist "$@"
