#!/usr/bin/env bash
# Follows the run's output on worker 0 (process 0 prints the progress lines), or on WORKER=n.
#
#   NAME=reasoner ZONE=us-east5-b bash launch/tpu/logs.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
ZONE=${ZONE:?set ZONE}
WORKER=${WORKER:-0}
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker="$WORKER" \
  --command="tail -n 200 -F ~/reasoner_run.log"
