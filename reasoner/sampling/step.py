"""One decoding step's token choice, as a pure function of logits: the sampling rule, budget
forcing (forced `</think>`, s1 "Wait" injection), stop tokens / sequences and the output buffers.

Kept apart from the model so it can be tested on hand-made logits.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from reasoner.sampling.config import SamplingConfig


class Buffers(NamedTuple):
  """Per-row outputs [rows, max_new] and row state [rows] carried through the decode loop."""

  tokens: jax.Array  # int32, pad after a row stops
  logprobs: jax.Array  # float32, raw model (temperature 1) log-prob of each token
  sample_logprobs: jax.Array  # float32, log-prob under the sampling rule actually used
  injected: jax.Array  # bool, token forced by budget control
  done: jax.Array  # [rows] bool, stopped by EOS / stop token / stop sequence
  lengths: jax.Array  # [rows] int32, tokens generated so far (including the stop token)
  closed: jax.Array  # [rows] bool, think_end_id was emitted
  pending: jax.Array  # [rows] int32, index of the next queued Wait token (len(wait) = none)


def init_buffers(rows: int, scfg: SamplingConfig, pad_id: int) -> Buffers:
  m = scfg.max_new_tokens
  return Buffers(
      tokens=jnp.full((rows, m), pad_id, jnp.int32),
      logprobs=jnp.zeros((rows, m), jnp.float32),
      sample_logprobs=jnp.zeros((rows, m), jnp.float32),
      injected=jnp.zeros((rows, m), bool),
      done=jnp.zeros((rows,), bool),
      lengths=jnp.zeros((rows,), jnp.int32),
      closed=jnp.zeros((rows,), bool),
      pending=jnp.full((rows,), len(scfg.wait_token_ids), jnp.int32))


def filter_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
  """Temperature, then top-k, then top-p (nucleus) on logits [b, V]; dropped entries are -inf.

  Ties at the k-th value are kept. top-p keeps the smallest prefix of the sorted distribution
  whose mass reaches top_p (the top token is always kept).
  """
  logits = logits.astype(jnp.float32) / temperature
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    threshold = jnp.min(jnp.where(mass_before < top_p, desc, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x, idx[:, None], axis=1)[:, 0]


def sample_tokens(logits: jax.Array, key: jax.Array, scfg: SamplingConfig):
  """Draws one token per row from logits [b, V]; returns (tokens [b], log-prob under the rule)."""
  if scfg.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), jnp.zeros(logits.shape[:1], jnp.float32)
  filtered = filter_logits(logits, scfg.temperature, scfg.top_k, scfg.top_p)
  tok = jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
  return tok, _take(jax.nn.log_softmax(filtered, axis=-1), tok)


def _force_budget(tok, step, buf: Buffers, scfg: SamplingConfig, stop_ids):
  """Applies Wait injection and forced think_end; returns (tok, injected, closed, pending)."""
  wait = scfg.wait_token_ids
  injected = jnp.zeros(tok.shape, bool)
  pending = buf.pending
  if scfg.min_thinking_tokens:
    queued = pending < len(wait)
    early = (~buf.closed & (step < scfg.min_thinking_tokens)
             & ((tok == scfg.think_end_id) | jnp.isin(tok, stop_ids)))
    start = early & ~queued
    wait_arr = jnp.asarray(wait, jnp.int32)
    tok = jnp.where(queued, wait_arr[jnp.minimum(pending, len(wait) - 1)], tok)
    tok = jnp.where(start, wait_arr[0], tok)
    pending = jnp.where(queued, pending + 1, jnp.where(start, 1, pending))
    injected = queued | start
  if scfg.max_thinking_tokens is not None:
    force = ~buf.closed & (step >= scfg.max_thinking_tokens)
    tok = jnp.where(force, scfg.think_end_id, tok)
    pending = jnp.where(force, len(wait), pending)
    injected = injected | force
  closed = buf.closed | (tok == scfg.think_end_id)
  return tok, injected, closed, pending


def _stop_sequence_hit(tokens: jax.Array, step, seqs: tuple) -> jax.Array:
  """[rows] True where tokens[:, :step + 1] ends with one of `seqs`."""
  rows, width = tokens.shape
  hit = jnp.zeros((rows,), bool)
  for seq in seqs:
    m = len(seq)
    if m > width:
      continue
    start = jnp.clip(step - m + 1, 0, width - m)
    window = jax.lax.dynamic_slice(tokens, (0, start), (rows, m))
    hit = hit | (jnp.all(window == jnp.asarray(seq, jnp.int32)[None], axis=1) & (step + 1 >= m))
  return hit


def select_next(logits: jax.Array, key: jax.Array, step, buf: Buffers, scfg: SamplingConfig, *,
                pad_id: int, eos_id: int):
  """Chooses the token of generation step `step` for every row and records it.

  logits: [rows, V] float32 next-token logits of the raw model. Rows already done get pad_id.
  Returns (tokens [rows] to feed back, updated Buffers).
  """
  stop_ids = jnp.asarray((eos_id,) + scfg.stop_token_ids, jnp.int32)
  logits = logits.astype(jnp.float32)
  tok, samp_lp = sample_tokens(logits, key, scfg)
  closed, pending = buf.closed, buf.pending
  injected = jnp.zeros(tok.shape, bool)
  if scfg.forces_budget:
    tok, injected, closed, pending = _force_budget(tok, step, buf, scfg, stop_ids)
    samp_lp = jnp.where(injected, 0.0, samp_lp)
  raw_lp = _take(jax.nn.log_softmax(logits, axis=-1), tok)
  live = ~buf.done
  tok = jnp.where(live, tok, pad_id)
  tokens = buf.tokens.at[:, step].set(tok)
  stopped = live & jnp.isin(tok, stop_ids) & ~injected
  if scfg.stop_sequences:
    stopped = stopped | (live & _stop_sequence_hit(tokens, step, scfg.stop_sequences))
  new = Buffers(
      tokens=tokens,
      logprobs=buf.logprobs.at[:, step].set(jnp.where(live, raw_lp, 0.0)),
      sample_logprobs=buf.sample_logprobs.at[:, step].set(jnp.where(live, samp_lp, 0.0)),
      injected=buf.injected.at[:, step].set(live & injected),
      done=buf.done | stopped,
      lengths=jnp.where(live, step + 1, buf.lengths),
      closed=closed, pending=pending)
  return tok, new
