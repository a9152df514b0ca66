"""One causal, segment-aware attention entry point for training and prefill.

`attention(q, k, v, q_segment_ids, kv_segment_ids, q_offset=..., impl=...)` computes the same
function as `layers.attention_mask` + `layers.gqa_attention`: query i sits at slot
`q_offset + i`, key j at slot j, and query i sees key j iff

  j <= q_offset + i  and  q_seg[i] == kv_seg[j]  and  kv_seg[j] != 0.

Implementations:
  dense      the reference in `layers` (materialises float32 [b, kv, g, t, s] scores).
  blockwise  pure XLA, FlashAttention-2 style: query blocks x key blocks with an online softmax
             in float32 and a `custom_vjp` backward that saves only the output and the
             logsumexp per query and recomputes probabilities block by block, so forward and
             backward memory is O(t * d) plus one [b, kv, g, block_q, block_kv] tile. Key blocks
             entirely above the causal diagonal are skipped (loop bounds), not just masked.
  cudnn      `jax.nn.dot_product_attention(implementation="cudnn")` (NVIDIA GPU only). Rows of
             one sequence (`packed=False`) pass their lengths, which cuDNN masks itself;
             `auto` picks it for those only. Asked for explicitly, packed rows run too, with
             their segment mask as a [b, 1, t, s] additive bias (t * s memory per row, twice
             with its gradient's buffer: for rows of a few thousand tokens).
  splash     the Pallas TPU splash-attention kernel (TPU only; self-attention, t % 128 == 0).

Padding rows (a query with no visible key, e.g. q_seg == 0) get 0 from every implementation
and pass no gradient back, so all of them agree on every row, padding included.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from reasoner.model import layers as L

IMPLS = ("auto", "dense", "blockwise", "cudnn", "splash")

# `auto` uses blockwise from this many (query, key) pairs per row and head, dense below. At
# 1024 x 1024 the dense path holds ~4 MiB of float32 scores per row and head several times over
# (mask, scores, probabilities, their gradient), while blockwise holds one tile. Measured on
# 2 CPU cores, jit fwd+bwd, h=8, kv=2, d=64, causal: t=s=768 dense 0.15 s vs blockwise 0.19 s
# (loop overhead; 768 pads to 1024 with 512 blocks); t=s=1024 0.16 s vs 0.10 s; t=s=2048
# 1.28 s vs 0.31 s (blockwise skips the key blocks above the diagonal). Decode (t=1) stays dense.
BLOCKWISE_MIN_PAIRS = 1024 * 1024

# Finite "minus infinity" for masked scores inside the blockwise kernel; masked probabilities
# are also zeroed explicitly, so its exact value never reaches the result.
_NEG = -1e30


def _static_int(x) -> Optional[int]:
  """x as a Python int when it is a concrete integer, else None (a traced offset)."""
  if isinstance(x, (int, np.integer)):
    return int(x)
  return None


def _cuda_capability() -> Optional[tuple]:
  """(major, minor) compute capability of the first device on a CUDA backend, else None."""
  if jax.default_backend() != "gpu":
    return None
  try:
    if "cuda" not in str(jax.devices()[0].client.platform_version).lower():
      return None  # e.g. ROCm
    return tuple(int(x) for x in jax.devices()[0].compute_capability.split("."))
  except Exception:  # noqa: BLE001 (a backend without these attributes is not CUDA)
    return None


def _cudnn_problem(q, k, q_offset, packed: bool, explicit: bool = False) -> Optional[str]:
  """Why the cudnn path cannot run these arguments (None when it can); `explicit`: asked for by
  name (then packed rows are allowed, through the mask bias)."""
  t, d = q.shape[1], q.shape[3]
  capability = _cuda_capability()
  if capability is None:
    return f"needs an NVIDIA GPU (CUDA) backend, not {jax.default_backend()!r}"
  if capability < (8, 0):
    return f"needs compute capability >= 8.0, got {capability}"
  if packed and not explicit:
    return ("takes packed segments only when asked for (impl='cudnn': a [b, 1, t, s] mask "
            "bias); auto uses it for packed=False rows")
  if _static_int(q_offset) != 0:
    return "needs a static q_offset == 0"
  if k.shape[1] != t:
    return f"needs self-attention shapes (t == s), got t={t}, s={k.shape[1]}"
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    return f"needs bfloat16 or float16 inputs, got {q.dtype}"
  max_d = 256 if capability >= (9, 0) else 128
  if d % 8 or d > max_d:
    return f"needs a head dim that is a multiple of 8 and <= {max_d}, got {d}"
  return None


def _splash_problem(q, k, q_offset) -> Optional[str]:
  """Why the splash path cannot run these arguments (None when it can)."""
  t = q.shape[1]
  if jax.default_backend() != "tpu":
    return f"needs a TPU backend, not {jax.default_backend()!r}"
  if _static_int(q_offset) != 0:
    return "needs a static q_offset == 0"
  if k.shape[1] != t:
    return f"needs self-attention shapes (t == s), got t={t}, s={k.shape[1]}"
  if t % 128:
    return f"needs t to be a multiple of 128, got {t}"
  return None


def select_impl(q, k, *, q_offset=0, impl: str = "auto", packed: bool = True) -> str:
  """The implementation `attention` runs for these (static) shapes and options.

  auto: splash on TPU when eligible, cudnn on an NVIDIA GPU when eligible (needs packed=False),
  else blockwise when t * s >= BLOCKWISE_MIN_PAIRS, else dense. Explicit choices are validated
  (an explicit cudnn also takes packed rows).
  """
  if impl not in IMPLS:
    raise ValueError(f"unknown attention impl {impl!r}; valid: {', '.join(IMPLS)}")
  if impl == "cudnn":
    problem = _cudnn_problem(q, k, q_offset, packed, explicit=True)
    if problem:
      raise ValueError(f"attention impl 'cudnn' {problem}")
  if impl == "splash":
    problem = _splash_problem(q, k, q_offset)
    if problem:
      raise ValueError(f"attention impl 'splash' {problem}")
  if impl != "auto":
    return impl
  if _splash_problem(q, k, q_offset) is None:
    return "splash"
  if _cudnn_problem(q, k, q_offset, packed) is None:
    return "cudnn"
  return "blockwise" if q.shape[1] * k.shape[1] >= BLOCKWISE_MIN_PAIRS else "dense"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
              kv_segment_ids: jax.Array, *, q_offset=0, impl: str = "auto",
              block_q: int = 512, block_kv: int = 512, packed: bool = True) -> jax.Array:
  """Causal, segment-aware grouped-query attention.

  q: [b, t, h, d]; k, v: [b, s, kv, d] with h % kv == 0; q_segment_ids: [b, t] int;
  kv_segment_ids: [b, s] int (0 = padding). q_offset: int or scalar int array, the slot of
  query 0 (keys sit at slots 0..s-1). Scale 1/sqrt(d). Returns [b, t, h, d] in q.dtype.

  Rows of queries that see no key return 0 and pass no gradient back (module docstring).

  packed=False is the caller's promise that each row is a single sequence: t == s, the two
  segment-id arrays are the same, and each row's non-zero ids are one contiguous run of a
  single id (left and/or right padding). Only the cudnn path uses it; it rotates every row so
  its run starts at slot 0 and passes the run lengths as cudnn sequence lengths (packed rows
  take cudnn only when impl="cudnn" names it, through a mask bias).
  block_q / block_kv: tile sizes of the blockwise path (clipped to t / s).
  """
  h = q.shape[2]
  if k.shape[2] == 0 or h % k.shape[2]:
    raise ValueError(f"query heads {h} must be a multiple of kv heads {k.shape[2]}")
  chosen = select_impl(q, k, q_offset=q_offset, impl=impl, packed=packed)
  if chosen == "dense":
    return dense_attention(q, k, v, q_segment_ids, kv_segment_ids, q_offset=q_offset)
  if chosen == "blockwise":
    return blockwise_attention(q, k, v, q_segment_ids, kv_segment_ids, q_offset=q_offset,
                               block_q=block_q, block_kv=block_kv)
  if chosen == "cudnn" and packed:
    return _masked_self_attention(q, k, v, q_segment_ids, kv_segment_ids, implementation="cudnn")
  if chosen == "cudnn":
    return _rotated_single_sequence(q, k, v, q_segment_ids, implementation="cudnn")
  return _splash_attention(q, k, v, q_segment_ids, kv_segment_ids)


def dense_attention(q, k, v, q_segment_ids, kv_segment_ids, *, q_offset=0) -> jax.Array:
  """The reference: `layers.attention_mask` + `layers.gqa_attention`. Shapes as `attention`."""
  t, s = q.shape[1], k.shape[1]
  mask = L.attention_mask(q_offset + jnp.arange(t), q_segment_ids, jnp.arange(s), kv_segment_ids)
  return L.gqa_attention(q, k, v, mask).astype(q.dtype)


# ----------------------------------------------------------------------------------------------
# Blockwise (FlashAttention-2 style) path.


def blockwise_attention(q, k, v, q_segment_ids, kv_segment_ids, *, q_offset=0,
                        block_q: int = 512, block_kv: int = 512) -> jax.Array:
  """Memory-efficient attention; shapes as `attention`. Padding-query rows return 0."""
  b, t, h, d = q.shape
  s, kv = k.shape[1], k.shape[2]
  bq, bk = max(1, min(block_q, t)), max(1, min(block_kv, s))
  tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
  q_seg = jnp.pad(q_segment_ids.astype(jnp.int32), ((0, 0), (0, tp - t)))
  kv_seg = jnp.pad(kv_segment_ids.astype(jnp.int32), ((0, 0), (0, sp - s)))
  q5 = jnp.pad(q, ((0, 0), (0, tp - t), (0, 0), (0, 0))).reshape(b, tp, kv, h // kv, d)
  k = jnp.pad(k, ((0, 0), (0, sp - s), (0, 0), (0, 0)))
  v = jnp.pad(v, ((0, 0), (0, sp - s), (0, 0), (0, 0)))
  offset = jnp.asarray(q_offset, jnp.int32)
  out = _flash(q5, k, v, q_seg, kv_seg, offset, bq, bk)
  return out.reshape(b, tp, h, d)[:, :t]


def _kv_block_limit(i, offset, bq: int, bk: int, nk: int):
  """Number of key blocks query block i can see: those starting at or before its last slot."""
  last_slot = offset + (i + 1) * bq - 1
  return jnp.clip(last_slot // bk + 1, 0, nk)


def _q_block_start(first_key_slot, offset, bq: int, nq: int):
  """First query block whose last slot is at or after `first_key_slot`."""
  return jnp.clip((first_key_slot - offset) // bq, 0, nq)


def _tile_scores(q_blk, k_blk, qs, ks, q_slots, k_slots, scale):
  """Scores [b, kv, g, bq, bk] (float32, masked to _NEG) and the mask [b, 1, 1, bq, bk].

  q_blk: [b, bq, kv, g, d]; k_blk: [b, bk, kv, d]; qs/ks: segment ids [b, bq] / [b, bk];
  q_slots / k_slots: [bq] / [bk].
  """
  scores = jnp.einsum("bqkgd,bskd->bkgqs", q_blk, k_blk,
                      preferred_element_type=jnp.float32) * scale
  mask = ((k_slots[None, None, :] <= q_slots[None, :, None])
          & (qs[:, :, None] == ks[:, None, :]) & (ks[:, None, :] != 0))
  mask = mask[:, None, None]
  return jnp.where(mask, scores, _NEG), mask


def _flash_forward(q, k, v, q_seg, kv_seg, offset, bq: int, bk: int):
  """q: [b, tp, kv, g, d]; k, v: [b, sp, kv, d]. Returns out (q.dtype) and lse [b, kv, g, tp]."""
  b, tp, kv, g, d = q.shape
  sp = k.shape[1]
  nq, nk = tp // bq, sp // bk
  scale = 1.0 / math.sqrt(d)

  def q_block(i):
    q_blk = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=1)
    qs = jax.lax.dynamic_slice_in_dim(q_seg, i * bq, bq, axis=1)
    q_slots = offset + i * bq + jnp.arange(bq)

    def kv_step(j, carry):
      m, l, acc = carry
      k_blk = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=1)
      v_blk = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=1)
      ks = jax.lax.dynamic_slice_in_dim(kv_seg, j * bk, bk, axis=1)
      scores, mask = _tile_scores(q_blk, k_blk, qs, ks, q_slots, j * bk + jnp.arange(bk), scale)
      m_new = jnp.maximum(m, scores.max(-1))
      p = jnp.where(mask, jnp.exp(scores - m_new[..., None]), 0.0)
      alpha = jnp.exp(m - m_new)
      l = alpha * l + p.sum(-1)
      pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), v_blk,
                      preferred_element_type=jnp.float32)
      return m_new, l, alpha[..., None] * acc + pv

    init = (jnp.full((b, kv, g, bq), _NEG, jnp.float32), jnp.zeros((b, kv, g, bq), jnp.float32),
            jnp.zeros((b, kv, g, bq, d), jnp.float32))
    m, l, acc = jax.lax.fori_loop(0, _kv_block_limit(i, offset, bq, bk, nk), kv_step, init)
    seen = l > 0
    safe_l = jnp.where(seen, l, 1.0)
    out = jnp.where(seen[..., None], acc / safe_l[..., None], 0.0)
    lse = jnp.where(seen, m + jnp.log(safe_l), 0.0)
    return out.astype(q.dtype), lse

  out, lse = jax.lax.map(q_block, jnp.arange(nq))  # [nq, b, kv, g, bq, d], [nq, b, kv, g, bq]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, tp, kv, g, d)
  lse = lse.transpose(1, 2, 3, 0, 4).reshape(b, kv, g, tp)
  return out, lse


def _flash_backward(q, k, v, q_seg, kv_seg, offset, out, lse, dout, bq: int, bk: int):
  """FlashAttention-2 backward: loop over key blocks, and inside over the query blocks that
  see them, recomputing probabilities from lse. Returns dq, dk, dv in the input dtypes."""
  b, tp, kv, g, d = q.shape
  sp = k.shape[1]
  nq, nk = tp // bq, sp // bk
  scale = 1.0 / math.sqrt(d)
  # delta_i = sum_d dout_i * out_i = sum_j p_ij dp_ij.
  delta = jnp.einsum("btkgd,btkgd->bkgt", dout.astype(jnp.float32), out.astype(jnp.float32))

  def kv_block(j, carry):
    dq, dk, dv = carry
    k_blk = jax.lax.dynamic_slice_in_dim(k, j * bk, bk, axis=1)
    v_blk = jax.lax.dynamic_slice_in_dim(v, j * bk, bk, axis=1)
    ks = jax.lax.dynamic_slice_in_dim(kv_seg, j * bk, bk, axis=1)
    k_slots = j * bk + jnp.arange(bk)

    def q_step(i, inner):
      dq, dk_j, dv_j = inner
      q_blk = jax.lax.dynamic_slice_in_dim(q, i * bq, bq, axis=1)
      do_blk = jax.lax.dynamic_slice_in_dim(dout, i * bq, bq, axis=1)
      qs = jax.lax.dynamic_slice_in_dim(q_seg, i * bq, bq, axis=1)
      lse_i = jax.lax.dynamic_slice_in_dim(lse, i * bq, bq, axis=3)
      delta_i = jax.lax.dynamic_slice_in_dim(delta, i * bq, bq, axis=3)
      scores, mask = _tile_scores(q_blk, k_blk, qs, ks, offset + i * bq + jnp.arange(bq),
                                  k_slots, scale)
      p = jnp.where(mask, jnp.exp(scores - lse_i[..., None]), 0.0)  # [b, kv, g, bq, bk]
      dv_j = dv_j + jnp.einsum("bkgqs,bqkgd->bskd", p.astype(dout.dtype), do_blk,
                               preferred_element_type=jnp.float32)
      dp = jnp.einsum("bqkgd,bskd->bkgqs", do_blk, v_blk, preferred_element_type=jnp.float32)
      ds = (p * (dp - delta_i[..., None]) * scale).astype(q.dtype)
      dk_j = dk_j + jnp.einsum("bkgqs,bqkgd->bskd", ds, q_blk,
                               preferred_element_type=jnp.float32)
      dq_i = jax.lax.dynamic_slice_in_dim(dq, i * bq, bq, axis=1)
      dq_i = dq_i + jnp.einsum("bkgqs,bskd->bqkgd", ds, k_blk, preferred_element_type=jnp.float32)
      return jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * bq, axis=1), dk_j, dv_j

    zeros = jnp.zeros((b, bk, kv, d), jnp.float32)
    dq, dk_j, dv_j = jax.lax.fori_loop(_q_block_start(j * bk, offset, bq, nq), nq, q_step,
                                       (dq, zeros, zeros))
    dk = jax.lax.dynamic_update_slice_in_dim(dk, dk_j.astype(dk.dtype), j * bk, axis=1)
    dv = jax.lax.dynamic_update_slice_in_dim(dv, dv_j.astype(dv.dtype), j * bk, axis=1)
    return dq, dk, dv

  init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, k.dtype), jnp.zeros(v.shape, v.dtype))
  dq, dk, dv = jax.lax.fori_loop(0, nk, kv_block, init)
  return dq.astype(q.dtype), dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _flash(q, k, v, q_seg, kv_seg, offset, bq: int, bk: int):
  """q: [b, tp, kv, g, d] (tp % bq == 0); k, v: [b, sp, kv, d] (sp % bk == 0); q_seg [b, tp],
  kv_seg [b, sp] int32; offset: int32 scalar. Returns [b, tp, kv, g, d] in q.dtype."""
  return _flash_forward(q, k, v, q_seg, kv_seg, offset, bq, bk)[0]


def _flash_fwd(q, k, v, q_seg, kv_seg, offset, bq, bk):
  out, lse = _flash_forward(q, k, v, q_seg, kv_seg, offset, bq, bk)
  return out, (q, k, v, q_seg, kv_seg, offset, out, lse)


def _flash_bwd(bq, bk, res, dout):
  q, k, v, q_seg, kv_seg, offset, out, lse = res
  dq, dk, dv = _flash_backward(q, k, v, q_seg, kv_seg, offset, out, lse, dout, bq, bk)
  return dq, dk, dv, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------------------------
# Accelerator kernels (not runnable on CPU; `select_impl` guards them).


def _rotated_single_sequence(q, k, v, segment_ids, *, implementation: str = "cudnn"):
  """Self-attention for rows that are one contiguous run of non-zero segment ids.

  q: [b, t, h, d]; k, v: [b, t, kv, d]; segment_ids: [b, t] (the q and kv ids, which must be
  equal). Each row is rotated so its run starts at slot 0 (left padding becomes right
  padding), attended with causal masking and the run length as sequence length via
  `jax.nn.dot_product_attention`, and rotated back. Padding rows return 0 (no gradient).
  `implementation` is "cudnn" in `attention`; tests run the same code with "xla" on CPU.
  """
  t = q.shape[1]
  valid = segment_ids != 0
  lead = jnp.argmax(valid, axis=1)  # [b]; 0 for an all-padding row.
  lengths = jnp.maximum(valid.sum(1), 1).astype(jnp.int32)  # >= 1 keeps every row non-empty.
  ar = jnp.arange(t)[None]

  def roll(x, shift):  # x [b, t, ...]; row r becomes x[r, (i + shift[r]) % t].
    idx = (ar + shift[:, None]) % t
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

  out = jax.nn.dot_product_attention(
      roll(q, lead), roll(k, lead), roll(v, lead), is_causal=True, query_seq_lengths=lengths,
      key_value_seq_lengths=lengths, implementation=implementation)
  out = roll(out, -lead)
  return jnp.where(valid[:, :, None, None], out, 0).astype(q.dtype)


def _masked_self_attention(q, k, v, q_segment_ids, kv_segment_ids, *,
                           implementation: str = "cudnn"):
  """Self-attention (t == s, q_offset 0) of packed rows through `jax.nn.dot_product_attention`:
  causal, with the segment rule as a boolean [b, 1, t, s] mask (JAX turns it into an additive
  bias of a large negative number, so a padding query's row stays finite). Padding queries
  return 0 (no gradient). `implementation` is "cudnn" in `attention`; tests run "xla" on CPU."""
  q_seg, kv_seg = q_segment_ids.astype(jnp.int32), kv_segment_ids.astype(jnp.int32)
  mask = (q_seg[:, None, :, None] == kv_seg[:, None, None, :]) & (kv_seg[:, None, None, :] != 0)
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                     implementation=implementation)
  return jnp.where((q_seg != 0)[:, :, None, None], out, 0).astype(q.dtype)


def _splash_block(t: int) -> int:
  """The largest of 512, 256, 128 that divides t (t % 128 == 0)."""
  return next(size for size in (512, 256, 128) if t % size == 0)


def _splash_attention(q, k, v, q_segment_ids, kv_segment_ids, *, interpret: bool = False):
  """Pallas TPU splash attention, vmapped over the batch. q: [b, t, h, d]; k, v: [b, t, kv, d].

  Query head n uses kv head n // (h // kv), as in `gqa_attention` (splash's own GQA layout).
  Causal mask per head plus SegmentIds; a padding query (id 0) sees the earlier padding keys
  (id 0) and always itself inside the kernel, so no row is empty; its output is then set to 0,
  as the other implementations give it. Needs q and kv ids to describe the same sequence
  (self-attention).
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import (splash_attention_kernel as sk,
                                                               splash_attention_mask as sm)
  b, t, h, d = q.shape
  size = _splash_block(t)
  sizes = sk.BlockSizes(block_q=size, block_kv=size, block_kv_compute=size, block_q_dkv=size,
                        block_kv_dkv=size, block_kv_dkv_compute=size, block_q_dq=size,
                        block_kv_dq=size)
  mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(h)])
  kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)
  scaled = (q * (1.0 / math.sqrt(d))).astype(q.dtype)
  heads_first = lambda x: x.transpose(0, 2, 1, 3)  # [b, t, n, d] -> [b, n, t, d]
  segments = sk.SegmentIds(q=q_segment_ids.astype(jnp.int32), kv=kv_segment_ids.astype(jnp.int32))
  out = heads_first(jax.vmap(kernel)(heads_first(scaled), heads_first(k), heads_first(v), segments))
  return jnp.where((q_segment_ids != 0)[:, :, None, None], out, 0).astype(q.dtype)
