"""Growing a model's vocab when its tokenizer gained tokens (e.g. the reasoning tags)."""

from __future__ import annotations

from typing import Any

import numpy as np

from reasoner.model.config import ModelConfig


def grow_vocab(params: Any, cfg: ModelConfig, vocab_size: int) -> tuple[Any, ModelConfig]:
  """Appends rows to `embed` [V, D] (and columns to `lm_head` [D, V]) up to `vocab_size`.

  New rows/columns are the mean of the existing ones, so new tokens start with an average
  embedding and an average logit instead of random ones. Returns host NumPy params.
  """
  if vocab_size < cfg.vocab_size:
    raise ValueError(f"cannot shrink the vocab from {cfg.vocab_size} to {vocab_size}")
  extra = vocab_size - cfg.vocab_size
  out = dict(params)
  embed = np.asarray(params["embed"])
  out["embed"] = np.concatenate([embed, np.repeat(embed.mean(0, keepdims=True), extra, 0)
                                 .astype(embed.dtype)], 0)
  if "lm_head" in params:
    head = np.asarray(params["lm_head"])
    out["lm_head"] = np.concatenate([head, np.repeat(head.mean(1, keepdims=True), extra, 1)
                                     .astype(head.dtype)], 1)
  return out, cfg.replace(vocab_size=vocab_size)
