"""Train state (step, params, optimiser state), its shardings, and mixed precision.

Mixed precision: parameters stay float32 master weights; `mixed_precision(cfg)` returns a
model config whose forward casts them to the compute dtype (the decoder casts every weight
with .astype), so gradients and updates remain float32.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reasoner.model import ModelConfig


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of train-step calls (micro-steps under accumulation)
  params: Any  # what the optimiser trains (all weights, or only LoRA adapters)
  opt_state: Any
  # Weights the loss reads but nothing trains (the base model under LoRA), or None. The loss
  # sees `model_params(state)`: the frozen tree with the trained one merged into it.
  frozen: Any = None


def merge_trees(base: Any, extra: Any) -> Any:
  """Nested dicts: `base` with every leaf of `extra` added (or replacing base's at that path)."""
  if base is None:
    return extra
  if extra is None:
    return base
  if isinstance(base, dict) and isinstance(extra, dict):
    out = dict(base)
    for k, v in extra.items():
      out[k] = merge_trees(base[k], v) if k in base else v
    return out
  return extra


def model_params(state: "TrainState") -> Any:
  """The full parameter tree the model runs with: frozen weights plus trained ones."""
  return merge_trees(state.frozen, state.params)


def mixed_precision(cfg: ModelConfig, compute_dtype: str = "bfloat16") -> ModelConfig:
  """cfg computing in `compute_dtype` on float32 master weights."""
  return cfg.replace(dtype=compute_dtype, param_dtype="float32")


def train_state_shardings(optimizer: optax.GradientTransformation, params: Any,
                          param_shardings: Any, mesh: Mesh) -> TrainState:
  """Shardings of a TrainState: optimiser-state leaves that mirror a parameter (Adam moments,
  accumulated gradients) are sharded like it, everything else (counters, hyperparameters)
  is replicated. `params` may be arrays or ShapeDtypeStructs."""
  rep = NamedSharding(mesh, P())
  abstract = jax.eval_shape(optimizer.init, params)
  opt_sh = optax.tree_map_params(optimizer, lambda _, sh: sh, abstract, param_shardings,
                                 transform_non_params=lambda _: rep)
  return TrainState(step=rep, params=param_shardings, opt_state=opt_sh)


def init_train_state(params: Any, optimizer: optax.GradientTransformation, *,
                     mesh: Optional[Mesh] = None, param_shardings: Any = None,
                     frozen: Any = None, frozen_shardings: Any = None) -> TrainState:
  """TrainState at step 0 training `params` (with `frozen` weights beside them, untouched: the
  base model under LoRA). With a mesh, params are placed by `param_shardings` (default:
  replicated), frozen by `frozen_shardings`, and the optimiser state is created directly in its
  shards."""
  if mesh is None:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), frozen=frozen)
  rep = lambda tree: jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)
  if param_shardings is None:
    param_shardings = rep(params)
  shardings = train_state_shardings(optimizer, params, param_shardings, mesh)
  params = jax.device_put(params, param_shardings)
  init = lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))
  state = jax.jit(init, out_shardings=shardings)(params)
  if frozen is None:
    return state
  return state.replace(frozen=jax.device_put(
      frozen, rep(frozen) if frozen_shardings is None else frozen_shardings))
