"""Output of a run on several hosts: one process (0) prints and writes the run's own files.

Every process runs the same program; without this each would print every progress line and
append every metrics row. Checkpoints are the exception: Orbax has every process write its own
shards, coordinated by itself.
"""

from __future__ import annotations

import jax


def is_writer() -> bool:
  """Whether this process writes the run's files (metrics, reports, eval results): process 0."""
  return jax.process_index() == 0


def log(msg: str) -> None:
  """Prints `msg` (flushed) on process 0 only."""
  if is_writer():
    print(msg, flush=True)


def barrier(name: str) -> None:
  """Waits until every process gets here (no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)
