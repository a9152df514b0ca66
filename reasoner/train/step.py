"""Jitted, optionally sharded train and eval steps.

`make_train_step(loss_fn, optimizer)` turns a pure loss
  loss_fn(params, batch, rng) -> (loss, metrics)
(e.g. functools.partial(sft_loss, model_cfg=cfg)) into
  step(state, batch, rng) -> (new_state, metrics)
with metrics from the loss plus grad_norm (before clipping) and learning_rate. On a mesh the
state keeps its shardings (params by `param_shardings`, optimiser state derived from them),
every batch leaf is split over (data, fsdp) along its leading dim, metrics are replicated,
the input state is donated, and the step is traced under the mesh so the model's activation
constraints (`reasoner.sharding.activations`) apply.

The loss sees `model_params(state)` (frozen weights, e.g. a LoRA base, merged with the trained
ones) and is differentiated with respect to `state.params` only.

Micro-batching: with `micro_batches` = m > 1 the batch's rows are split into m micro-batches
(row i goes to micro-batch i mod m, so each device keeps its own rows), a `lax.scan` runs the
forward and backward of one at a time and sums float32 gradients, and the optimiser applies
their weighted mean once. Peak activation memory is that of one micro-batch. Every batch
leaf's leading dim must be a multiple of m (a batch may hold row groups of different sizes,
e.g. GRPO's rows and its replay rows: each is split m ways).

Weights: a loss that is a mean over units (loss tokens, sequences) reports how many it averaged
over as metrics[LOSS_WEIGHT] (`reasoner.losses.common`; every loss here does). Micro-batch j's
gradient and metrics are weighted by w_j / sum(w), so the update and the loss equal the whole
batch's however the loss tokens fall into micro-batches (packed SFT rows never hold equal
counts). A sum of two means over different units (GRPO's or DPO's replay term) is weighted by
its first term's units; a loss without the metric weighs every micro-batch the same. Count
metrics (names starting with "n_", e.g. n_tokens) are summed. The weight itself is not
returned among the metrics.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from reasoner.losses.common import LOSS_WEIGHT
from reasoner.sharding import batch_spec, row_shards, shard_batch
from reasoner.train.optim import learning_rate_of
from reasoner.train.state import TrainState, model_params, train_state_shardings

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


def micro_batches_for(rows: int, seq_len: int, tokens_per_device: int,
                      mesh: Optional[Mesh] = None) -> int:
  """How many micro-batches a [rows, seq_len] batch needs so that each device processes at most
  `tokens_per_device` tokens at a time: the smallest m dividing the rows each device holds
  (rows over the mesh's data x fsdp axes, where they divide) with rows / devices / m x seq_len
  within the budget (1 when tokens_per_device <= 0: no budget). A budget below one row's
  tokens gives one row at a time."""
  local = rows // row_shards(rows, mesh)
  return _fewest_micro_batches(local, local * seq_len, tokens_per_device)


def micro_batches_of(batch: Any, tokens_per_device: int, mesh: Optional[Mesh] = None) -> int:
  """`micro_batches_for` a whole batch pytree: m must divide the rows each device holds of every
  leaf (a batch may hold row groups of different sizes, e.g. GRPO's rows and its replay rows),
  and the tokens of all its `tokens` leaves on one device, over m, must be within the budget."""
  if tokens_per_device <= 0:
    return 1
  batch_tokens(batch)  # a budget needs a 'tokens' leaf
  rows, tokens = 0, 0
  for path, x in jax.tree_util.tree_leaves_with_path(batch):
    shape = np.shape(x)
    if not shape:
      raise ValueError(f"micro-batching needs every batch leaf to have a leading row dim; "
                       f"{jax.tree_util.keystr(path)} is a scalar")
    local = shape[0] // row_shards(shape[0], mesh)
    rows = math.gcd(rows, local)
    if getattr(path[-1], "key", None) == "tokens":
      tokens += local * int(np.prod(shape[1:]))
  return _fewest_micro_batches(rows, tokens, tokens_per_device)


def _fewest_micro_batches(rows: int, tokens: int, budget: int) -> int:
  """The smallest m dividing `rows` with tokens / m <= budget (rows when none does; 1 without a
  budget)."""
  if budget <= 0:
    return 1
  for m in range(1, rows):
    if rows % m == 0 and tokens <= budget * m:
      return m
  return max(rows, 1)


def split_micro_batches(batch: Any, m: int) -> Any:
  """[B, ...] leaves -> [m, B / m, ...] with micro-batch j holding rows j, j + m, j + 2m, ...
  (each device's contiguous block of rows stays on it)."""
  def split(x):
    if x.ndim == 0 or x.shape[0] % m:
      raise ValueError(f"micro_batches={m} must divide every batch leaf's leading dim; got a "
                       f"leaf of shape {tuple(x.shape)}")
    return jnp.swapaxes(x.reshape(x.shape[0] // m, m, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def _is_count(name: str) -> bool:
  """Metrics named n_* are counts: summed over micro-batches, not averaged."""
  return name.startswith("n_")


def loss_and_grads(loss_fn: LossFn, state: TrainState, batch: Any, rng: jax.Array,
                   micro_batches: int = 1):
  """((loss, metrics), grads w.r.t. state.params), accumulated over micro-batches (the module
  docstring): grads are float32 sums of each micro-batch's gradient times its loss weight,
  over the summed weights. metrics[LOSS_WEIGHT] is not returned."""
  def one(trained, b, r):
    fn = lambda p: loss_fn(model_params(state.replace(params=p)), b, r)
    (loss, metrics), g = jax.value_and_grad(fn, has_aux=True)(trained)
    metrics = dict(metrics)
    weight = metrics.pop(LOSS_WEIGHT, None)
    return loss, metrics, weight, g

  if micro_batches == 1:
    loss, metrics, _, g = one(state.params, batch, rng)
    return (loss, metrics), g
  micro = split_micro_batches(batch, micro_batches)
  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
  loss0, metrics0, _, _ = jax.eval_shape(
      lambda: one(state.params, jax.tree.map(lambda x: x[0], micro), rng))
  zero = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), tree)
  # A micro-batch with no loss units gets a tiny weight: its own terms are zero, and when every
  # micro-batch has none the result is their plain mean.
  tiny = jnp.float32(1e-6)

  def body(carry, xs):
    acc_loss, acc_metrics, acc_w, acc_g = carry
    b, i = xs
    loss, metrics, w, g = one(state.params, b, jax.random.fold_in(rng, i))
    w = jnp.float32(1.0) if w is None else jnp.maximum(jnp.asarray(w, jnp.float32), tiny)
    weigh = lambda a, x: a + w * x.astype(jnp.float32)
    acc_metrics = {k: (acc_metrics[k] + v.astype(jnp.float32) if _is_count(k)
                       else jax.tree.map(weigh, acc_metrics[k], v)) for k, v in metrics.items()}
    return (weigh(acc_loss, loss), acc_metrics, acc_w + w, jax.tree.map(weigh, acc_g, g)), None

  init = (zero(loss0), zero(metrics0), jnp.float32(0.0), zeros)
  (loss, metrics, total, grads), _ = jax.lax.scan(body, init,
                                                  (micro, jnp.arange(micro_batches)))
  mean = lambda x: x / total
  metrics = {k: v if _is_count(k) else jax.tree.map(mean, v) for k, v in metrics.items()}
  return (mean(loss), metrics), jax.tree.map(mean, grads)


def train_step_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                  micro_batches: int = 1):
  """The pure step(state, batch, rng) -> (state, metrics) that `make_train_step` jits.

  A non-finite loss or gradient norm skips the update: params and optimiser state come back
  unchanged (the select mostly fuses into the elementwise update: +0.07 GiB on the 0.5B
  preset's 11.7 GiB SFT step) and
  metrics["skipped"] is 1 (`reasoner.stages.loop` counts and stops on a run of them)."""
  def step(state: TrainState, batch: Any, rng: jax.Array):
    (loss, metrics), grads = loss_and_grads(loss_fn, state, batch, rng, micro_batches)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jnp.where(finite, new, old)
    params = jax.tree.map(keep, params, state.params)
    opt_state = jax.tree.map(keep, opt_state, state.opt_state)
    metrics = {**metrics, "loss": loss, "grad_norm": grad_norm,
               "learning_rate": learning_rate_of(opt_state),
               "skipped": 1.0 - finite.astype(jnp.float32)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
  return step


def _frozen_apart(fn):
  """fn(state, batch, rng) as fn(state without frozen, frozen, batch, rng) -> (state without
  frozen, metrics): the frozen weights are an input only, never donated nor returned, so other
  holders of them (a GRPO reference, a rollout actor) keep valid arrays."""
  def run(state, frozen, batch, rng):
    new, metrics = fn(state.replace(frozen=frozen), batch, rng)
    return new.replace(frozen=None), metrics
  return run


def jit_step(fn, state_shardings: TrainState, batch: Any, mesh: Mesh, donate: bool = True):
  """The jitted program `make_train_step` runs on `mesh` for batches shaped like `batch` (arrays
  or ShapeDtypeStructs): fn = `train_step_fn(...)`, called as (state without frozen, frozen,
  batch, rng) -> (state without frozen, metrics), state kept at `state_shardings`."""
  rep = NamedSharding(mesh, P())
  trained_sh, frozen_sh = state_shardings.replace(frozen=None), state_shardings.frozen
  return jax.jit(_frozen_apart(fn),
                 in_shardings=(trained_sh, frozen_sh, batch_shardings(batch, mesh), rep),
                 out_shardings=(trained_sh, rep), donate_argnums=(0,) if donate else ())


def batch_tokens(batch: Any) -> tuple[int, int]:
  """(rows, tokens per row) of a batch: rows = the leading dim of its first `tokens` leaf, tokens
  = the size of every `tokens` leaf (a DPO pair's chosen and rejected, a replay sub-batch) over
  those rows."""
  leaves = [x for path, x in jax.tree_util.tree_leaves_with_path(batch)
            if getattr(path[-1], "key", None) == "tokens"]
  if not leaves:
    raise ValueError("a token budget needs a batch with a 'tokens' leaf")
  rows = int(np.shape(leaves[0])[0])
  return rows, -(-sum(int(np.prod(np.shape(x))) for x in leaves) // rows)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    mesh: Optional[Mesh] = None, param_shardings: Any = None,
                    donate: bool = True, micro_batches: int = 0, tokens_per_device: int = 0,
                    frozen_shardings: Any = None):
  """step(state, batch, rng) -> (state, metrics); see the module docstring.

  Without `param_shardings` on a mesh, the state keeps the shardings its arrays have (build
  it with `init_train_state(..., mesh=mesh, param_shardings=...)`). For PPO the params are
  {'model', 'value_head'}: pass {'model': sharding.param_shardings(cfg, mesh), 'value_head':
  replicated shardings}. With frozen weights in the state (LoRA), `frozen_shardings` places
  them (default: as they are); they are passed in apart from the rest of the state, never
  donated, and the new state holds the very same arrays. Batches may be host arrays or already
  sharded global arrays. Micro-batches: `micro_batches` if > 0, else as many as keep each
  device within `tokens_per_device` tokens at a time (`micro_batches_for`; 0 = no budget), per
  batch shape.
  """
  if micro_batches < 0 or tokens_per_device < 0:
    raise ValueError(f"micro_batches and tokens_per_device must be >= 0, got {micro_batches}, "
                     f"{tokens_per_device}")
  donate_argnums = (0,) if donate else ()
  compiled: dict = {}
  state_sh: list = []

  def micro(batch) -> int:
    if micro_batches:
      return micro_batches
    return micro_batches_of(batch, tokens_per_device, mesh)

  def step(state: TrainState, batch: Any, rng: jax.Array):
    leaves, treedef = jax.tree.flatten(batch)
    key = (treedef, tuple(np.shape(x) for x in leaves))
    if mesh is None:
      if key not in compiled:
        compiled[key] = jax.jit(_frozen_apart(train_step_fn(loss_fn, optimizer, micro(batch))),
                                donate_argnums=donate_argnums)
      new, metrics = compiled[key](state.replace(frozen=None), state.frozen, batch, rng)
      return new.replace(frozen=state.frozen), metrics
    if not state_sh:
      own = _own_shardings(state, mesh)
      sh = own if param_shardings is None else train_state_shardings(
          optimizer, state.params, param_shardings, mesh).replace(frozen=own.frozen)
      state_sh.append(sh if frozen_shardings is None else sh.replace(frozen=frozen_shardings))
    if key not in compiled:
      compiled[key] = jit_step(train_step_fn(loss_fn, optimizer, micro(batch)), state_sh[0], batch,
                               mesh, donate=donate)
    frozen = state.frozen
    if frozen is not None and frozen_shardings is not None:
      frozen = jax.device_put(frozen, frozen_shardings)
    with jax.set_mesh(mesh):
      new, metrics = compiled[key](state.replace(frozen=None), frozen, shard_batch(batch, mesh), rng)
    return new.replace(frozen=frozen), metrics

  return step


def make_eval_fn(fn: Callable[[Any, Any], Any], mesh: Optional[Mesh] = None,
                 tokens_per_device: int = 0):
  """Jits a forward-only fn(params, batch) -> outputs (e.g. reference log-probs via
  `sequence_logprobs`). On a mesh the batch is split over (data, fsdp) and params are used
  where they are; output placement is left to the compiler. With `tokens_per_device` > 0 the
  rows run in as many equal calls as keep each device within that many tokens at a time
  (`micro_batches_for`), and the outputs (leading dim = rows) are concatenated."""
  jitted = jax.jit(fn)

  def call(params, batch):
    if mesh is None:
      return jitted(params, batch)
    with jax.set_mesh(mesh):
      return jitted(params, shard_batch(batch, mesh))

  if not tokens_per_device:
    return call

  def run(params, batch):
    m = micro_batches_of(batch, tokens_per_device, mesh)
    if m == 1:
      return call(params, batch)
    part = lambda i: lambda x: x[i * (len(x) // m):(i + 1) * (len(x) // m)]
    parts = [call(params, jax.tree.map(part(i), batch)) for i in range(m)]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)

  return run
