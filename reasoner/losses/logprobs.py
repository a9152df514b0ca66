"""Per-token log-probabilities and entropies of a sequence batch, in the shared alignment.

Alignment (see the conventions): out[:, t] describes token t as predicted from the logits
at t - 1; out[:, 0] = 0. With `segment_ids`, a token that starts a segment (or is padding)
also gets 0, so a packed row gives exactly the values of its sequences run one by one.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from reasoner.losses.common import shift_right
from reasoner.model import ModelConfig, forward


def continues_segment(segment_ids: Optional[jax.Array]) -> Optional[jax.Array]:
  """segment_ids [b, t] -> [b, t] float32: 1 where token t follows a token of its own
  (non-pad) segment, i.e. where a per-token prediction is meaningful. None -> None."""
  if segment_ids is None:
    return None
  seg = segment_ids
  same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
  return jnp.concatenate([jnp.zeros((seg.shape[0], 1), bool), same], axis=1).astype(jnp.float32)


def token_logprobs(logits: jax.Array, tokens: jax.Array,
                   segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """logits [b, t, V], tokens [b, t] -> [b, t] float32 with out[:, t] = log p(tokens[t] | <t).

  Works in float32 via logsumexp + a gather, without a second [b, t, V] log-softmax copy.
  """
  if logits.shape[:2] != tokens.shape:
    raise ValueError(f"logits {logits.shape} and tokens {tokens.shape} disagree on [batch, seq]")
  logits = logits.astype(jnp.float32)
  # Position t predicts token t + 1; the last position predicts nothing (its target is a dummy).
  targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
  picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  next_logp = picked - jax.nn.logsumexp(logits, axis=-1)
  out = shift_right(next_logp)
  keep = continues_segment(segment_ids)
  return out if keep is None else out * keep


def token_entropy(logits: jax.Array, segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """logits [b, t, V] -> [b, t] float32 entropy of the distribution that predicted token t."""
  logits = logits.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  probs = jnp.exp(logits - logz)
  ent = logz[..., 0] - jnp.sum(probs * logits, axis=-1)
  out = shift_right(ent)
  keep = continues_segment(segment_ids)
  return out if keep is None else out * keep


def model_logits(params, cfg: ModelConfig, batch: Mapping[str, Any], *, return_hidden=False):
  """Runs the decoder on batch tokens / positions / segment_ids. Returns logits [b, t, V]
  (and the final hidden states [b, t, d] with return_hidden)."""
  for key in ("tokens", "positions"):
    if key not in batch:
      raise KeyError(f"batch is missing {key!r}; it has {sorted(batch)}")
  out = forward(params, batch["tokens"], batch["positions"], cfg,
                segment_ids=batch.get("segment_ids"), return_hidden=return_hidden)
  return (out[0], out[2]) if return_hidden else out[0]


def sequence_logprobs(params, cfg: ModelConfig, batch: Mapping[str, Any]):
  """Forward pass -> (logp [b, t], entropy [b, t]), both float32 in the shared alignment."""
  logits = model_logits(params, cfg, batch)
  seg = batch.get("segment_ids")
  return token_logprobs(logits, batch["tokens"], seg), token_entropy(logits, seg)
