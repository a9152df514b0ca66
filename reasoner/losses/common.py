"""Masked reductions and config parsing shared by the losses."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp


# The metric a loss may report for micro-batching: how many units its value is a mean over (the
# loss tokens of a token mean, the sequences of a per-sequence mean). The train step weights each
# micro-batch's gradient and metrics by it, so a micro-batched update equals the whole batch's
# for any split of the tokens (`reasoner.train.step`); without it micro-batches weigh the same.
LOSS_WEIGHT = "loss_weight"


def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """sum(x * mask) over `axis` (all axes by default)."""
  return jnp.sum(x * mask, axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """sum(x * mask) / max(sum(mask), 1): an all-masked reduction gives 0, never NaN."""
  return masked_sum(x, mask, axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def shift_right(x: jax.Array) -> jax.Array:
  """[b, t, ...] -> [b, t, ...] with out[:, t] = x[:, t - 1] and out[:, 0] = 0.

  Turns a quantity computed at the position that *predicts* token t + 1 into the
  per-token alignment of the conventions (value at t describes token t, slot 0 empty).
  """
  pad = jnp.zeros_like(x[:, :1])
  return jnp.concatenate([pad, x[:, :-1]], axis=1)


def config_from(cls, source: Any):
  """Builds the dataclass `cls` from an instance of it, a dict, an ml_collections ConfigDict
  or any object with matching attributes. Unknown fields raise a one-line ValueError."""
  if isinstance(source, cls):
    return source
  if source is None:
    return cls()
  names = [f.name for f in dataclasses.fields(cls)]
  if hasattr(source, "to_dict"):  # ml_collections ConfigDict
    d = dict(source.to_dict())
  elif isinstance(source, Mapping):
    d = dict(source)
  elif dataclasses.is_dataclass(source):
    d = dataclasses.asdict(source)
  else:
    d = {n: getattr(source, n) for n in names if hasattr(source, n)}
  unknown = sorted(set(d) - set(names))
  if unknown:
    raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(names)}")
  return cls(**d)
