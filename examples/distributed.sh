#!/usr/bin/env bash
# Two processes on the CPU (gloo) under torchrun: the same synthesis on both ranks, each computing
# its share of every batch; rank 0 writes the run directory. Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export OMP_NUM_THREADS=1
# the Python API on your own loaders (each rank its DistributedSampler shard)
$PY -m torch.distributed.run --standalone --nproc_per_node 2 examples/own_data.py --out runs/distributed_api
# the CLI: a zoo model on the embedded data
$PY -m torch.distributed.run --standalone --nproc_per_node 2 -m nestir.cli synthesize lenet-300-100 \
    --data mnist5k --device cpu --out runs/distributed_cli --force --quiet "$@"
