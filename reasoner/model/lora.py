"""LoRA adapters: low-rank updates to the decoder's projections, as a plain params subtree.

An adapter for projection `name` (one of `cfg.lora_targets`) lives beside the stacked layer
weights at params["layers"]["lora"][name] = {"a", "b"}:
  a [L, *in_dims, r]   (the weight's input dims: D for wq/wk/wv/w_gate/w_up, (H, Dh) for wo,
                        F for w_down)
  b [L, r, *out_dims]  (the weight's output dims: (H|K, Dh) for wq/wk/wv, D for wo / w_down,
                        F for w_gate / w_up)
and the projection becomes x w + (lora_alpha / lora_rank) (x a) b (`decoder.project`). `b`
starts at zero, so adapters fresh from `init_lora` leave the model's outputs unchanged.

Trees here use the full path ({"layers": {"lora": ...}}), so `merge_trees(base, adapters)`
(reasoner.train.state) puts adapters onto base params and `split_lora` takes them off again.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp

from reasoner.model import decoder
from reasoner.model.config import ModelConfig

Params = dict[str, Any]

# How many of a weight's dims (after the layer axis) are input dims; the rest are output dims.
_N_IN = {"wq": 1, "wk": 1, "wv": 1, "wo": 2, "w_gate": 1, "w_up": 1, "w_down": 1}


def lora_targets(cfg: ModelConfig) -> tuple[str, ...]:
  """The adapted projections of `cfg`, in config order (empty when lora_rank is 0)."""
  if not cfg.lora_rank:
    return ()
  return tuple(t.strip() for t in cfg.lora_targets.split(",") if t.strip())


def _dims(cfg: ModelConfig, name: str):
  """(L, input dims, output dims) of weight `name`."""
  shape = decoder.param_shapes(cfg)["layers"][name]
  n = _N_IN[name]
  return shape[0], shape[1:1 + n], shape[1 + n:]


def lora_shapes(cfg: ModelConfig) -> Params:
  """{"layers": {"lora": {name: {"a": shape, "b": shape}}}} for every target (tuples)."""
  r = cfg.lora_rank
  out = {}
  for name in lora_targets(cfg):
    nl, ins, outs = _dims(cfg, name)
    out[name] = {"a": (nl, *ins, r), "b": (nl, r, *outs)}
  return {"layers": {"lora": out}}


def lora_logical_axes(cfg: ModelConfig) -> Params:
  """Logical axis names of the adapters: `a` takes the weight's input-dim names, `b` its
  output-dim names, so each follows its weight's sharding; the rank dim is "lora_rank"."""
  out = {}
  for name in lora_targets(cfg):
    logical = decoder.param_logical_axes(cfg)["layers"][name]
    layers, n = logical[0], _N_IN[name]
    out[name] = {"a": (layers, *logical[1:1 + n], "lora_rank"),
                 "b": (layers, "lora_rank", *logical[1 + n:])}
  return {"layers": {"lora": out}}


def init_lora(cfg: ModelConfig, rng: jax.Array, dtype: str = "float32") -> Params:
  """Fresh adapters: a ~ normal(0, 1 / fan_in) (fan_in = the weight's input size), b = 0."""
  shapes = lora_shapes(cfg)["layers"]["lora"]
  keys = jax.random.split(rng, max(1, len(shapes)))
  out = {}
  for key, (name, s) in zip(keys, shapes.items()):
    fan_in = math.prod(s["a"][1:-1])
    a = jax.random.normal(key, s["a"], jnp.float32) / math.sqrt(fan_in)
    out[name] = {"a": a.astype(dtype), "b": jnp.zeros(s["b"], dtype)}
  return {"layers": {"lora": out}}


def has_lora(params: Params) -> bool:
  return isinstance(params.get("layers"), dict) and "lora" in params["layers"]


def split_lora(params: Params) -> tuple[Params, Optional[Params]]:
  """(base params without adapters, {"layers": {"lora": ...}} or None). No arrays are copied;
  `merge_trees(base, adapters)` is the inverse."""
  if not has_lora(params):
    return params, None
  layers = dict(params["layers"])
  adapters = layers.pop("lora")
  return {**params, "layers": layers}, {"layers": {"lora": adapters}}


def lora_delta(cfg: ModelConfig, adapter: Params) -> jax.Array:
  """(lora_alpha / lora_rank) a b as a float32 array of the adapted weight's shape [L, *in, *out]."""
  a = adapter["a"].astype(jnp.float32)
  b = adapter["b"].astype(jnp.float32)
  nl, r = a.shape[0], a.shape[-1]
  ins, outs = a.shape[1:-1], b.shape[2:]
  delta = jnp.matmul(a.reshape(nl, -1, r), b.reshape(nl, r, -1))
  return (cfg.lora_alpha / cfg.lora_rank) * delta.reshape(nl, *ins, *outs)


def merge_lora(params: Params, cfg: ModelConfig) -> Params:
  """Plain params: each adapted weight replaced by W + (lora_alpha / lora_rank) a b (computed
  in float32, stored in W's dtype) and the adapters removed. Params without adapters pass
  through unchanged."""
  base, adapters = split_lora(params)
  if adapters is None:
    return params
  if not cfg.lora_rank:
    raise ValueError("params carry LoRA adapters but the model config has lora_rank=0")
  layers = dict(base["layers"])
  for name, adapter in adapters["layers"]["lora"].items():
    w = layers[name]
    layers[name] = (w.astype(jnp.float32) + lora_delta(cfg, adapter)).astype(w.dtype)
  return {**base, "layers": layers}


def lora_param_count(cfg: ModelConfig) -> int:
  """Number of adapter parameters of `cfg` (0 without LoRA)."""
  shapes = lora_shapes(cfg)
  leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
  return sum(math.prod(s) for s in leaves)
