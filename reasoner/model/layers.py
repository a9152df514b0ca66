"""Stateless building blocks of the decoder: RMSNorm, rotary embeddings, attention, SwiGLU."""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

# Finite "minus infinity": a query whose keys are all masked (a pad row) gets a uniform
# softmax instead of NaNs.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  """x: [..., d]; normalised in float32, returned in x.dtype."""
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return x32.astype(x.dtype) * weight.astype(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[dict] = None) -> jax.Array:
  """Inverse frequencies [head_dim // 2], with optional Llama 3 wavelength scaling."""
  inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if not scaling:
    return inv
  factor = float(scaling["factor"])
  low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
  old_len = float(scaling["original_max_position_embeddings"])
  wavelen = 2 * math.pi / inv
  scaled = jnp.where(wavelen > old_len / low, inv / factor, inv)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotates x [b, t, heads, head_dim] by positions [b, t] (half-split convention)."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, d/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def attention_mask(q_slots: jax.Array, q_segments: jax.Array, k_slots: jax.Array,
                   k_segments: jax.Array) -> jax.Array:
  """Causal, segment-aware mask [b, t, s].

  A query may see a key iff both carry the same non-zero segment id and the key's slot is
  not after the query's. Segment 0 marks padding.
  q_slots: [t] or [b, t]; q_segments: [b, t]; k_slots: [s]; k_segments: [b, s].
  """
  if q_slots.ndim == 1:
    q_slots = q_slots[None]
  causal = k_slots[None, None, :] <= q_slots[:, :, None]
  same = (q_segments[:, :, None] == k_segments[:, None, :]) & (k_segments[:, None, :] != 0)
  return causal & same


def gqa_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Grouped-query attention.

  q: [b, t, h, d]; k, v: [b, s, kv, d]; mask: [b, t, s] bool. Returns [b, t, h, d]; a query
  that sees no key (a padding row) gets 0 and passes no gradient back, as flash kernels do.
  """
  b, t, h, d = q.shape
  kv = k.shape[2]
  q = q.reshape(b, t, kv, h // kv, d)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
  scores = scores / math.sqrt(d)
  scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  sees = jnp.any(mask, axis=-1)[:, :, None, None, None]  # [b, t, 1, 1, 1]
  return jnp.where(sees, out, 0).reshape(b, t, h, d)


def swiglu(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array) -> jax.Array:
  """x: [b, t, d] -> [b, t, d] through silu(x W_gate) * (x W_up) W_down."""
  gate = jnp.einsum("btd,df->btf", x, w_gate)
  up = jnp.einsum("btd,df->btf", x, w_up)
  return jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, w_down)
