"""Sharding constraints on activations by logical axis names.

The decoder calls `constrain(x, ("act_batch", "act_seq", "act_heads", None))` on its
activations. Under a mesh context (`with jax.set_mesh(mesh)`: the train and eval steps enter one
around their jitted calls; the sampler does not) this pins x to the mesh axes the rules give those
names, so GSPMD splits the work the way the rules say (heads and MLP hidden units over `tensor`,
rows over `data` x `fsdp`) instead of guessing; outside a mesh it returns x unchanged, so
single-device code and tests trace exactly as before.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
from jax.sharding import get_abstract_mesh

from reasoner.sharding.rules import DEFAULT_RULES, Rules, logical_to_spec


def current_mesh():
  """The mesh of the enclosing `jax.set_mesh` context, or None outside one."""
  mesh = get_abstract_mesh()
  return None if mesh.empty else mesh


def constrain(x: jax.Array, logical: Sequence[Optional[str]], rules: Rules = DEFAULT_RULES):
  """x with its dims pinned to the mesh axes of their logical names (see the module docstring).
  A mesh axis that does not divide its dim is dropped from it (with a warning, once)."""
  mesh = current_mesh()
  if mesh is None or mesh.size == 1:
    return x
  if len(logical) != x.ndim:
    raise ValueError(f"logical axes {tuple(logical)} do not match an array of rank {x.ndim}")
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical, mesh, rules, x.shape))
