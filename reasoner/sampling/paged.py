"""Device side of the rollout engine: a paged KV cache, prefill into pages, and a chunk of decode
steps over per-slot state. All functions are pure and jit with static slot / page counts; the
host-side scheduling lives in `reasoner.sampling.engine`.

Page pool: per layer, keys and values [K, num_pages, page_size, Dh] (the layout of the Pallas
TPU paged-attention kernel). Page 0 is never handed out: writes of empty or finished slots and
page-table entries past a sequence's end point at it, so every shape stays static.

Page table: [slots, pages] int32, entry j of a slot = the page holding its cache positions
[j * page_size, (j + 1) * page_size). A sequence's cache position is its token's rotary
position (prompts are right-aligned at position 0), so a slot's length is its next position.

Slot state (`Slots`): the next-token logits of each slot (the first token is picked from the
prefill's logits, later ones from the previous step's), how many tokens it generated, its prompt
length, whether it is still generating, and the output rows of `SampleOutput`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from reasoner.model import decoder
from reasoner.model import layers as L
from reasoner.model.config import ModelConfig
from reasoner.sampling import decode_model
from reasoner.sampling.config import SamplingConfig
from reasoner.sampling.step import _force_budget, sample_tokens


class Slots(NamedTuple):
  """Per-slot decode state ([S] or [S, ...]); S = slot count, M = max_new_tokens."""

  logits: jax.Array  # [S, V] float32 logits of the next token
  count: jax.Array  # [S] int32 tokens generated so far
  start: jax.Array  # [S] int32 prompt length (position / cache index of the first new token)
  live: jax.Array  # [S] bool still generating (False: empty or finished)
  done: jax.Array  # [S] bool stopped by EOS / a stop token / a stop sequence
  closed: jax.Array  # [S] bool think_end_id emitted
  pending: jax.Array  # [S] int32 next queued Wait token (len(wait) = none)
  keys: jax.Array  # [S, 2] uint32 the row's rng key (the token of step t uses fold_in(key, t))
  tokens: jax.Array  # [S, M] int32
  logprobs: jax.Array  # [S, M] float32 raw-model log-prob
  sample_logprobs: jax.Array  # [S, M] float32 log-prob under the sampling rule
  injected: jax.Array  # [S, M] bool


def init_slots(slots: int, cfg: ModelConfig, scfg: SamplingConfig, pad_id: int) -> Slots:
  m = scfg.max_new_tokens
  return Slots(
      logits=jnp.zeros((slots, cfg.vocab_size), jnp.float32),
      count=jnp.zeros((slots,), jnp.int32), start=jnp.zeros((slots,), jnp.int32),
      live=jnp.zeros((slots,), bool), done=jnp.zeros((slots,), bool),
      closed=jnp.zeros((slots,), bool),
      pending=jnp.full((slots,), len(scfg.wait_token_ids), jnp.int32),
      keys=jnp.zeros((slots, 2), jnp.uint32),
      tokens=jnp.full((slots, m), pad_id, jnp.int32),
      logprobs=jnp.zeros((slots, m), jnp.float32),
      sample_logprobs=jnp.zeros((slots, m), jnp.float32),
      injected=jnp.zeros((slots, m), bool))


def init_pages(cfg: ModelConfig, num_pages: int, page_size: int, dtype=None):
  """(keys, values): tuples of n_layers zero arrays [K, num_pages, page_size, Dh]."""
  dt = jnp.dtype(dtype or cfg.dtype)
  shape = (cfg.n_kv_heads, num_pages, page_size, cfg.head_dim)
  return (tuple(jnp.zeros(shape, dt) for _ in range(cfg.n_layers)),
          tuple(jnp.zeros(shape, dt) for _ in range(cfg.n_layers)))


def kv_bytes_per_token(cfg: ModelConfig, dtype=None) -> int:
  """Bytes of keys + values one cache position holds over all layers."""
  return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * jnp.dtype(dtype or cfg.dtype).itemsize


# ---------------------------------------------------------------------------------------------
# Attention over pages: one function decides the implementation.


def attention_impl() -> str:
  """'pallas' on TPU (jax.experimental.pallas.ops.tpu.paged_attention), else 'xla' (a gather of
  each slot's pages followed by masked attention)."""
  if jax.default_backend() != "tpu":
    return "xla"
  try:
    from jax.experimental.pallas.ops.tpu import paged_attention  # noqa: F401
  except ImportError:
    return "xla"
  return "pallas"


def gather_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, page_table: jax.Array,
                     lengths: jax.Array) -> jax.Array:
  """One query per slot against its pages, by an XLA gather.

  q: [S, H, Dh]; k_pages, v_pages: [K, P, ps, Dh]; page_table: [S, W] int32; lengths: [S] (the
  positions [0, length) are attended). Returns [S, H, Dh] in q's dtype. The same math as
  `layers.gqa_attention` (float32 scores, finite mask value).
  """
  s, h, d = q.shape
  kv, _, ps, _ = k_pages.shape
  w = page_table.shape[1] * ps
  k = k_pages[:, page_table].reshape(kv, s, w, d)  # [K, S, W, Dh]
  v = v_pages[:, page_table].reshape(kv, s, w, d)
  q = q.reshape(s, kv, h // kv, d)
  scores = jnp.einsum("skgd,kswd->skgw", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
  scores = scores / math.sqrt(d)
  mask = jnp.arange(w)[None, :] < lengths[:, None]  # [S, W]
  scores = jnp.where(mask[:, None, None, :], scores, L.MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
  out = jnp.einsum("skgw,kswd->skgd", probs, v.astype(q.dtype))
  return out.reshape(s, h, d)


def pallas_attention(q, k_pages, v_pages, page_table, lengths):
  """The Pallas TPU paged-attention decode kernel (it does not scale q: done here)."""
  from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention
  w = page_table.shape[1]
  block = math.gcd(w, 8)
  q = (q.astype(jnp.float32) / math.sqrt(q.shape[-1])).astype(q.dtype)
  return paged_attention(q, k_pages, v_pages, lengths.astype(jnp.int32), page_table,
                         mask_value=L.MASK_VALUE, pages_per_compute_block=block)


def paged_attention(q, k_pages, v_pages, page_table, lengths, impl: str = "xla"):
  if impl == "pallas":
    return pallas_attention(q, k_pages, v_pages, page_table, lengths)
  return gather_attention(q, k_pages, v_pages, page_table, lengths)


# ---------------------------------------------------------------------------------------------
# Prefill of admitted prompts into pages.


def admit(params, k_pages, v_pages, slots: Slots, tokens, lengths, page_ids, copy_src, copy_dst,
          slot_ids, keys, *, cfg: ModelConfig, n: int, pad_id: int, no_wait: int, mesh=None):
  """Prefills A prompts, writes their keys / values into pages and starts n slots per prompt.

  tokens: [A, Pb] right-padded prompts (Pb a multiple of page_size); lengths: [A] true lengths
  (dummy rows: 1); page_ids: [A, Pb / page_size] the pages receiving each prompt's positions
  (0 where unused); copy_src / copy_dst: [A * n] pages whose content is duplicated (a prompt's
  partially filled last page, for samples 2..n of the group; 0 -> 0 where none); slot_ids:
  [A * n] the slot of sample j of prompt i at i * n + j (>= S for none); keys: [A * n, 2] their
  rng keys. pad_id fills the new output rows; no_wait = len(wait_token_ids). Returns (k_pages,
  v_pages, slots).
  """
  a, pb = tokens.shape
  ps = k_pages[0].shape[2]
  positions = jnp.broadcast_to(jnp.arange(pb, dtype=jnp.int32), (a, pb))
  segments = (positions < lengths[:, None]).astype(jnp.int32)
  cache = decoder.init_cache(cfg, a, pb)
  if mesh is not None:
    from reasoner import sharding
    cache = jax.lax.with_sharding_constraint(cache, sharding.cache_shardings(cache, mesh))
  _, cache, hidden = decoder.forward(params, tokens, positions, cfg, segment_ids=segments,
                                     cache=cache, return_hidden=True)
  h_last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)
  logits = decode_model.project_logits(params, h_last, cfg)[:, 0]
  new_k, new_v = [], []
  for li in range(cfg.n_layers):
    def write(pages, x):  # x: [A, Pb, K, Dh] -> pages [K, P, ps, Dh]
      x = x.reshape(a, pb // ps, ps, x.shape[2], x.shape[3]).transpose(3, 0, 1, 2, 4)
      pages = pages.at[:, page_ids].set(x.astype(pages.dtype))
      return pages.at[:, copy_dst].set(pages[:, copy_src])
    new_k.append(write(k_pages[li], cache["k"][li]))
    new_v.append(write(v_pages[li], cache["v"][li]))
  rep = lambda x: jnp.repeat(x, n, axis=0)
  put = lambda arr, val: arr.at[slot_ids].set(val, mode="drop")
  rows = slot_ids.shape[0]
  slots = Slots(
      logits=put(slots.logits, rep(logits)),
      count=put(slots.count, jnp.zeros((rows,), jnp.int32)),
      start=put(slots.start, rep(lengths).astype(jnp.int32)),
      live=put(slots.live, jnp.ones((rows,), bool)),
      done=put(slots.done, jnp.zeros((rows,), bool)),
      closed=put(slots.closed, jnp.zeros((rows,), bool)),
      pending=put(slots.pending, jnp.full((rows,), no_wait, jnp.int32)),
      keys=put(slots.keys, keys),
      tokens=put(slots.tokens, jnp.full((rows, slots.tokens.shape[1]), pad_id, jnp.int32)),
      logprobs=put(slots.logprobs, jnp.zeros((rows, slots.logprobs.shape[1]), jnp.float32)),
      sample_logprobs=put(slots.sample_logprobs,
                          jnp.zeros((rows, slots.logprobs.shape[1]), jnp.float32)),
      injected=put(slots.injected, jnp.zeros((rows, slots.injected.shape[1]), bool)))
  return tuple(new_k), tuple(new_v), slots


# ---------------------------------------------------------------------------------------------
# Decode: `steps` tokens per slot per call.


def _stop_sequence_hit(tokens, at, seqs):
  """[S] True where each row's tokens[:at + 1] end with one of `seqs` (at: [S])."""
  s, m_max = tokens.shape
  hit = jnp.zeros((s,), bool)
  for seq in seqs:
    m = len(seq)
    if m > m_max:
      continue
    idx = jnp.clip(at[:, None] - m + 1 + jnp.arange(m)[None], 0, m_max - 1)
    window = jnp.take_along_axis(tokens, idx, axis=1)
    hit = hit | (jnp.all(window == jnp.asarray(seq, jnp.int32)[None], axis=1) & (at + 1 >= m))
  return hit


def select(slots: Slots, scfg: SamplingConfig, pad_id: int, eos_id: int):
  """Picks each live slot's next token from its logits and records it (`step.select_next` with a
  per-row step and per-row rng keys). Returns (tokens [S], active [S], slots)."""
  stop_ids = jnp.asarray((eos_id,) + scfg.stop_token_ids, jnp.int32)
  logits = slots.logits
  step = slots.count
  keys = jax.vmap(jax.random.fold_in)(slots.keys, step)
  tok, samp_lp = jax.vmap(lambda k, lg: sample_tokens(lg[None], k, scfg))(keys, logits)
  tok, samp_lp = tok[:, 0], samp_lp[:, 0]
  closed, pending = slots.closed, slots.pending
  injected = jnp.zeros(tok.shape, bool)
  if scfg.forces_budget:
    tok, injected, closed, pending = _force_budget(tok, step, slots, scfg, stop_ids)
    samp_lp = jnp.where(injected, 0.0, samp_lp)
  raw_lp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], axis=1)[:, 0]
  active = slots.live
  rows = jnp.arange(tok.shape[0])
  col = jnp.where(active, step, scfg.max_new_tokens)  # out of range: dropped
  tok = jnp.where(active, tok, pad_id)
  tokens = slots.tokens.at[rows, col].set(tok, mode="drop")
  stopped = active & jnp.isin(tok, stop_ids) & ~injected
  if scfg.stop_sequences:
    stopped = stopped | (active & _stop_sequence_hit(tokens, step, scfg.stop_sequences))
  count = step + active.astype(jnp.int32)
  new = slots._replace(
      tokens=tokens,
      logprobs=slots.logprobs.at[rows, col].set(raw_lp, mode="drop"),
      sample_logprobs=slots.sample_logprobs.at[rows, col].set(samp_lp, mode="drop"),
      injected=slots.injected.at[rows, col].set(injected, mode="drop"),
      done=slots.done | stopped, count=count,
      live=active & ~stopped & (count < scfg.max_new_tokens),
      closed=jnp.where(active, closed, slots.closed),
      pending=jnp.where(active, pending, slots.pending))
  return tok, active, new


def model_step(dparams, k_pages, v_pages, page_table, tokens, positions, write, cfg: ModelConfig,
               impl: str = "xla"):
  """Feeds one token per slot at `positions` [S] (also its cache index); `write` [S] bool says
  which slots keep their keys / values (others write to page 0). Returns (logits [S, V] float32,
  k_pages, v_pages)."""
  ps = k_pages[0].shape[2]
  s = tokens.shape[0]
  rows = jnp.arange(s)
  page = jnp.where(write, page_table[rows, jnp.minimum(positions // ps, page_table.shape[1] - 1)], 0)
  off = positions % ps
  lengths = jnp.where(write, positions + 1, 1)
  inv_freq = L.rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  dt = jnp.dtype(cfg.dtype)
  h = dparams["embed"][tokens[:, None]]
  new_k, new_v = [], []
  for li, lp in enumerate(dparams["layers"]):
    kp, vp = k_pages[li], v_pages[li]

    def kv_fn(k, v, kp=kp, vp=vp):  # k, v: [S, 1, K, Dh]
      nk = kp.at[:, page, off].set(jnp.swapaxes(k[:, 0], 0, 1).astype(kp.dtype))
      nv = vp.at[:, page, off].set(jnp.swapaxes(v[:, 0], 0, 1).astype(vp.dtype))
      return nk, nv, None, (nk, nv)

    def attend(q, nk, nv, _):  # q: [S, 1, H, Dh]
      out = paged_attention(q[:, 0], nk, nv, page_table, lengths, impl)
      return out[:, None].astype(dt)

    h, (nk, nv) = decoder.block(cfg, inv_freq, h, lp, positions[:, None], kv_fn, attention=attend)
    new_k.append(nk)
    new_v.append(nv)
  h = L.rms_norm(h, dparams["final_norm"], cfg.norm_eps)
  logits = decode_model.project_logits(dparams, h, cfg)[:, 0]
  return logits, tuple(new_k), tuple(new_v)


def decode_chunk(dparams, k_pages, v_pages, slots: Slots, page_table, *, cfg: ModelConfig,
                 sampling: SamplingConfig, pad_id: int, eos_id: int, steps: int,
                 impl: str = "xla"):
  """`steps` decode steps: each picks every live slot's token, then feeds it. Slots that finish
  stop recording (and write their keys / values to page 0). page_table: [S, W] must cover every
  live slot's positions up to start + count + steps - 1. Returns (k_pages, v_pages, slots)."""

  def body(_, carry):
    kp, vp, sl = carry
    tok, active, sl = select(sl, sampling, pad_id, eos_id)
    pos = sl.start + sl.count - 1
    logits, kp, vp = model_step(dparams, kp, vp, page_table, tok, jnp.maximum(pos, 0), sl.live,
                                cfg, impl)
    # A slot that finished this step keeps its last logits (unused).
    sl = sl._replace(logits=jnp.where(sl.live[:, None], logits, sl.logits))
    return kp, vp, sl

  return jax.lax.fori_loop(0, steps, body, (k_pages, v_pages, slots))
