#!/usr/bin/env bash
# Copies the run's results (report, metrics, curves, eval results, the final models' configs)
# from WORKDIR to OUT (default ./results/NAME). A gs:// workdir is read with gsutil; a path on
# the VM with scp from worker 0.
#
#   NAME=reasoner ZONE=us-east5-b WORKDIR=gs://bucket/runs/qwen7b bash launch/tpu/fetch.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
WORKDIR=${WORKDIR:?set WORKDIR}
OUT=${OUT:-results/$NAME}
run mkdir -p "$OUT"
if [[ "$WORKDIR" == gs://* ]]; then
  run gsutil -m cp "$WORKDIR/report.json" "$WORKDIR/metrics.jsonl" "$WORKDIR/*_curves.png" "$OUT/"
  run gsutil -m cp -r "$WORKDIR/stages/*/eval.json" "$OUT/"
else
  ZONE=${ZONE:?set ZONE}
  run gcloud compute tpus tpu-vm scp --zone="$ZONE" --worker=0 \
    "$NAME:$WORKDIR/report.json" "$NAME:$WORKDIR/metrics.jsonl" "$OUT/"
fi
echo "results in $OUT"
