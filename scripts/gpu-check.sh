#!/usr/bin/env bash
# GPU check for the DCASE recipe: random-weight PaSST-S + RoBERTa-large-sized model, a few steps in bf16 and
# fp16, DDP over all visible GPUs when there are several, then evaluate and predict on synthetic clips.
# No network needed; under 5 minutes on one GPU. `--tiny` runs small shapes (CI runs that on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 AUDIOFIND_OFFLINE=1
PY="${PYTHON:-python}"
GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
if [ "$GPUS" -gt 1 ]; then
    exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS" -m audiofind.research.gpu_check "$@"
fi
exec "$PY" -m audiofind.research.gpu_check "$@"
