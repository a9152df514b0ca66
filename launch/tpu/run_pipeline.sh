#!/usr/bin/env bash
# Runs the pipeline on every worker of a TPU VM created by create_vm.sh.
#
#   NAME=reasoner ZONE=us-east5-b CONFIG=configs/pipeline.py:qwen2_5_7b_gsm8k \
#     WORKDIR=gs://bucket/runs/qwen7b EXTRA="--config.init=/mnt/models/Qwen2.5-7B" \
#     bash launch/tpu/run_pipeline.sh
#
# Every worker runs the same command; --multihost makes each call jax.distributed.initialize(),
# which discovers the pod's coordinator by itself. Rerunning resumes from the last checkpoint.
set -euo pipefail
NAME=${NAME:-reasoner}
ZONE=${ZONE:?set ZONE}
CONFIG=${CONFIG:-configs/pipeline.py:tiny}
WORKDIR=${WORKDIR:?set WORKDIR (a path every worker can write, e.g. gs://bucket/run)}
EXTRA=${EXTRA:-}
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="
  cd ~/reasoner && python -m launch.main --multihost --config=$CONFIG --workdir=$WORKDIR $EXTRA \
    2>&1 | tee -a ~/reasoner_run.log
"
