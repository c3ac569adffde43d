#!/usr/bin/env bash
# Distributed evaluation with torchrun: bash dist_test.sh CONFIG CHECKPOINT GPUS [test.py options]
# e.g. --aug-test for multi-scale + flip. Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [--aug-test] [--eval mIoU] [--cfg-options k=v ...]" >&2
    exit 1
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
HERE=$(cd "$(dirname "$0")" && pwd)
exec torchrun \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
    --nproc_per_node="$GPUS" \
    "$HERE/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
