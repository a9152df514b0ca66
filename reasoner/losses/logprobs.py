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
over the whole batch, the same arithmetic as the unchunked functions. SFT's loss, whose logits'
gradient is known before the backward, skips the recompute (`chunked_nll`).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from reasoner.losses.common import masked_mean, shift_right
from reasoner.model import ModelConfig, forward
from reasoner.model.decoder import flat_matmuls, head_logits, hidden_states, matmul, unembed
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
  the enclosing mesh: `row_shards`) stay within `budget_mib` (at least 1), balanced over the
  fewest chunks; `seq` (no chunking) when the whole fits or the budget is 0."""
  per_position = rows // row_shards(rows, current_mesh()) * vocab * 4
  if budget_mib <= 0 or per_position * seq <= budget_mib * 2**20:
    return seq
  largest = max(1, min(seq, budget_mib * 2**20 // per_position))
  # As few chunks as the budget allows, of equal size: padding stays under one position per
  # chunk (the largest chunk alone could pad up to nearly a whole chunk of wasted logits).
  n = -(-seq // largest)
  return -(-seq // n)


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
    body = jax.checkpoint(lambda carry, xs: (carry, stats_of(*xs)))
    _, out = jax.lax.scan(body, None, (_chunks(hidden, n, chunk), _chunks(targets, n, chunk)))
    out = jax.tree.map(lambda x: _unchunk(x, t), out)
  return {k: _align(v, segment_ids) for k, v in out.items()}


def _chunks(x: jax.Array, n: int, chunk: int) -> jax.Array:
  """[b, t, ...] -> [n, b, chunk, ...], zero-padded at the end: the scan walks the chunks and
  each row keeps its device."""
  b, t = x.shape[:2]
  x = jnp.pad(x, ((0, 0), (0, n * chunk - t)) + ((0, 0),) * (x.ndim - 2))
  return jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)


def _unchunk(x: jax.Array, t: int) -> jax.Array:
  """[n, b, chunk, ...] -> [b, t, ...] (drops the padding)."""
  n, b, chunk = x.shape[:3]
  return jnp.moveaxis(x, 0, 1).reshape(b, n * chunk, *x.shape[3:])[:, :t]


def _head_logits(w: jax.Array, h: jax.Array, tied: bool) -> jax.Array:
  """`decoder.head_logits` of h [b, t, D] (constrained like `next_token_stats`' logits) or of
  flattened rows [r, D]."""
  logits = head_logits(w, h, tied)
  if logits.ndim == 3:
    logits = constrain(logits, ("act_batch", "act_seq", "act_vocab"))
  return logits


def _fused_nll_primal(h, w, targets, tied, chunk, argmax):
  """'logp' / 'argmax' at the predicting positions, one chunk of logits at a time, with no
  gradient work (`_fused_nll` outside differentiation)."""
  t = h.shape[1]
  n = -(-t // chunk)

  def body(_, xs):
    return None, _logits_stats(_head_logits(w, xs[0], tied), xs[1], False, argmax)

  _, out = jax.lax.scan(body, None, (_chunks(h, n, chunk), _chunks(targets, n, chunk)))
  return jax.tree.map(lambda x: _unchunk(x, t), out)


def _fused_nll_fwd(h, w, targets, weights, tied, chunk, argmax):
  """The forward and the whole backward of the weighted NLL in one sweep of the chunks: each
  chunk's logits give its log-probs and, since d(-w log p)/d logits = w (softmax - onehot) is
  known here, its hidden-state gradient and its share of the head's gradient. Three matmuls
  per chunk against the four of a rematerialised scan (forward, recompute, two gradients);
  the head's gradient is skipped when the head is not differentiated (a frozen LoRA base)."""
  want_dw = w.perturbed
  h, w, targets, weights = h.value, w.value, targets.value, weights.value
  b, t = targets.shape
  n = -(-t // chunk)
  wd = w.astype(h.dtype)
  xs = (_chunks(h, n, chunk), _chunks(targets, n, chunk), _chunks(weights, n, chunk))
  flat = flat_matmuls()
  if flat:  # [n, b * chunk, ...]: 2-D matmuls, faster on XLA:CPU (see `flat_matmuls`)
    xs = jax.tree.map(lambda x: x.reshape(n, b * chunk, *x.shape[3:]), xs)
  lead = "r" if flat else "bc"

  def body(dw, xs):
    hc, tc, wc = xs
    logits = _head_logits(w, hc, tied)
    logz = jax.nn.logsumexp(logits, axis=-1)
    stats = {"logp": jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0] - logz}
    if argmax:
      stats["argmax"] = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    probs = jnp.exp(logits - logz[..., None])
    hit = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1) == tc[..., None]
    dlogits = (wc[..., None] * jnp.where(hit, probs - 1.0, probs)).astype(hc.dtype)
    if not flat:
      dlogits = constrain(dlogits, ("act_batch", "act_seq", "act_vocab"))
    dh = matmul(f"{lead}v,vd->{lead}d" if tied else f"{lead}v,dv->{lead}d", dlogits, wd)
    if want_dw:
      dw = dw + jnp.einsum(f"{lead}v,{lead}d->vd" if tied else f"{lead}v,{lead}d->dv", dlogits,
                           hc, preferred_element_type=jnp.float32)
    return dw, (stats, dh)

  dw0 = jnp.zeros(w.shape, jnp.float32) if want_dw else None
  dw, out = jax.lax.scan(body, dw0, xs)
  if flat:
    out = jax.tree.map(lambda x: x.reshape(n, b, chunk, *x.shape[2:]), out)
  stats, dh = jax.tree.map(lambda x: _unchunk(x, t), out)
  nll = -jnp.sum(weights * stats["logp"])
  return (nll, stats), (dh, None if dw is None else dw.astype(w.dtype))


def _fused_nll_bwd(tied, chunk, argmax, res, ct):
  """Scales the forward's gradients by the loss's cotangent; the stats carry none (the
  caller stops their gradient)."""
  del tied, chunk, argmax
  dh, dw = res
  c = ct[0]
  c = jnp.zeros((), jnp.float32) if isinstance(c, jax.custom_derivatives.SymbolicZero) else c
  dw = None if dw is None else (c * dw).astype(dw.dtype)
  return (c * dh.astype(jnp.float32)).astype(dh.dtype), dw, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _fused_nll(h, w, targets, weights, tied, chunk, argmax):
  """(-sum(weights * logp), stats) at the predicting positions; see `_fused_nll_fwd`."""
  stats = _fused_nll_primal(h, w, targets, tied, chunk, argmax)
  return -jnp.sum(weights * stats["logp"]), stats


_fused_nll.defvjp(_fused_nll_fwd, _fused_nll_bwd, symbolic_zeros=True)


def chunked_nll(params, cfg: ModelConfig, hidden: jax.Array, tokens: jax.Array,
                segment_ids: Optional[jax.Array], mask: jax.Array, *,
                argmax: bool = False) -> Optional[tuple[jax.Array, dict]]:
  """The mean negative log-likelihood over the tokens of `mask` (aligned [b, t]; SFT's loss,
  `-masked_mean(logp, mask)`) with its gradient computed during the forward sweep, or None
  when the logits fit the budget whole (then the plain path costs the same three matmuls).
  Returns (nll, stats) with stats as `next_token_stats` (aligned, without gradient)."""
  b, t = tokens.shape
  chunk = logits_chunk(b, t, cfg.vocab_size, cfg.logits_chunk_mib)
  if chunk >= t:
    return None
  mask = mask.astype(jnp.float32)
  counted = mask if segment_ids is None else mask * continues_segment(segment_ids)
  weights = counted / jnp.maximum(jnp.sum(mask), 1.0)  # masked_mean's denominator
  # The weight of the predicting position t is that of token t + 1.
  weights = jax.lax.stop_gradient(jnp.concatenate([weights[:, 1:], weights[:, :1] * 0], axis=1))
  w = params["embed"] if cfg.tie_embeddings else params["lm_head"]
  nll, stats = _fused_nll(hidden, w, _next_targets(tokens), weights, cfg.tie_embeddings, chunk,
                          argmax)
  return nll, {k: _align(jax.lax.stop_gradient(v), segment_ids) for k, v in stats.items()}


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
                   argmax: bool = False, return_hidden: bool = False,
                   nll_mask: Optional[jax.Array] = None, packed: bool = True) -> dict:
  """Forward pass on batch tokens / positions / segment_ids -> `next_token_stats` (plus
  'hidden' [b, t, D] with return_hidden), never holding more than a chunk of logits.

  With `nll_mask` (aligned [b, t]) also 'nll' = -masked_mean(logp, nll_mask), SFT's loss: when
  the logits are chunked it comes from `chunked_nll`, whose forward sweep computes the gradient
  as well, and then only 'nll' carries a gradient (differentiate 'nll', not 'logp').

  packed=False: the caller promises one sequence per row (`decoder.hidden_states`); the rows of
  rollouts, preference pairs and PRM examples are, SFT's packed rows are not."""
  _check_batch(batch)
  seg = batch.get("segment_ids")
  h = hidden_states(params, batch["tokens"], batch["positions"], cfg, segment_ids=seg,
                    packed=packed)
  fused = None
  if nll_mask is not None and not entropy:
    fused = chunked_nll(params, cfg, h, batch["tokens"], seg, nll_mask, argmax=argmax)
  if fused is not None:
    out = dict(fused[1], nll=fused[0])
  else:
    out = next_token_stats(params, cfg, h, batch["tokens"], seg, entropy=entropy, argmax=argmax)
    if nll_mask is not None:
      out["nll"] = -masked_mean(out["logp"], nll_mask.astype(jnp.float32))
  if return_hidden:
    out["hidden"] = h
  return out


def sequence_logprobs(params, cfg: ModelConfig, batch: Mapping[str, Any], *,
                      entropy: bool = True, packed: bool = True):
  """Forward pass -> (logp [b, t], entropy [b, t] or None without `entropy`), float32 in the
  shared alignment. `packed` as `sequence_stats`."""
  out = sequence_stats(params, cfg, batch, entropy=entropy, packed=packed)
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
