"""Jitted, optionally sharded train and eval steps.

`make_train_step(loss_fn, optimizer)` turns a pure loss
  loss_fn(params, batch, rng) -> (loss, metrics)
(e.g. functools.partial(sft_loss, model_cfg=cfg)) into
  step(state, batch, rng) -> (new_state, metrics)
with metrics from the loss plus grad_norm (before clipping) and learning_rate. On a mesh the
state keeps its shardings (params by `param_shardings`, optimiser state derived from them),
every batch leaf is split over (data, fsdp) along its leading dim, metrics are replicated,
and the input state is donated.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reasoner.sharding import batch_spec, shard_batch
from reasoner.train.optim import learning_rate_of
from reasoner.train.state import TrainState, train_state_shardings

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]


def batch_shardings(batch: Any, mesh: Mesh) -> Any:
  """Leading dim of every leaf over (data, fsdp) where it divides; scalars replicated."""
  def spec(x):
    shape = np.shape(x)
    if not shape:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, batch_spec(len(shape), mesh, batch_size=shape[0]))
  return jax.tree.map(spec, batch)


def _own_shardings(state: TrainState, mesh: Mesh) -> TrainState:
  """The shardings the state's arrays already have on `mesh` (replicated otherwise)."""
  rep = NamedSharding(mesh, P())
  def sh(x):
    s = getattr(x, "sharding", None)
    return s if isinstance(s, NamedSharding) and s.mesh == mesh else rep
  return jax.tree.map(sh, state)


def _step_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation):
  def step(state: TrainState, batch: Any, rng: jax.Array):
    grad_fn = jax.value_and_grad(lambda p: loss_fn(p, batch, rng), has_aux=True)
    (loss, metrics), grads = grad_fn(state.params)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads),
               "learning_rate": learning_rate_of(opt_state)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics
  return step


def jit_step(fn, state_shardings: TrainState, batch: Any, mesh: Mesh, donate: bool = True):
  """The jitted program `make_train_step` runs on `mesh` for batches shaped like `batch` (arrays
  or ShapeDtypeStructs): fn = `_step_fn(loss_fn, optimizer)`, state kept at `state_shardings`."""
  rep = NamedSharding(mesh, P())
  return jax.jit(fn, in_shardings=(state_shardings, batch_shardings(batch, mesh), rep),
                 out_shardings=(state_shardings, rep), donate_argnums=(0,) if donate else ())


def train_step_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation):
  """The pure step(state, batch, rng) -> (state, metrics) that `make_train_step` jits."""
  return _step_fn(loss_fn, optimizer)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    mesh: Optional[Mesh] = None, param_shardings: Any = None,
                    donate: bool = True):
  """step(state, batch, rng) -> (state, metrics); see the module docstring.

  Without `param_shardings` on a mesh, the state keeps the shardings its arrays have (build
  it with `init_train_state(..., mesh=mesh, param_shardings=...)`). For PPO the params are
  {'model', 'value_head'}: pass {'model': sharding.param_shardings(cfg, mesh), 'value_head':
  replicated shardings}. Batches may be host arrays or already sharded global arrays.
  """
  fn = _step_fn(loss_fn, optimizer)
  donate_argnums = (0,) if donate else ()
  if mesh is None:
    return jax.jit(fn, donate_argnums=donate_argnums)

  rep = NamedSharding(mesh, P())
  compiled: dict = {}
  state_sh: list = []

  def step(state: TrainState, batch: Any, rng: jax.Array):
    if not state_sh:
      state_sh.append(_own_shardings(state, mesh) if param_shardings is None else
                      train_state_shardings(optimizer, state.params, param_shardings, mesh))
    leaves, treedef = jax.tree.flatten(batch)
    key = (treedef, tuple(np.shape(x) for x in leaves))
    if key not in compiled:
      compiled[key] = jit_step(fn, state_sh[0], batch, mesh, donate=donate)
    return compiled[key](state, shard_batch(batch, mesh), rng)

  return step


def make_eval_fn(fn: Callable[[Any, Any], Any], mesh: Optional[Mesh] = None):
  """Jits a forward-only fn(params, batch) -> outputs (e.g. reference log-probs via
  `sequence_logprobs`). On a mesh the batch is split over (data, fsdp) and params are used
  where they are; output placement is left to the compiler."""
  jitted = jax.jit(fn)
  if mesh is None:
    return jitted

  def run(params, batch):
    return jitted(params, shard_batch(batch, mesh))

  return run
