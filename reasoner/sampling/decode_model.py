"""The decoder's one-token step over a sampler-owned KV cache laid out for fast reads.

`decoder.forward` with a cache scans over stacked layers and a stacked [L, B, S, K, Dh] cache. In
a decode loop that costs, per token, a copy of every layer's weights and cache slice (XLA
materialises the slices a scan takes) plus a transposed copy of the cache (the attention
contracts with kv heads ahead of slots). Here the weights are unstacked and cast to the compute
dtype once per call, the layers are unrolled, and each layer's keys and values are their own
buffers, updated in place and read by the attention without a copy. Keys are stored [B, K, Dh, S]
(slots innermost) and values [B, K, S, Dh]: both attention contractions then reduce over a
non-minor axis and write contiguous rows, which on XLA:CPU at batch 64 makes a decode step about
20% faster than keys stored like values (BUILD_NOTES.md). The block itself is
`decoder.block` (with `cached_attention`, the same attention contracted in the cache's layout),
so the numbers are those of `decoder.forward` up to float summation order.

Decode cache: {"k": tuple of n_layers arrays [B, K, Dh, S], "v": tuple of n_layers arrays
[B, K, S, Dh], "segment": [B, S] int32 (0 = empty), "index": int32 scalar (the next slot)}.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from reasoner.model import decoder
from reasoner.model import layers as L
from reasoner.model.config import ModelConfig


def prepare_params(params, cfg: ModelConfig) -> dict:
  """Unstacked per-layer weights (a list of dicts) and the global ones, in cfg.dtype."""
  dt = jnp.dtype(cfg.dtype)
  layers = [jax.tree.map(lambda x: x[i].astype(dt), params["layers"]) for i in range(cfg.n_layers)]
  out = {k: v.astype(dt) for k, v in params.items() if k != "layers"}
  out["layers"] = layers
  return out


def project_logits(params, hidden: jax.Array, cfg: ModelConfig) -> jax.Array:
  """The decoder's output projection of final hidden states [b, t, D] -> float32 [b, t, V]."""
  w = params["embed"] if cfg.tie_embeddings else params["lm_head"]
  return decoder.head_logits(w, hidden, cfg.tie_embeddings, cfg.dtype)


def from_stacked(cache, n: int, cache_len: int) -> dict:
  """A `decoder.init_cache`-style cache of b rows and P slots -> a decode cache of b*n rows
  (each row repeated n times, prompt-major) and cache_len slots (empty beyond P)."""
  p = cache["segment"].shape[1]

  def grow(x, b_axis, s_axis):
    if n > 1:
      x = jnp.repeat(x, n, axis=b_axis)
    pad = [(0, 0)] * x.ndim
    pad[s_axis] = (0, cache_len - p)
    return jnp.pad(x, pad)

  # Stacked [L, B, S, K, Dh] -> per layer keys [B, K, Dh, S] and values [B, K, S, Dh].
  keys = tuple(grow(jnp.transpose(k, (0, 2, 3, 1)), 0, 3) for k in cache["k"])
  values = tuple(grow(jnp.swapaxes(v, 1, 2), 0, 2) for v in cache["v"])
  return {"k": keys, "v": values,
          "segment": grow(cache["segment"], 0, 1), "index": cache["index"]}


def cache_shardings(cache, mesh):
  """NamedShardings of a decode cache: rows over the batch axes, kv heads over `tensor`."""
  from jax.sharding import NamedSharding
  from reasoner import sharding
  spec = lambda logical, x: NamedSharding(mesh, sharding.logical_to_spec(logical, mesh,
                                                                         shape=x.shape))
  kv = lambda xs, names: tuple(spec(("batch", "kv_heads") + names, x) for x in xs)
  return {"k": kv(cache["k"], ("head_dim", "cache_seq")),
          "v": kv(cache["v"], ("cache_seq", "head_dim")),
          "segment": spec(("batch", "cache_seq"), cache["segment"]),
          "index": NamedSharding(mesh, jax.sharding.PartitionSpec())}


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """`layers.gqa_attention` for one query per row against a cache in its own layout.

  q: [b, 1, H, Dh]; k: [b, K, Dh, S]; v: [b, K, S, Dh]; mask: [b, 1, S] bool.
  Returns [b, 1, H, Dh].
  Contracting in the cache's layout (and without the unit query axis) lets XLA read the cache
  in place, without the transposed copy the generic form needs.
  """
  b, t, h, d = q.shape
  kv = k.shape[1]
  if t != 1:
    raise ValueError(f"cached_attention takes one query per row, got {t}")
  q = q.reshape(b, kv, h // kv, d)
  fused = _fused_reductions(b)
  if fused:
    # Multiply-and-reduce fusions read each cache row once; XLA:CPU's batched dot over
    # [g, d] x [d, s] slices is 2-3x slower than this from batch 2 on (BUILD_NOTES.md).
    scores = jnp.sum(q[..., None].astype(jnp.float32) * k[:, :, None], axis=3)
  else:
    scores = jnp.einsum("bkgd,bkds->bkgs", q, k, preferred_element_type=jnp.float32)
  scores = scores / math.sqrt(d)
  scores = jnp.where(mask[:, 0, None, None, :], scores, L.MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  if fused:
    out = jnp.sum(probs[..., None] * v[:, :, None, :, :], axis=-2)
  else:
    out = jnp.einsum("bkgs,bksd->bkgd", probs, v)
  return out.reshape(b, 1, h, d)


def _fused_reductions(rows: int) -> bool:
  """Whether `cached_attention` contracts with elementwise multiply + reduce (XLA:CPU, rows > 1)
  rather than dot products (accelerators, and CPU at batch 1 where the dot is faster)."""
  return rows > 1 and decoder.target_platform() == "cpu"


def step(dparams, cache, tokens: jax.Array, positions: jax.Array, cfg: ModelConfig):
  """Feeds one token per row. tokens, positions: [B]. Returns (logits [B, V] float32, cache)."""
  dt = jnp.dtype(cfg.dtype)
  b = tokens.shape[0]
  index = cache["index"]
  s = cache["segment"].shape[1]
  zero = jnp.zeros((), jnp.int32)
  segment = jax.lax.dynamic_update_slice(cache["segment"], jnp.ones((b, 1), jnp.int32), (zero, index))
  mask = L.attention_mask(index + jnp.arange(1), jnp.ones((b, 1), jnp.int32), jnp.arange(s), segment)
  inv_freq = L.rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  h = dparams["embed"][tokens[:, None]]
  new_k, new_v = [], []
  for li, lp in enumerate(dparams["layers"]):
    ck, cv = cache["k"][li], cache["v"][li]

    def kv_fn(k, v, ck=ck, cv=cv):  # k, v: [B, 1, K, Dh] -> the cache layouts (module docstring)
      nk = jax.lax.dynamic_update_slice(ck, jnp.transpose(k, (0, 2, 3, 1)).astype(ck.dtype),
                                        (zero, zero, zero, index))
      nv = jax.lax.dynamic_update_slice(cv, jnp.swapaxes(v, 1, 2).astype(cv.dtype),
                                        (zero, zero, index, zero))
      return nk.astype(dt), nv.astype(dt), mask, (nk, nv)

    h, (nk, nv) = decoder.block(cfg, inv_freq, h, lp, positions[:, None], kv_fn,
                                attention=cached_attention)
    new_k.append(nk)
    new_v.append(nv)
  h = L.rms_norm(h, dparams["final_norm"], cfg.norm_eps)
  logits = project_logits(dparams, h, cfg)[:, 0]
  return logits, {"k": tuple(new_k), "v": tuple(new_v), "segment": segment, "index": index + 1}
