"""Several optimisation epochs over one batch of rollouts (GRPO / PPO).

The batch already carries everything fixed at sampling time (advantages, old_logprobs,
ref_logprobs, ...), so every epoch and minibatch reuses the old log-probs recorded before the
first update, and the importance ratio drifts from 1 as the policy moves.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import numpy as np


def minibatches(batch: Any, num_minibatches: int, seed: Optional[int] = None) -> list:
  """Splits every leaf [n, ...] into num_minibatches equal row slices (host-side), after a
  row permutation drawn from `seed` (None: keep the order)."""
  leaves, treedef = jax.tree.flatten(batch)
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"every batch leaf needs the same leading dim, got {sorted(map(str, sizes))}")
  n = sizes.pop()
  if n % num_minibatches:
    raise ValueError(f"batch of {n} rows does not split into {num_minibatches} minibatches")
  order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
  size = n // num_minibatches
  host = [np.asarray(x) for x in leaves]
  return [treedef.unflatten([x[order[i * size:(i + 1) * size]] for x in host])
          for i in range(num_minibatches)]


def run_epochs(step: Callable, state: Any, batch: Any, rng: jax.Array, *, num_epochs: int,
               num_minibatches: int = 1, shuffle_seed: Optional[int] = None):
  """Runs step(state, minibatch, rng) over num_epochs passes of the batch.

  Returns (state, metrics): a list with one metrics dict per step, in order.
  """
  all_metrics = []
  for epoch in range(num_epochs):
    seed = None if shuffle_seed is None else shuffle_seed + epoch
    for mb in minibatches(batch, num_minibatches, seed):
      rng, sub = jax.random.split(rng)
      state, metrics = step(state, mb, sub)
      all_metrics.append(metrics)
  return state, all_metrics
