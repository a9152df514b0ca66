"""Per-token log-probabilities and entropies of a sequence batch, in the shared alignment.

Alignment (see the conventions): out[:, t] describes token t as predicted from the logits
at t - 1; out[:, 0] = 0. With `segment_ids`, a token that starts a segment (or is padding)
also gets 0, so a packed row gives exactly the values of its sequences run one by one.

Memory: a 150k vocabulary makes float32 [rows, seq, V] logits the largest tensor of a train
step (1 row x 16k tokens: 10 GB). `next_token_stats` never builds them whole once they would
pass `ModelConfig.logits_chunk_mib` on a device: it scans over chunks of positions, projects
one chunk of hidden states to logits, reduces them to the per-token numbers, and drops them;
the chunk body is rematerialised, so the backward pass recomputes one chunk's logits at a time
and peak memory is one chunk of logits (plus its gradient). Below the budget it is one pass
over the whole batch, the same arithmetic as the unchunked functions.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from reasoner.losses.common import shift_right
from reasoner.model import ModelConfig, forward
from reasoner.model.decoder import hidden_states, unembed
from reasoner.sharding.activations import constrain, current_mesh
from reasoner.sharding.rules import row_shards


def continues_segment(segment_ids: Optional[jax.Array]) -> Optional[jax.Array]:
  """segment_ids [b, t] -> [b, t] float32: 1 where token t follows a token of its own
  (non-pad) segment, i.e. where a per-token prediction is meaningful. None -> None."""
  if segment_ids is None:
    return None
  seg = segment_ids
  same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
  return jnp.concatenate([jnp.zeros((seg.shape[0], 1), bool), same], axis=1).astype(jnp.float32)


def _next_targets(tokens: jax.Array) -> jax.Array:
  """Position t predicts token t + 1; the last position predicts nothing (a dummy 0)."""
  return jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1).astype(jnp.int32)


def _align(x: jax.Array, segment_ids: Optional[jax.Array]) -> jax.Array:
  """Per predicting position [b, t] -> per predicted token, zero where nothing predicts it."""
  out = shift_right(x)
  keep = continues_segment(segment_ids)
  return out if keep is None else out * keep.astype(out.dtype)


def _logits_stats(logits: jax.Array, targets: jax.Array, entropy: bool, argmax: bool) -> dict:
  """float32 logits [..., V], targets [...] -> {'logp', 'entropy'?, 'argmax'?} [...] at the
  predicting positions: log softmax of the target, entropy, most likely token."""
  logits = logits.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  out = {"logp": picked - logz}
  if entropy:
    probs = jnp.exp(logits - logz[..., None])
    out["entropy"] = logz - jnp.sum(probs * logits, axis=-1)
  if argmax:
    out["argmax"] = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return out


def token_logprobs(logits: jax.Array, tokens: jax.Array,
                   segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """logits [b, t, V], tokens [b, t] -> [b, t] float32 with out[:, t] = log p(tokens[t] | <t).

  Works in float32 via logsumexp + a gather, without a second [b, t, V] log-softmax copy.
  """
  if logits.shape[:2] != tokens.shape:
    raise ValueError(f"logits {logits.shape} and tokens {tokens.shape} disagree on [batch, seq]")
  stats = _logits_stats(logits, _next_targets(tokens), entropy=False, argmax=False)
  return _align(stats["logp"], segment_ids)


def token_entropy(logits: jax.Array, segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """logits [b, t, V] -> [b, t] float32 entropy of the distribution that predicted token t."""
  targets = jnp.zeros(logits.shape[:2], jnp.int32)
  return _align(_logits_stats(logits, targets, entropy=True, argmax=False)["entropy"],
                segment_ids)


def logits_chunk(rows: int, seq: int, vocab: int, budget_mib: int) -> int:
  """Positions per chunk so that one device's float32 [rows, chunk, vocab] logits (its rows under
  the enclosing mesh: `row_shards`) stay within `budget_mib` (at least 1); `seq` (no chunking)
  when the whole fits or the budget is 0."""
  per_position = rows // row_shards(rows, current_mesh()) * vocab * 4
  if budget_mib <= 0 or per_position * seq <= budget_mib * 2**20:
    return seq
  return max(1, min(seq, budget_mib * 2**20 // per_position))


def next_token_stats(params, cfg: ModelConfig, hidden: jax.Array, tokens: jax.Array,
                     segment_ids: Optional[jax.Array] = None, *, entropy: bool = False,
                     argmax: bool = False) -> dict:
  """Final hidden states [b, t, D] and tokens [b, t] -> per-token float32 [b, t] arrays in the
  shared alignment: 'logp' (log p of each token), with `entropy` 'entropy' (of the distribution
  that predicted it), with `argmax` 'argmax' (int32: the most likely token there). Logits are
  built one chunk of positions at a time when they would not fit the budget (module docstring).
  """
  b, t = tokens.shape
  targets = _next_targets(tokens)
  chunk = logits_chunk(b, t, cfg.vocab_size, cfg.logits_chunk_mib)

  def stats_of(h, tgt):
    logits = constrain(unembed(params, h, cfg), ("act_batch", "act_seq", "act_vocab"))
    return _logits_stats(logits, tgt, entropy, argmax)

  if chunk >= t:
    out = stats_of(hidden, targets)
  else:
    n = -(-t // chunk)
    pad = n * chunk - t
    h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    tgt = jnp.pad(targets, ((0, 0), (0, pad)))
    # [n, b, chunk, ...]: the scan walks the chunks; each row keeps its device.
    h = jnp.moveaxis(h.reshape(b, n, chunk, h.shape[-1]), 1, 0)
    tgt = jnp.moveaxis(tgt.reshape(b, n, chunk), 1, 0)
    body = jax.checkpoint(lambda carry, xs: (carry, stats_of(*xs)))
    _, out = jax.lax.scan(body, None, (h, tgt))
    out = jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(b, n * chunk)[:, :t], out)
  return {k: _align(v, segment_ids) for k, v in out.items()}


def model_logits(params, cfg: ModelConfig, batch: Mapping[str, Any], *, return_hidden=False):
  """Runs the decoder on batch tokens / positions / segment_ids. Returns logits [b, t, V]
  (and the final hidden states [b, t, d] with return_hidden). Materialises the full logits:
  losses use `sequence_stats` instead."""
  _check_batch(batch)
  out = forward(params, batch["tokens"], batch["positions"], cfg,
                segment_ids=batch.get("segment_ids"), return_hidden=return_hidden)
  return (out[0], out[2]) if return_hidden else out[0]


def _check_batch(batch: Mapping[str, Any]) -> None:
  for key in ("tokens", "positions"):
    if key not in batch:
      raise KeyError(f"batch is missing {key!r}; it has {sorted(batch)}")


def sequence_stats(params, cfg: ModelConfig, batch: Mapping[str, Any], *, entropy: bool = False,
                   argmax: bool = False, return_hidden: bool = False) -> dict:
  """Forward pass on batch tokens / positions / segment_ids -> `next_token_stats` (plus
  'hidden' [b, t, D] with return_hidden), never holding more than a chunk of logits."""
  _check_batch(batch)
  seg = batch.get("segment_ids")
  h = hidden_states(params, batch["tokens"], batch["positions"], cfg, segment_ids=seg)
  out = next_token_stats(params, cfg, h, batch["tokens"], seg, entropy=entropy, argmax=argmax)
  if return_hidden:
    out["hidden"] = h
  return out


def sequence_logprobs(params, cfg: ModelConfig, batch: Mapping[str, Any], *,
                      entropy: bool = True):
  """Forward pass -> (logp [b, t], entropy [b, t] or None without `entropy`), float32 in the
  shared alignment."""
  out = sequence_stats(params, cfg, batch, entropy=entropy)
  return out["logp"], out.get("entropy")


def logprob_gap(learner, sampler, mask) -> dict:
  """{'logprob_gap/max', 'logprob_gap/mean'}: the absolute gap between the learner's recomputed
  per-token log-probs and the sampler's ([b, t] each, same alignment) over the tokens where
  `mask` [b, t] is set; {} when none is."""
  import numpy as np
  mask = np.asarray(mask) > 0
  if not mask.any():
    return {}
  gap = np.abs(np.asarray(learner, np.float64) - np.asarray(sampler, np.float64))[mask]
  return {"logprob_gap/max": float(gap.max()), "logprob_gap/mean": float(gap.mean())}
