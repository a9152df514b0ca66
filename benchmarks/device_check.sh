#!/usr/bin/env bash
# The accelerator checks in one run, for a session that is lent a GPU (or TPU) for a few minutes.
# Each part has its own time limit, so one that hangs cannot take the others' time; about
# 8 minutes in all. From the repository root:
#   bash benchmarks/device_check.sh            # logs under $OUT (the device tool's folder) or
#                                              # /tmp/device_check
#   device tool: run(command="bash benchmarks/device_check.sh", timeout_s=560)
# Parts (record their figures in BUILD_NOTES.md):
#   1. attention: dense / blockwise / cudnn (GPU) / splash (TPU) checked against a float32
#      reference and timed forward + backward at 1k, 4k, 8k tokens (benchmarks/attention.py);
#      then packed rows (SFT's; cudnn through its mask bias) at 1k and 4k
#   2. SFT train step on the whole Qwen2.5-0.5B shape, 8 x 2048 tokens, bfloat16: tok/s and MFU
#      against the chip's dense bf16 peak, transformers on the same GPU; then the batch-1
#      bfloat16 decode's fraction of the HBM roofline (benchmarks/train_step.py)
#   3. sampler: the rollout engine at batch 1 and 64 on the 0.5B shape in bfloat16 against
#      transformers' generate on the same GPU (benchmarks/sampler.py)
# Needs jax with the accelerator's plugin, numpy, absl-py, sentencepiece, tokenizers, and torch +
# transformers for the peer columns (each part runs without them, printing "-" there).
set -uo pipefail
out="${OUT:-/tmp/device_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX takes 75% of a GPU's memory at start by default; torch runs beside it in parts 2 and 3.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
py="${PYTHON:-python3}"
status=0

part() {  # part NAME SECONDS ARGS...: run one benchmark with a limit, log to $out/NAME.txt
  local name="$1" limit="$2"
  shift 2
  echo "=== $name (limit ${limit}s): $py -m $*"
  timeout "$limit" "$py" -m "$@" 2>&1 | tee "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "=== $name exited $rc"; status=1; }
}

{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
  "$py" -c "import jax; print('jax', jax.__version__, jax.devices())"; } | tee "$out/devices.txt"

if [ -n "${QUICK:-}" ]; then  # QUICK=1: the same parts at smoke sizes, e.g. to try it on a CPU
  part attention 120 benchmarks.attention --quick
  part attention_packed 90 benchmarks.attention --quick --packed
  part train_step 240 benchmarks.train_step --quick --parts=sft --dtypes=bfloat16 --decode=on \
    --torch_threads=1
  part sampler 150 benchmarks.sampler --quick --dtype=bfloat16 --engine=paged --torch_threads=1
else
  part attention 120 benchmarks.attention --lengths=1024,4096,8192 --batch=2 --steps=5
  part attention_packed 90 benchmarks.attention --packed --lengths=1024,4096 --batch=2 --steps=5
  part train_step 240 benchmarks.train_step --parts=sft --layers=0 --rows=8 --seq=2048 \
    --dtypes=bfloat16 --steps=3 --torch_device=cuda --torch_threads=1
  part sampler 150 benchmarks.sampler --presets=qwen2_5_0_5b --batches=1,64 --dtype=bfloat16 \
    --engine=paged --torch_device=cuda --torch_threads=1 --new_tokens=256
fi
exit $status
