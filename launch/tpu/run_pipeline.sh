#!/usr/bin/env bash
# Starts the pipeline on every worker of a TPU VM created by create_vm.sh, in the background
# (it survives the ssh session; follow it with logs.sh).
#
#   NAME=reasoner ZONE=us-east5-b CONFIG=configs/pipeline.py:qwen2_5_7b_gsm8k \
#     WORKDIR=gs://bucket/runs/qwen7b EXTRA="--config.init=/mnt/models/Qwen2.5-7B" \
#     bash launch/tpu/run_pipeline.sh
#
# Every worker runs the same command; --multihost makes each call jax.distributed.initialize(),
# which discovers the pod's coordinator by itself. Rerunning resumes from the last checkpoint
# (also after a preemption: the run checkpoints on SIGTERM). DRY_RUN=1 prints the commands.
set -euo pipefail
source "$(dirname "$0")/common.sh"
ZONE=${ZONE:?set ZONE}
CONFIG=${CONFIG:-configs/pipeline.py:tiny}
WORKDIR=${WORKDIR:?set WORKDIR (a path every worker can write, e.g. gs://bucket/run)}
EXTRA=${EXTRA:-}
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="
  cd ~/reasoner && nohup python -m launch.main --multihost --config=$CONFIG --workdir=$WORKDIR \
    $EXTRA >> ~/reasoner_run.log 2>&1 < /dev/null &
"
echo "started; follow it with: NAME=$NAME ZONE=$ZONE bash launch/tpu/logs.sh"
