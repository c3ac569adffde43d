#!/usr/bin/env bash
# Distributed training with torchrun: bash dist_train.sh CONFIG GPUS [train.py options]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT from the environment.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [--work-dir DIR] [--amp] [--cfg-options k=v ...]" >&2
    exit 1
fi
CONFIG=$1
GPUS=$2
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
exec torchrun \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
    --nproc_per_node="$GPUS" \
    "$HERE/train.py" "$CONFIG" --launcher pytorch "$@"
