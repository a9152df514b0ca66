#!/usr/bin/env bash
# Creates a TPU VM (single host or pod slice) and installs reasoner on every worker.
#
#   ZONE=us-east5-b ACCELERATOR=v5p-32 NAME=reasoner-v5p bash launch/tpu/create_vm.sh
#
# Needs an authenticated gcloud with a project set. The repository is copied from this checkout.
# SPOT=1 asks for a spot (preemptible) VM; DRY_RUN=1 prints the commands instead.
set -euo pipefail
source "$(dirname "$0")/common.sh"
ZONE=${ZONE:?set ZONE, e.g. us-east5-b}
ACCELERATOR=${ACCELERATOR:-v5litepod-8}
VERSION=${VERSION:-v2-alpha-tpuv5}

run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
  --version="$VERSION" ${SPOT:+--spot}
run tar -C "$REPO_DIR" --exclude=.git --exclude=runs -czf /tmp/reasoner.tgz .
run gcloud compute tpus tpu-vm scp /tmp/reasoner.tgz "$NAME":~/reasoner.tgz --zone="$ZONE" --worker=all
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command='
  set -e
  mkdir -p ~/reasoner && tar -C ~/reasoner -xzf ~/reasoner.tgz
  cd ~/reasoner
  pip install -q -r requirements.txt
  pip install -q -U "jax[tpu]"
  python -c "import jax; print(jax.process_index(), jax.device_count())"
'
echo "TPU VM $NAME ready in $ZONE; run: NAME=$NAME ZONE=$ZONE bash launch/tpu/run_pipeline.sh"
