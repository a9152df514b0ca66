"""A pure-functional decoder of the Llama / Qwen2 family.

Parameters are a plain nested dict of arrays. Per-layer weights are stacked along a leading
`layers` axis and the blocks run under `jax.lax.scan`, so compile time does not grow with depth.

Layout (L = n_layers, D = d_model, H = n_heads, K = n_kv_heads, Dh = head_dim, F = d_ff):
  embed       [V, D]
  layers/attn_norm [L, D]        layers/mlp_norm [L, D]
  layers/wq   [L, D, H, Dh]      layers/bq [L, H, Dh]   (qkv_bias only)
  layers/wk   [L, D, K, Dh]      layers/bk [L, K, Dh]
  layers/wv   [L, D, K, Dh]      layers/bv [L, K, Dh]
  layers/wo   [L, H, Dh, D]
  layers/w_gate, layers/w_up [L, D, F]   layers/w_down [L, F, D]
  final_norm  [D]
  lm_head     [D, V]             (absent with tie_embeddings)

The KV cache is a dict of `k`, `v` [L, B, S, K, Dh], `segment` [B, S] (0 = empty slot) and
`index` (a scalar: the next slot to write). All rows write the same slots; a row's rotary
positions and its segment ids say where its tokens really are, so left-padded prompts work.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from reasoner.model import layers as L
from reasoner.model.attention import attention
from reasoner.model.config import ModelConfig
from reasoner.sharding.activations import constrain, current_mesh

Params = dict[str, Any]
Cache = dict[str, jax.Array]


def _dtype(name: str):
  return jnp.dtype(name)


def param_shapes(cfg: ModelConfig) -> dict:
  """Shapes of every parameter, as a pytree of tuples."""
  nl, d, h, k, hd, f = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                        cfg.d_ff)
  lay = {
      "attn_norm": (nl, d), "mlp_norm": (nl, d),
      "wq": (nl, d, h, hd), "wk": (nl, d, k, hd), "wv": (nl, d, k, hd), "wo": (nl, h, hd, d),
      "w_gate": (nl, d, f), "w_up": (nl, d, f), "w_down": (nl, f, d),
  }
  if cfg.qkv_bias:
    lay.update(bq=(nl, h, hd), bk=(nl, k, hd), bv=(nl, k, hd))
  shapes = {"embed": (cfg.vocab_size, d), "layers": lay, "final_norm": (d,)}
  if not cfg.tie_embeddings:
    shapes["lm_head"] = (d, cfg.vocab_size)
  return shapes


# Logical axis names per parameter dimension; `reasoner.sharding` maps them onto mesh axes.
_LOGICAL = {
    "embed": ("vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "final_norm": ("norm",),
    "attn_norm": ("layers", "norm"), "mlp_norm": ("layers", "norm"),
    "wq": ("layers", "embed", "heads", "head_dim"),
    "wk": ("layers", "embed", "kv_heads", "head_dim"),
    "wv": ("layers", "embed", "kv_heads", "head_dim"),
    "wo": ("layers", "heads", "head_dim", "embed"),
    "bq": ("layers", "heads", "head_dim"),
    "bk": ("layers", "kv_heads", "head_dim"), "bv": ("layers", "kv_heads", "head_dim"),
    "w_gate": ("layers", "embed", "mlp"), "w_up": ("layers", "embed", "mlp"),
    "w_down": ("layers", "mlp", "embed"),
}


def param_logical_axes(cfg: ModelConfig) -> dict:
  """Logical axis names of every parameter (same tree structure as the params)."""
  shapes = param_shapes(cfg)
  out = {k: _LOGICAL[k] for k in shapes if k != "layers"}
  out["layers"] = {k: _LOGICAL[k] for k in shapes["layers"]}
  return out


def init_params(cfg: ModelConfig, rng: jax.Array) -> Params:
  """Random init: normal(init_std) matrices, output projections scaled by 1/sqrt(2L), unit norms."""
  shapes = param_shapes(cfg)
  flat, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))
  keys = jax.random.split(rng, len(flat))
  pdt = _dtype(cfg.param_dtype)
  leaves = []
  for key, (path, shape) in zip(keys, flat):
    name = path[-1].key
    if name.endswith("norm"):
      leaves.append(jnp.ones(shape, pdt))
    elif name in ("bq", "bk", "bv"):
      leaves.append(jnp.zeros(shape, pdt))
    else:
      std = cfg.init_std
      if name in ("wo", "w_down"):
        std = std / (2 * cfg.n_layers) ** 0.5
      leaves.append((std * jax.random.normal(key, shape, jnp.float32)).astype(pdt))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Optional[str] = None) -> Cache:
  """An empty KV cache for `batch` rows of up to `max_len` slots."""
  dt = _dtype(dtype or cfg.dtype)
  shape = (cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.head_dim)
  return {
      "k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt),
      "segment": jnp.zeros((batch, max_len), jnp.int32),
      "index": jnp.zeros((), jnp.int32),
  }


# Per projection: the einsum of x with the weight, and those of x with a LoRA adapter's `a` and
# of (x a) with its `b` (`a` takes the weight's input dims and rank r, `b` rank r and its output
# dims; see `reasoner.model.lora`).
_PROJ = {
    "wq": ("btd,dhk->bthk", "btd,dr->btr", "btr,rhk->bthk"),
    "wk": ("btd,dhk->bthk", "btd,dr->btr", "btr,rhk->bthk"),
    "wv": ("btd,dhk->bthk", "btd,dr->btr", "btr,rhk->bthk"),
    "wo": ("bthk,hkd->btd", "bthk,hkr->btr", "btr,rd->btd"),
    "w_gate": ("btd,df->btf", "btd,dr->btr", "btr,rf->btf"),
    "w_up": ("btd,df->btf", "btd,dr->btr", "btr,rf->btf"),
    "w_down": ("btf,fd->btd", "btf,fr->btr", "btr,rd->btd"),
}


def project(cfg: ModelConfig, x: jax.Array, lp, name: str) -> jax.Array:
  """x times this layer's weight `name`, plus (lora_alpha / lora_rank) x (x a) b when the
  layer params carry an adapter for it (lp["lora"][name] = {"a", "b"}); never merged."""
  eq, eq_a, eq_b = _PROJ[name]
  w = lp[name]
  if name in _FLAT and flat_matmuls():
    y = _flat_project(x, w)
  else:
    y = matmul(eq, x, w)
  adapter = lp.get("lora", {}).get(name)
  if adapter is not None:
    xa = matmul(eq_a, x, adapter["a"])
    y = y + (cfg.lora_alpha / cfg.lora_rank) * matmul(eq_b, xa, adapter["b"])
  return y


_FLAT = ("w_gate", "w_up", "w_down")  # the MLP (bit-identical results; q/k/v/o were not)


def flat_matmuls() -> bool:
  """Whether `project` runs the MLP's weights (`_FLAT`) as one 2-D matmul over the flattened
  rows (XLA:CPU on one device) rather than the einsum over [b, t, ...] (accelerators, and
  anything traced under a mesh of several devices, where a reshape across sharded axes could
  move data). On XLA:CPU the einsum's backward made the tiny preset's train step ~1.35x slower,
  and the flattened MLP gives bit-identical losses and gradients (the attention projections did
  not: they stay einsums). The fused SFT head (`reasoner.losses.logprobs.chunked_nll`) follows
  the same rule. BUILD_NOTES "Train step on CPU"."""
  if target_platform() != "cpu":
    return False
  mesh = current_mesh()
  return mesh is None or mesh.size == 1


_TARGET = contextvars.ContextVar("reasoner_target_platform", default=None)


@contextlib.contextmanager
def compile_for(platform: str):
  """Within it, the model's backend-dependent choices (`flat_matmuls`, `matmul_out_dtype`)
  are made for `platform` ("cpu", or an accelerator: "gpu", "tpu", "accelerator") rather than
  for the backend that traces: the planner compiles an accelerator's programs on CPU devices."""
  token = _TARGET.set(platform)
  try:
    yield
  finally:
    _TARGET.reset(token)


def target_platform() -> str:
  """The platform the model's programs are traced for: `compile_for`'s, else JAX's backend."""
  return _TARGET.get() or jax.default_backend()


def matmul_out_dtype(dt) -> Optional[Any]:
  """The result dtype to ask of a matmul of `dt` inputs (the result is cast back to `dt`):
  float32 for bfloat16 on XLA:CPU, whose bfloat16 x bfloat16 -> float32 kernels run 4-5x
  faster than its bfloat16-output ones on this project's machine (BUILD_NOTES "bfloat16 on
  CPU"); None (the inputs' dtype) elsewhere, where accelerators accumulate in float32 anyway
  and a float32 result would make the backward's matmuls float32."""
  if jnp.dtype(dt) == jnp.bfloat16 and target_platform() == "cpu":
    return jnp.float32
  return None


def matmul(eq: str, x: jax.Array, w: jax.Array) -> jax.Array:
  """einsum(eq, x, w) in x's dtype (w cast to it). Where `matmul_out_dtype` asks for float32
  results (bfloat16 on XLA:CPU) they are rounded to bfloat16 once, and the gradient's matmuls
  take bfloat16 cotangents the same way (`_rounded_einsum`), as they do on an accelerator;
  elsewhere it is the plain einsum."""
  dt = x.dtype
  w = w.astype(dt)
  if matmul_out_dtype(dt) is None:
    return jnp.einsum(eq, x, w)
  return _rounded_einsum(eq, x, w)


def _einsum_transposes(eq: str) -> tuple[str, str]:
  """The equations of the two gradients of einsum(eq, x, w) -> y: (dy, w -> dx), (x, dy -> dw).
  Valid when each index of an operand is in the other operand or in the output (a matmul,
  batched or not; "..." dims summed in dw)."""
  ins, out = eq.split("->")
  a, b = ins.split(",")
  return f"{out},{b}->{a}", f"{a},{out}->{b}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _rounded_einsum(eq: str, x: jax.Array, w: jax.Array) -> jax.Array:
  """einsum of same-dtype operands with a float32 result rounded to their dtype once. Plain
  differentiation would give the backward a float32 cotangent (that of the float32 product)
  and so float32 x float32 gradient matmuls, 3x slower on XLA:CPU than bfloat16 x bfloat16 ->
  float32 (BUILD_NOTES "bfloat16 on CPU"); the backward here rounds the cotangent instead."""
  return jnp.einsum(eq, x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _rounded_einsum_fwd(eq, x, w):
  return _rounded_einsum(eq, x, w), (x, w)


def _rounded_einsum_bwd(eq, res, dy):
  x, w = res
  eq_x, eq_w = _einsum_transposes(eq)
  dy = dy.astype(x.dtype)
  return (_rounded_einsum(eq_x, dy, w), _rounded_einsum(eq_w, x, dy))


_rounded_einsum.defvjp(_rounded_einsum_fwd, _rounded_einsum_bwd)


def _flat_project(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [b, t, in] times w [in, out] as one [b * t, in] @ [in, out] matmul."""
  y = matmul("ri,io->ro", x.reshape(-1, x.shape[-1]), w)
  return y.reshape(*x.shape[:-1], w.shape[-1])


def block(cfg: ModelConfig, inv_freq, h, lp, positions, kv_fn, attention=L.gqa_attention):
  """One pre-norm block on h [b, t, D] with this layer's params `lp` (unstacked).

  kv_fn(k, v) -> (keys, values, mask, extra carried out) turns the new keys / values
  [b, t, K, Dh] into the ones attended to (e.g. through a KV cache); `attention(q, keys, values,
  mask)` -> [b, t, H, Dh] must accept the layout and mask kv_fn returns. Returns (h, extra).
  Activations are constrained to their logical shardings when traced under a mesh.
  """
  h = constrain(h, ("act_batch", "act_seq", "act_embed"))
  x = L.rms_norm(h, lp["attn_norm"], cfg.norm_eps)
  q = project(cfg, x, lp, "wq")
  k = project(cfg, x, lp, "wk")
  v = project(cfg, x, lp, "wv")
  if cfg.qkv_bias:
    dt = h.dtype
    q, k, v = q + lp["bq"].astype(dt), k + lp["bk"].astype(dt), v + lp["bv"].astype(dt)
  q = constrain(L.apply_rope(q, positions, inv_freq), ("act_batch", "act_seq", "act_heads", None))
  k = constrain(L.apply_rope(k, positions, inv_freq), ("act_batch", "act_seq", "act_kv_heads", None))
  v = constrain(v, ("act_batch", "act_seq", "act_kv_heads", None))
  keys, values, mask, extra = kv_fn(k, v)
  attn = attention(q, keys, values, mask)
  h = h + project(cfg, attn, lp, "wo")
  h = constrain(h, ("act_batch", "act_seq", "act_embed"))
  x = L.rms_norm(h, lp["mlp_norm"], cfg.norm_eps)
  gate = constrain(project(cfg, x, lp, "w_gate"), ("act_batch", "act_seq", "act_mlp"))
  up = constrain(project(cfg, x, lp, "w_up"), ("act_batch", "act_seq", "act_mlp"))
  h = h + project(cfg, jax.nn.silu(gate) * up, lp, "w_down")
  return h, extra


def head_logits(w: jax.Array, h: jax.Array, tied: bool, dt=None) -> jax.Array:
  """h [..., D] times the output head's weights w ([V, D] tied, else [D, V]) in `dt` (default
  h's dtype) -> float32 logits [..., V], rounded to `dt` once (`matmul_out_dtype`)."""
  h = h if dt is None else h.astype(dt)
  return matmul("...d,vd->...v" if tied else "...d,dv->...v", h, w).astype(jnp.float32)


def unembed(params: Params, h: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Final hidden states [..., D] -> float32 logits [..., V] (tied or separate output head)."""
  w = params["embed"] if cfg.tie_embeddings else params["lm_head"]
  return head_logits(w, h, cfg.tie_embeddings)


def _embed(params: Params, tokens: jax.Array, cfg: ModelConfig, segment_ids: Optional[jax.Array]):
  """(token embeddings [b, t, D] in cfg.dtype, int32 segment ids (default all ones), rotary
  inverse frequencies)."""
  if segment_ids is None:
    segment_ids = jnp.ones(tokens.shape, jnp.int32)
  inv_freq = L.rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  return params["embed"].astype(_dtype(cfg.dtype))[tokens], segment_ids.astype(jnp.int32), inv_freq


def hidden_states(params: Params, tokens: jax.Array, positions: jax.Array, cfg: ModelConfig, *,
                  segment_ids: Optional[jax.Array] = None, packed: bool = True) -> jax.Array:
  """The training / scoring forward without the output projection: final-normed hidden
  states [b, t, D] in cfg.dtype. Arguments as `forward` (no cache). Attention is
  `reasoner.model.attention.attention` with `cfg.attention` (blockwise for long rows), so
  neither [t, t] scores nor [b, t, V] logits are materialised here. packed=False is the
  caller's promise that each row is one sequence (one run of one non-zero segment id, padding
  either side, as `rollout_rows` builds them), which lets `auto` attention use cuDNN on a GPU."""
  h, segment_ids, inv_freq = _embed(params, tokens, cfg, segment_ids)
  kv_fn = lambda k, v: (k, v, None, None)
  attend = lambda q, k, v, _: attention(q, k, v, segment_ids, segment_ids, impl=cfg.attention,
                                        packed=packed)

  def body(h, lp):
    fn = lambda h, lp: block(cfg, inv_freq, h, lp, positions, kv_fn, attend)
    if cfg.remat:
      fn = jax.checkpoint(fn)
    h, _ = fn(h, lp)
    return h, None

  h, _ = jax.lax.scan(body, h, params["layers"])
  h = L.rms_norm(h, params["final_norm"], cfg.norm_eps)
  return constrain(h, ("act_batch", "act_seq", "act_embed"))


def forward(params: Params, tokens: jax.Array, positions: jax.Array, cfg: ModelConfig, *,
            segment_ids: Optional[jax.Array] = None, cache: Optional[Cache] = None,
            return_hidden: bool = False, packed: bool = True):
  """Runs the decoder.

  Args:
    params: the parameter pytree.
    tokens: [b, t] int token ids.
    positions: [b, t] int rotary positions (per row; restart at 0 for each packed segment).
    cfg: the model config.
    segment_ids: [b, t] int; tokens attend only within their segment, causally; 0 = padding.
      Defaults to all ones (one causal sequence per row).
    cache: optional KV cache from `init_cache`; the t new tokens are written at slots
      [index, index + t) and attend to every earlier filled slot of their segment.
    return_hidden: also return the final hidden states [b, t, d].
    packed: without a cache, False promises one sequence per row (`hidden_states`).

  Returns:
    (logits [b, t, V] float32, new cache or None[, hidden]).
  """
  if cache is None:
    h = hidden_states(params, tokens, positions, cfg, segment_ids=segment_ids, packed=packed)
    logits = unembed(params, h, cfg)
    return (logits, None, h) if return_hidden else (logits, None)

  t = tokens.shape[1]
  dt = _dtype(cfg.dtype)
  h, segment_ids, inv_freq = _embed(params, tokens, cfg, segment_ids)
  index = cache["index"]
  s = cache["k"].shape[2]
  k_segments = jax.lax.dynamic_update_slice(cache["segment"], segment_ids, (0, index))
  mask = L.attention_mask(index + jnp.arange(t), segment_ids, jnp.arange(s), k_segments)

  def body(carry, xs):
    h, ck, cv = carry
    lp, li = xs

    def kv_fn(k, v):
      zero = jnp.zeros((), jnp.int32)
      nk = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype)[None], (li, zero, index, zero, zero))
      nv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype)[None], (li, zero, index, zero, zero))
      return nk[li].astype(dt), nv[li].astype(dt), mask, (nk, nv)

    h, (ck, cv) = block(cfg, inv_freq, h, lp, positions, kv_fn)
    return (h, ck, cv), None

  (h, ck, cv), _ = jax.lax.scan(body, (h, cache["k"], cache["v"]),
                                (params["layers"], jnp.arange(cfg.n_layers)))
  new_cache = {"k": ck, "v": cv, "segment": k_segments, "index": index + t}
  h = L.rms_norm(h, params["final_norm"], cfg.norm_eps)
  logits = unembed(params, h, cfg)
  if return_hidden:
    return logits, new_cache, h
  return logits, new_cache
