#!/usr/bin/env bash
# Deletes the TPU VM (the workdir on gs:// is kept).
#
#   NAME=reasoner ZONE=us-east5-b bash launch/tpu/delete_vm.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
ZONE=${ZONE:?set ZONE}
run gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet
