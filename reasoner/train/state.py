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
  params: Any
  opt_state: Any


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
                     mesh: Optional[Mesh] = None, param_shardings: Any = None) -> TrainState:
  """TrainState at step 0. With a mesh, params are placed by `param_shardings` (default:
  replicated) and the optimiser state is created directly in its shards."""
  if mesh is None:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))
  if param_shardings is None:
    param_shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), params)
  shardings = train_state_shardings(optimizer, params, param_shardings, mesh)
  params = jax.device_put(params, param_shardings)
  init = lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))
  return jax.jit(init, out_shardings=shardings)(params)
