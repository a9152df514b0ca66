"""Several optimisation epochs over one batch of rollouts (GRPO, agentic GRPO / PPO).

The batch already carries everything fixed at sampling time (advantages, old_logprobs,
ref_logprobs, ...), so every epoch and minibatch reuses the old log-probs recorded before the
first update, and the importance ratio drifts from 1 as the policy moves.

One seeding rule for every RL loop: epoch e of the batch of training step `seed` visits the rows
in the order `numpy.random.default_rng(seed * 1000 + e).permutation(rows)`, and update
k = e * minibatches + j (the j-th minibatch of epoch e) gets the key `fold_in(rng, 1 + k)`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import numpy as np


def _rows(batch: Any) -> int:
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(batch)}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"every batch leaf needs the same leading dim, got {sorted(map(str, sizes))}")
  return sizes.pop()


def epoch_order(rows: int, seed: int, epoch: int) -> np.ndarray:
  """The row order of `epoch` (see the module docstring)."""
  return np.random.default_rng(seed * 1000 + epoch).permutation(rows)


def minibatches(batch: Any, num_minibatches: int, order: Optional[np.ndarray] = None) -> list:
  """Splits every leaf [n, ...] into num_minibatches equal row slices (host-side), taking the
  rows in `order` (None: as they are)."""
  n = _rows(batch)
  if n % num_minibatches:
    raise ValueError(f"batch of {n} rows does not split into {num_minibatches} minibatches")
  order = np.arange(n) if order is None else np.asarray(order)
  size = n // num_minibatches
  leaves, treedef = jax.tree.flatten(batch)
  host = [np.asarray(x) for x in leaves]
  return [treedef.unflatten([x[order[i * size:(i + 1) * size]] for x in host])
          for i in range(num_minibatches)]


def run_epochs(step: Callable, state: Any, batch: Any, rng: jax.Array, *, epochs: int,
               minibatches_per_epoch: int = 1, seed: int = 0,
               extra: Optional[Callable[[int], dict]] = None):
  """Runs step(state, minibatch, key) over `epochs` shuffled passes of `batch` (a dict of
  [rows, ...] arrays), `minibatches_per_epoch` updates each, seeded as the module docstring
  says (`seed`: the training step). `extra(k)`, when given, returns entries added to the k-th
  update's minibatch (e.g. the GRPO stage's replay rows).

  Returns (state, metrics): one metrics dict per update, in order.
  """
  rows = _rows(batch)
  all_metrics = []
  for epoch in range(epochs):
    order = epoch_order(rows, seed, epoch)
    for j, mb in enumerate(minibatches(batch, minibatches_per_epoch, order)):
      k = epoch * minibatches_per_epoch + j
      if extra is not None:
        mb = {**mb, **extra(k)}
      state, metrics = step(state, mb, jax.random.fold_in(rng, 1 + k))
      all_metrics.append(metrics)
  return state, all_metrics
