"""Attention for training and prefill with the decoder's segment-id masking.

Placeholder dispatch: dense only (replaced by the blockwise / cuDNN / splash implementation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from reasoner.model import layers as L

IMPLS = ("auto", "dense", "blockwise", "cudnn", "splash")


def attention(q, k, v, q_segment_ids, kv_segment_ids, *, q_offset=0, impl="auto"):
  if impl not in IMPLS:
    raise ValueError(f"unknown attention impl {impl!r}; expected one of {IMPLS}")
  t, s = q.shape[1], k.shape[1]
  mask = L.attention_mask(q_offset + jnp.arange(t), q_segment_ids, jnp.arange(s), kv_segment_ids)
  return L.gqa_attention(q, k, v, mask)
