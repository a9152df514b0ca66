"""Device side of the rollout engine: a paged KV cache, prefill into pages, and a chunk of decode
steps over per-slot state. All functions are pure and jit with static slot / page counts; the
host-side scheduling lives in `reasoner.sampling.engine`.

Page pool: per layer, keys and values in the layout of the attention implementation
(`page_layout`: the Pallas TPU kernel's [K, num_pages, page_size, Dh], or one contiguous block
per page for the XLA path). Every page can be handed out: writes that must not land (empty or
finished slots, padding) name page index num_pages, one past the pool, and are dropped by the
scatter, so every shape stays static without a sink page.

The "dense" implementation is the degenerate pool of one page per slot, as long as a row's
whole cache, page s pinned to slot s: the pool is then the static sampler's cache layout
([S, K, Dh, T] keys, [S, K, T, Dh] values) and the attention reads it in place
(`decode_model.cached_attention`), with no gather. The engine picks it where paging cannot pay
(`engine.resolve_layout`).

Page table: [slots, pages] int32, entry j of a slot = the page holding its cache positions
[j * page_size, (j + 1) * page_size). A sequence's cache position is its token's rotary
position (every prompt starts at position 0), so a slot's length is its next position.

Slot state (`Slots`): the next-token logits of each slot (the first token is picked from the
prefill's logits, later ones from the previous step's), how many tokens it generated, its prompt
length, whether it is still generating, and the output rows of `SampleOutput`.
"""

from __future__ import annotations

import functools
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
  limit: jax.Array  # [S] int32 the row's budget of new tokens (<= max_new_tokens)
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
      limit=jnp.zeros((slots,), jnp.int32),
      live=jnp.zeros((slots,), bool), done=jnp.zeros((slots,), bool),
      closed=jnp.zeros((slots,), bool),
      pending=jnp.full((slots,), len(scfg.wait_token_ids), jnp.int32),
      keys=jnp.zeros((slots, 2), jnp.uint32),
      tokens=jnp.full((slots, m), pad_id, jnp.int32),
      logprobs=jnp.zeros((slots, m), jnp.float32),
      sample_logprobs=jnp.zeros((slots, m), jnp.float32),
      injected=jnp.zeros((slots, m), bool))


def init_pages(cfg: ModelConfig, num_pages: int, page_size: int, impl: str = "xla", dtype=None):
  """(keys, values): tuples of n_layers zero page pools in the layout of `impl` (`page_layout`)."""
  dt = jnp.dtype(dtype or cfg.dtype)
  k_shape, v_shape = page_layout(impl, num_pages, page_size, cfg.n_kv_heads, cfg.head_dim)
  return (tuple(jnp.zeros(k_shape, dt) for _ in range(cfg.n_layers)),
          tuple(jnp.zeros(v_shape, dt) for _ in range(cfg.n_layers)))


def kv_bytes_per_token(cfg: ModelConfig, dtype=None) -> int:
  """Bytes of keys + values one cache position holds over all layers."""
  return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * jnp.dtype(dtype or cfg.dtype).itemsize


# ---------------------------------------------------------------------------------------------
# Attention over pages: `attention_impl` is the one place that decides the implementation, and
# with it the pool layout.


IMPLS = ("pallas", "xla", "dense")


def attention_impl(dtype) -> str:
  """The paged implementation for a pool of `dtype` on this backend: 'pallas' on TPU for a
  bfloat16 pool (jax.experimental.pallas.ops.tpu.paged_attention, over page tables), else 'xla'
  (a gather of the live pages listed as (page, slot) entries, see `entry_attention`). ('dense',
  one page per slot read in place, is chosen by the engine's layout, not by the backend.)

  Why not Pallas for a float32 pool: the shipped kernel reads every page as bfloat16 (it casts
  the loaded keys and values before its dots), so on a float32 pool it is off by bfloat16's
  rounding (3.9e-3 on values of order 1, measured through Pallas' TPU interpreter, BUILD_NOTES)
  where the XLA gather keeps float32: greedy decoding token-identical to the static sampler and
  the sampler's log-probs at float32 rounding of the learner's, on every backend."""
  if jax.default_backend() != "tpu" or jnp.dtype(dtype) != jnp.bfloat16:
    return "xla"
  try:
    from jax.experimental.pallas.ops.tpu import paged_attention  # noqa: F401
  except ImportError:
    return "xla"
  return "pallas"


def page_layout(impl: str, num_pages: int, page_size: int, kv_heads: int, head_dim: int):
  """(keys shape, values shape) of one layer's pool.

  pallas: both [K, P, ps, Dh] (the kernel's layout). xla and dense: keys [P, K, Dh, ps] and
  values [P, K, ps, Dh]: a page is one contiguous block (the gather copies whole blocks), and the
  score reduction runs over a middle axis with positions innermost (what the static sampler's
  cache does for the same reason, BUILD_NOTES.md); dense pools have P = slots, ps = a row's cache.
  """
  if impl not in IMPLS:
    raise ValueError(f"unknown attention implementation {impl!r}; expected one of {IMPLS}")
  if impl == "pallas":
    shape = (kv_heads, num_pages, page_size, head_dim)
    return shape, shape
  return (num_pages, kv_heads, head_dim, page_size), (num_pages, kv_heads, page_size, head_dim)


def page_size_of(pages: jax.Array, impl: str) -> int:
  return pages.shape[2] if impl == "pallas" else pages.shape[3]


def _as_bits(x: jax.Array) -> jax.Array:
  """A 16-bit float array as its uint16 bit patterns (a free bitcast), others unchanged. The
  pool writes move bits only, and XLA:CPU has no bfloat16 scatter: it converts the operand to
  float32, scatters and converts back, a float32 copy of the layer's pool per write (4 GiB of
  an 8B model's 64-row decode chunk, BUILD_NOTES). Integer scatters it does in place."""
  if jnp.issubdtype(x.dtype, jnp.floating) and jnp.dtype(x.dtype).itemsize == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16)
  return x


def _bitwise(write):
  """write(pages, x, ...) run on the bit patterns of 16-bit float pools (`_as_bits`), x cast to
  the pool's dtype first (so the write sees both in the same dtype)."""
  @functools.wraps(write)
  def run(pages, x, *args, **kwargs):
    dtype = pages.dtype
    return _from_bits(write(_as_bits(pages), _as_bits(x.astype(dtype)), *args, **kwargs), dtype)
  return run


def _from_bits(x: jax.Array, dtype) -> jax.Array:
  return x if x.dtype == dtype else jax.lax.bitcast_convert_type(x, dtype)


@_bitwise
def write_prompt(pages, x, page_ids, kind: str, impl: str):
  """Writes x [A, Pb, K, Dh] (prompt keys or values; Pb <= page_ids.shape[1] * page size, the
  rest of the last page written as zeros) into the pages page_ids [A, ceil(Pb / page size)]."""
  a, pb, kv, d = x.shape
  ps = pages.shape[2] if impl == "pallas" or kind == "v" else pages.shape[3]
  cols = page_ids.shape[1]
  if pb > cols * ps:
    raise ValueError(f"{pb} prompt positions do not fit {cols} pages of {ps}")
  x = jnp.pad(x, ((0, 0), (0, cols * ps - pb), (0, 0), (0, 0)))
  x = x.reshape(a, cols, ps, kv, d)
  if impl == "pallas":
    return pages.at[:, page_ids].set(x.transpose(3, 0, 1, 2, 4), mode="drop")
  x = x.transpose(0, 1, 3, 4, 2) if kind == "k" else x.transpose(0, 1, 3, 2, 4)
  return pages.at[page_ids].set(x, mode="drop")


def copy_pages(pages, src, dst, impl: str):
  """Page dst[i] <- page src[i] (dst = num_pages: nothing), moving bits (`_as_bits`)."""
  bits = _as_bits(pages)
  bits = bits.at[:, dst].set(bits[:, src], mode="drop") if impl == "pallas" else (
      bits.at[dst].set(bits[src], mode="drop"))
  return _from_bits(bits, pages.dtype)


@_bitwise
def write_token(pages, x, page, off, kind: str, impl: str):
  """Writes one position per slot: x [S, K, Dh] at (page [S], offset [S]); page = num_pages
  writes nothing."""
  if impl == "dense" and x.shape[0] > 1:
    # Page s is slot s's (`page` is s or num_pages): a per-row write, batched over the slots, so
    # a pool split over the batch axes is written where it lives, with no gather of the updates.
    length = pages.shape[3 if kind == "k" else 2]
    off = jnp.where(page < pages.shape[0], off, length)  # out of range: dropped
    if kind == "k":
      return jax.vmap(lambda p, u, o: p.at[:, :, o].set(u, mode="drop"))(pages, x, off)
    return jax.vmap(lambda p, u, o: p.at[:, o, :].set(u, mode="drop"))(pages, x, off)
  if x.shape[0] == 1:
    # One slot: XLA turns a one-index scatter into a dynamic-update-slice, and on XLA:CPU that
    # one copies the whole pool every step (46 ms a step for a 272 MiB pool, BUILD_NOTES).
    # A second index that writes nothing keeps it a scatter, done in place.
    none = pages.shape[1 if impl == "pallas" else 0]
    x = jnp.concatenate([x, x])
    page = jnp.concatenate([page, jnp.full((1,), none, page.dtype)])
    off = jnp.concatenate([off, off])
  if impl == "pallas":
    return pages.at[:, page, off].set(jnp.swapaxes(x, 0, 1), mode="drop")
  if kind == "k":
    return pages.at[page, :, :, off].set(x, mode="drop")
  return pages.at[page, :, off, :].set(x, mode="drop")


class Entries(NamedTuple):
  """The pages the XLA attention reads, one entry per (slot, page of that slot): page [E], slot
  [E] (S for padding entries) and base [E], the position of the page's first row in the slot's
  sequence. Built on the host from the page tables (`engine`); E is bucketed."""

  page: jax.Array
  slot: jax.Array
  base: jax.Array


def entry_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, entries: Entries,
                    lengths: jax.Array) -> jax.Array:
  """One query per slot against its pages, by an XLA gather of the listed (live) pages only.

  q: [S, H, Dh]; pages in the xla layout; lengths: [S] (positions [0, length) are attended).
  Returns [S, H, Dh] in q's dtype. The cost follows the tokens actually cached, not the longest
  row: each entry's scores are taken against its own page, the softmax runs per slot over its
  entries (per-slot max and sum through a [S, E] one-hot) and the weighted values are summed per
  slot by a matmul with the same one-hot. The math of `layers.gqa_attention` (float32 scores,
  masked positions weigh 0); a slot without entries gets zeros.
  """
  s, h, d = q.shape
  _, kv, _, ps = k_pages.shape
  g = h // kv
  kg = jnp.take(k_pages, entries.page, axis=0, mode="clip")  # [E, K, Dh, ps]
  vg = jnp.take(v_pages, entries.page, axis=0, mode="clip")  # [E, K, ps, Dh]
  qe = jnp.take(q.reshape(s, kv, g, d), entries.slot, axis=0, mode="clip")  # [E, K, G, Dh]
  scores = jnp.sum(qe[..., None].astype(jnp.float32) * kg[:, :, None], axis=3)  # [E, K, G, ps]
  scores = scores / math.sqrt(d)
  top = jnp.take(lengths, entries.slot, mode="fill", fill_value=0)
  valid = (entries.base[:, None] + jnp.arange(ps)[None]) < top[:, None]  # [E, ps]
  scores = jnp.where(valid[:, None, None], scores, L.MASK_VALUE)
  onehot = entries.slot[None, :] == jnp.arange(s)[:, None]  # [S, E]
  slot_max = jnp.max(jnp.where(onehot[:, :, None, None], jnp.max(scores, axis=-1)[None],
                               L.MASK_VALUE), axis=1)  # [S, K, G]
  ex = jnp.exp(scores - jnp.take(slot_max, entries.slot, axis=0, mode="clip")[..., None])
  ex = jnp.where(valid[:, None, None], ex, 0.0)
  hot = onehot.astype(jnp.float32)
  z = jnp.einsum("se,ekg->skg", hot, jnp.sum(ex, axis=-1))
  num = jnp.sum(ex[..., None] * vg[:, :, None].astype(jnp.float32), axis=3)  # [E, K, G, Dh]
  out = jnp.einsum("se,ekgd->skgd", hot, num) / jnp.where(z > 0, z, 1.0)[..., None]
  return out.reshape(s, h, d).astype(q.dtype)


def pallas_attention(q, k_pages, v_pages, page_table, lengths):
  """The Pallas TPU paged-attention decode kernel (it does not scale q: done here)."""
  from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention as kernel
  block = math.gcd(page_table.shape[1], 8)
  q = (q.astype(jnp.float32) / math.sqrt(q.shape[-1])).astype(q.dtype)
  return kernel(q, k_pages, v_pages, lengths.astype(jnp.int32), page_table,
                mask_value=L.MASK_VALUE, pages_per_compute_block=block)


def dense_attention(q, k_pages, v_pages, lengths):
  """The dense pool (page s = slot s's whole cache) read in place: the static sampler's
  attention, positions [0, lengths[s]) of row s attended."""
  if k_pages.shape[0] != q.shape[0]:
    raise ValueError(f"a dense pool has one page per slot: {k_pages.shape[0]} pages for "
                     f"{q.shape[0]} slots")
  mask = jnp.arange(k_pages.shape[3])[None] < lengths[:, None]
  return decode_model.cached_attention(q[:, None], k_pages, v_pages, mask[:, None])[:, 0]


def paged_attention(q, k_pages, v_pages, page_table, entries, lengths, impl: str = "xla"):
  """Decode attention of q [S, H, Dh] over each slot's first lengths[s] positions."""
  if impl == "pallas":
    return pallas_attention(q, k_pages, v_pages, page_table, lengths)
  if impl == "dense":
    return dense_attention(q, k_pages, v_pages, lengths)
  return entry_attention(q, k_pages, v_pages, entries, lengths)


# ---------------------------------------------------------------------------------------------
# Prefill of admitted prompts into pages.


def admit(params, k_pages, v_pages, slots: Slots, tokens, lengths, page_ids, copy_src, copy_dst,
          slot_ids, keys, limits, *, cfg: ModelConfig, n: int, pad_id: int, no_wait: int,
          impl: str = "xla", mesh=None):
  """Prefills A prompts, writes their keys / values into pages and starts n slots per prompt.

  tokens: [A, Pb] right-padded prompts; lengths: [A] true lengths
  (dummy rows: 1); page_ids: [A, ceil(Pb / page_size)] the pages receiving each prompt's positions
  (num_pages where unused); copy_src / copy_dst: [A * n] pages whose content is duplicated (a
  prompt's partially filled last page, for samples 2..n of the group; dst num_pages where none); slot_ids:
  [A * n] the slot of sample j of prompt i at i * n + j (>= S for none); keys: [A * n, 2] their
  rng keys; limits: [A * n] their budgets of new tokens. pad_id fills the new output rows; no_wait = len(wait_token_ids). Returns (k_pages,
  v_pages, slots).
  """
  a, pb = tokens.shape
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
    for pages, x, kind, out in ((k_pages[li], cache["k"][li], "k", new_k),
                                (v_pages[li], cache["v"][li], "v", new_v)):
      pages = write_prompt(pages, x, page_ids, kind, impl)
      out.append(copy_pages(pages, copy_src, copy_dst, impl))
  rep = lambda x: jnp.repeat(x, n, axis=0)
  put = lambda arr, val: arr.at[slot_ids].set(val, mode="drop")
  rows = slot_ids.shape[0]
  slots = Slots(
      logits=put(slots.logits, rep(logits)),
      count=put(slots.count, jnp.zeros((rows,), jnp.int32)),
      start=put(slots.start, rep(lengths).astype(jnp.int32)),
      limit=put(slots.limit, limits.astype(jnp.int32)),
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


def _put_per_row(buf, col, values):
  """buf[s, col[s]] = values[s] (col out of range: nothing), as a write batched over the rows:
  with the rows split over the batch axes each device writes its own, where an indexed scatter
  over [rows, col] pairs made the partitioner gather every row's update to every device."""
  return jax.vmap(lambda r, c, v: r.at[c].set(v, mode="drop"))(buf, col, values)


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
  col = jnp.where(active, step, scfg.max_new_tokens)  # out of range: dropped
  tok = jnp.where(active, tok, pad_id)
  tokens = _put_per_row(slots.tokens, col, tok)
  stopped = active & jnp.isin(tok, stop_ids) & ~injected
  if scfg.stop_sequences:
    stopped = stopped | (active & _stop_sequence_hit(tokens, step, scfg.stop_sequences))
  count = step + active.astype(jnp.int32)
  new = slots._replace(
      tokens=tokens,
      logprobs=_put_per_row(slots.logprobs, col, raw_lp),
      sample_logprobs=_put_per_row(slots.sample_logprobs, col, samp_lp),
      injected=_put_per_row(slots.injected, col, injected),
      done=slots.done | stopped, count=count,
      live=active & ~stopped & (count < slots.limit),
      closed=jnp.where(active, closed, slots.closed),
      pending=jnp.where(active, pending, slots.pending))
  return tok, active, new


def model_step(dparams, k_pages, v_pages, page_table, entries, tokens, positions, write,
               cfg: ModelConfig, impl: str = "xla"):
  """Feeds one token per slot at `positions` [S] (also its cache index); `write` [S] bool says
  which slots keep their keys / values (others write nothing). Returns (logits [S, V] float32,
  k_pages, v_pages)."""
  ps = page_size_of(k_pages[0], impl)
  num_pages = k_pages[0].shape[1 if impl == "pallas" else 0]
  col = jnp.minimum(positions // ps, page_table.shape[1] - 1)
  page = jnp.take_along_axis(page_table, col[:, None], axis=1)[:, 0]  # row-local (`_put_per_row`)
  page = jnp.where(write, page, num_pages)
  off = positions % ps
  lengths = jnp.where(write, positions + 1, 1)
  inv_freq = L.rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  dt = jnp.dtype(cfg.dtype)
  h = dparams["embed"][tokens[:, None]]
  new_k, new_v = [], []
  for li, lp in enumerate(dparams["layers"]):
    kp, vp = k_pages[li], v_pages[li]

    def kv_fn(k, v, kp=kp, vp=vp):  # k, v: [S, 1, K, Dh]
      nk = write_token(kp, k[:, 0], page, off, "k", impl)
      nv = write_token(vp, v[:, 0], page, off, "v", impl)
      return nk, nv, None, (nk, nv)

    def attend(q, nk, nv, _):  # q: [S, 1, H, Dh]
      out = paged_attention(q[:, 0], nk, nv, page_table, entries, lengths, impl)
      return out[:, None].astype(dt)

    h, (nk, nv) = decoder.block(cfg, inv_freq, h, lp, positions[:, None], kv_fn, attention=attend)
    new_k.append(nk)
    new_v.append(nv)
  h = L.rms_norm(h, dparams["final_norm"], cfg.norm_eps)
  logits = decode_model.project_logits(dparams, h, cfg)[:, 0]
  return logits, tuple(new_k), tuple(new_v)


def decode_chunk(dparams, k_pages, v_pages, slots: Slots, page_table, entries: Entries, *,
                 cfg: ModelConfig,
                 sampling: SamplingConfig, pad_id: int, eos_id: int, steps: int,
                 impl: str = "xla"):
  """`steps` decode steps: each picks every live slot's token, then feeds it. Slots that finish
  stop recording (and write no keys / values). page_table [S, max pages] and (xla)
  entries must cover every live slot's positions up to start + count + steps - 1. Returns
  (k_pages, v_pages, slots)."""

  def body(_, carry):
    kp, vp, sl = carry
    tok, active, sl = select(sl, sampling, pad_id, eos_id)
    pos = sl.start + sl.count - 1
    logits, kp, vp = model_step(dparams, kp, vp, page_table, entries, tok, jnp.maximum(pos, 0), sl.live,
                                cfg, impl)
    # A slot that finished this step keeps its last logits (unused).
    sl = sl._replace(logits=jnp.where(sl.live[:, None], logits, sl.logits))
    return kp, vp, sl

  return jax.lax.fori_loop(0, steps, body, (k_pages, v_pages, slots))
