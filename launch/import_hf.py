"""Imports a Hugging Face Llama / Qwen2 folder as a model directory (weights, config, tokenizer).

  python -m launch.import_hf --hf_dir=/path/to/Qwen2.5-0.5B-Instruct --out=models/qwen05 \
      [--dtype=bfloat16] [--overwrite]

The tokenizer comes from the same folder; when it lacks the reasoning tags they are added and,
if the tokenizer then outgrows the model's vocab, the embedding grows (new rows = mean row) to
the next multiple of 128.
"""

from __future__ import annotations

import sys

from absl import app, flags

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face model folder (config.json, *.safetensors).")
_OUT = flags.DEFINE_string("out", None, "Model directory to write.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                           "Stored parameter dtype.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it exists and is not empty.")
flags.mark_flags_as_required(["hf_dir", "out"])


def parse_flags(argv):
  """absl flag parsing with a one-line error and exit code 1 instead of usage text."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def run(hf_dir: str, out: str, dtype: str, overwrite: bool) -> str:
  import os
  from reasoner.checkpoint import save_model
  from reasoner.checkpoint.hf_io import import_hf
  from reasoner.checkpoint.vocab import grow_vocab
  from reasoner.tokenizer import load_tokenizer, padded_vocab_size

  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
  params, cfg = import_hf(hf_dir, dtype=dtype)
  has_tok = any(os.path.exists(os.path.join(hf_dir, f)) for f in ("tokenizer.json", "tokenizer.model"))
  tokenizer = load_tokenizer(hf_dir) if has_tok else None
  notes = []
  if tokenizer is None:
    notes.append("no tokenizer in the folder")
  elif tokenizer.vocab_size > cfg.vocab_size:
    new = padded_vocab_size(tokenizer.vocab_size, 128)
    notes.append(f"vocab grown {cfg.vocab_size} -> {new} for tokenizer ({tokenizer.vocab_size} tokens)")
    params, cfg = grow_vocab(params, cfg, new)
  save_model(out, params, cfg, tokenizer=tokenizer,
             metadata={"source": "hf", "hf_dir": os.path.abspath(hf_dir), "dtype": dtype})
  return (f"imported {cfg.arch} ({cfg.n_params / 1e6:.1f}M params, {dtype}) from {hf_dir} to {out}"
          + "".join(f"; {n}" for n in notes))


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    sys.exit(1)
  try:
    print(run(_HF_DIR.value, _OUT.value, _DTYPE.value, _OVERWRITE.value))
  except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
