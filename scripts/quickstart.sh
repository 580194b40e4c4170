#!/usr/bin/env bash
# The main job on a fresh machine: install, then run it on the embedded default data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the official MNIST test set, when present beside the checkout, is used for the final report only
test=()
[ -d ../shared/data/mnist ] && test=(--test-data mnist-idx:../shared/data/mnist)
# the defaults: dense reference first, then NeST from the sparse seed under the same recipe; one teacher
# instead of the default three keeps the quickstart within 3 minutes on 2 cores, installation included
exec "${PYTHON:-python3}" -m nestir.cli synthesize lenet-300-100 --out runs/quickstart --force --teachers 1 \
    "${test[@]}" "$@"
