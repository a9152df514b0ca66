"""Logical-axis rules: one table maps parameter and activation dims onto mesh axes.

A new parallelism layout is a change to the rules, not to the model. A mesh axis is dropped
from a dim it does not divide (e.g. 14 heads on a tensor axis of 4 stay replicated); that
costs memory and compute on every device, so it is reported with a warning (once per case).
Parameter names (`embed`, `heads`, ...) and activation names (`act_*`, see
`reasoner.sharding.activations`) are separate: weights split their embed dim over `fsdp`, while
activations split rows over (data, fsdp) and keep the embed dim whole.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MeshAxes = Union[None, str, tuple[str, ...]]
Rules = Sequence[tuple[str, MeshAxes]]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("seq", None),
    ("cache_seq", None),
    ("lora_rank", None),  # LoRA adapters' rank dim (small: never split)
    # Activations.
    ("act_batch", ("data", "fsdp")),
    ("act_seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

# Logical names whose size routinely differs from call to call (batch rows): not dividing the
# mesh there is expected for small batches and is not warned about.
_QUIET = ("batch", "act_batch")
_WARNED: set = set()


def _warn_dropped(name: str, size: int, axis: str, n: int) -> None:
  key = (name, size, axis, n)
  if name in _QUIET or key in _WARNED:
    return
  _WARNED.add(key)
  warnings.warn(f"mesh axis {axis!r} (size {n}) does not divide logical axis {name!r} of size "
                f"{size}: that dim stays unsplit (replicated) on it", stacklevel=3)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(logical: Sequence[Optional[str]], mesh: Mesh, rules: Rules = DEFAULT_RULES,
                    shape: Optional[Sequence[int]] = None) -> P:
  """PartitionSpec for an array whose dims carry `logical` names.

  Mesh axes of size 1, axes already used by an earlier dim, and (when `shape` is given) axes
  that do not divide the dim are dropped.
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(logical):
    if name is not None and name not in table:
      raise ValueError(f"no sharding rule for logical axis {name!r}; rules cover {sorted(table)}")
    chosen = []
    size = 1
    for ax in _as_tuple(table.get(name)):
      n = mesh.shape[ax]
      if ax in used or n == 1:
        continue
      if shape is not None and shape[i] % (size * n):
        _warn_dropped(name, shape[i], ax, n)
        continue
      chosen.append(ax)
      size *= n
    used.update(chosen)
    spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
  return P(*spec)


def tree_shardings(logical_tree: Any, shape_tree: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """NamedShardings for a pytree of arrays (shape_tree: arrays, ShapeDtypeStructs or tuples)."""
  is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
  shapes = jax.tree.map(lambda x: tuple(x) if isinstance(x, tuple) else tuple(x.shape), shape_tree,
                        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(a, int) for a in x))
  return jax.tree.map(lambda ax, shp: NamedSharding(mesh, logical_to_spec(ax, mesh, rules, shp)),
                      logical_tree, shapes, is_leaf=is_axes)


def param_shardings(cfg, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """NamedSharding for every parameter of the decoder `cfg`."""
  from reasoner.model import decoder
  return tree_shardings(decoder.param_logical_axes(cfg), decoder.param_shapes(cfg), mesh, rules)


def lora_shardings(cfg, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """NamedSharding for every LoRA adapter of `cfg` ({"layers": {"lora": ...}}; empty without
  LoRA): each adapter's input / output dims follow its weight's (reasoner.model.lora)."""
  from reasoner.model import lora
  return tree_shardings(lora.lora_logical_axes(cfg), lora.lora_shapes(cfg), mesh, rules)


def sharded_init(cfg, rng: jax.Array, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Initialises parameters directly into their shards (no full copy on one device)."""
  from reasoner.model import decoder
  shardings = param_shardings(cfg, mesh, rules)
  return jax.jit(lambda r: decoder.init_params(cfg, r), out_shardings=shardings)(rng)


def shard_params(params, cfg, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Places an existing (host or single-device) parameter tree onto the mesh."""
  return jax.device_put(params, param_shardings(cfg, mesh, rules))


def batch_spec(ndim: int, mesh: Mesh, rules: Rules = DEFAULT_RULES, batch_size: Optional[int] = None) -> P:
  """Leading dim over the batch axes, the rest replicated."""
  shape = None if batch_size is None else (batch_size,) + (1,) * (ndim - 1)
  return logical_to_spec(("batch",) + (None,) * (ndim - 1), mesh, rules, shape)


def batch_shards(mesh) -> int:
  """How many ways the mesh splits a batch's rows (its data x fsdp axes; 1 without a mesh): what
  row counts placed on it are padded to a multiple of."""
  return 1 if mesh is None else int(mesh.shape["data"] * mesh.shape["fsdp"])


def row_shards(rows: int, mesh, rules: Rules = DEFAULT_RULES) -> int:
  """How many ways a batch of `rows` rows is split over devices as `batch_spec` places it (the
  `batch` rule's axes that divide the rows; 1 without a mesh). `mesh` may be a Mesh or the
  AbstractMesh of a `jax.set_mesh` context."""
  if mesh is None:
    return 1
  return int(np.prod([mesh.shape[ax] for ax in _as_tuple(batch_spec(1, mesh, rules, rows)[0])]))


def batch_sharding(ndim: int, mesh: Mesh, rules: Rules = DEFAULT_RULES,
                   batch_size: Optional[int] = None) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(ndim, mesh, rules, batch_size))


def shard_batch(batch: Any, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """Places a pytree of host arrays [batch, ...] with the batch dim split over (data, fsdp).

  Every process passes the same global host arrays (the pipeline builds batches
  deterministically on each host); each device takes its own slice, so this works on one host
  and on many.
  """
  def put(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x  # already a global array
    x = np.asarray(x)
    sharding = (NamedSharding(mesh, P()) if x.ndim == 0
                else batch_sharding(x.ndim, mesh, rules, x.shape[0]))
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree.map(put, batch)


def to_host(x):
  """Fetches a (possibly multi-host) global array to a NumPy array on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def cache_shardings(cache, mesh: Mesh, rules: Rules = DEFAULT_RULES):
  """KV cache sharded over batch and kv heads: k/v [L, B, S, K, Dh], segment [B, S]."""
  logical = {"k": ("layers", "batch", "cache_seq", "kv_heads", "head_dim"),
             "v": ("layers", "batch", "cache_seq", "kv_heads", "head_dim"),
             "segment": ("batch", "cache_seq"), "index": ()}
  return tree_shardings({k: logical[k] for k in cache}, cache, mesh, rules)
