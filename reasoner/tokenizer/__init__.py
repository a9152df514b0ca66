"""Tokenizers (SentencePiece trained here, or a Hugging Face tokenizer.json) and prompt templates."""

from __future__ import annotations

import json

from etils import epath

from reasoner.tokenizer.base import BACKEND_KEY, REASONING_TOKENS, Tokenizer, padded_vocab_size
from reasoner.tokenizer.hf_tokenizer import HFTokenizer
from reasoner.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece
from reasoner.tokenizer.template import R1_SYSTEM, R1_ZERO_INSTRUCTION, TEMPLATES, format_prompt

_BACKENDS = {"sentencepiece": SentencePieceTokenizer, "hf": HFTokenizer}


def load_tokenizer(directory) -> Tokenizer:
  """Loads the tokenizer saved in `directory`.

  The backend is the one recorded by our own `save` (tokenizer_config.json), else
  tokenizer.json -> HFTokenizer, else tokenizer.model -> SentencePieceTokenizer.
  """
  d = epath.Path(directory)
  if not d.is_dir():
    raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
  backend = None
  if (d / "tokenizer_config.json").exists():
    try:
      backend = json.loads((d / "tokenizer_config.json").read_text()).get(BACKEND_KEY)
    except json.JSONDecodeError as e:
      raise ValueError(f"{d / 'tokenizer_config.json'} is not valid JSON: {e}") from None
  if backend is not None:
    if backend not in _BACKENDS:
      raise ValueError(f"unknown tokenizer backend {backend!r} in {d / 'tokenizer_config.json'}")
    return _BACKENDS[backend].load(d)
  if (d / "tokenizer.json").exists():
    return HFTokenizer.load(d)
  if (d / "tokenizer.model").exists():
    return SentencePieceTokenizer.load(d)
  raise FileNotFoundError(f"no tokenizer in {directory}: expected tokenizer.json or tokenizer.model")


__all__ = ["REASONING_TOKENS", "R1_SYSTEM", "R1_ZERO_INSTRUCTION", "TEMPLATES", "Tokenizer",
           "HFTokenizer", "SentencePieceTokenizer", "format_prompt", "load_tokenizer",
           "padded_vocab_size", "train_sentencepiece"]
