"""Exports a model directory (from any stage) as a Hugging Face folder.

  python -m launch.export_hf --checkpoint=runs/tiny/stages/dpo/final --out=hf/tiny-reasoner \
      [--dtype=bfloat16] [--max_shard_mb=2048] [--overwrite]

The result loads with transformers.AutoModelForCausalLM / AutoTokenizer.from_pretrained. A model
directory holding LoRA adapters is exported with them merged into the weights.
"""

from __future__ import annotations

import sys

from absl import app, flags

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model directory (written by save_model).")
_OUT = flags.DEFINE_string("out", None, "Hugging Face folder to write.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                           "dtype of the safetensors weights.")
_MAX_SHARD_MB = flags.DEFINE_integer("max_shard_mb", 2048, "Largest safetensors shard, in MiB.",
                                     lower_bound=1)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it exists and is not empty.")
flags.mark_flags_as_required(["checkpoint", "out"])


def parse_flags(argv):
  """absl flag parsing with a one-line error and exit code 1 instead of usage text."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def run(checkpoint: str, out: str, dtype: str, max_shard_mb: int, overwrite: bool) -> str:
  import os
  from reasoner import sharding
  from reasoner.checkpoint import load_model
  from reasoner.checkpoint.hf_io import export_hf

  if os.path.isdir(out) and os.listdir(out) and not overwrite:  # before loading any weights
    raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
  # Spread the weights over every device (fsdp) so a model bigger than one device still loads.
  params, cfg, tokenizer, _ = load_model(checkpoint, mesh=sharding.make_mesh())
  export_hf(params, cfg, out, tokenizer=tokenizer, max_shard_bytes=max_shard_mb * 2**20,
            dtype=dtype, overwrite=overwrite)
  note = "" if tokenizer is not None else " (no tokenizer in the model directory)"
  return f"exported {cfg.arch} ({cfg.n_params / 1e6:.1f}M params, {dtype}) to {out}{note}"


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    sys.exit(1)
  try:
    print(run(_CHECKPOINT.value, _OUT.value, _DTYPE.value, _MAX_SHARD_MB.value, _OVERWRITE.value))
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
