"""The one training loop every stage uses: resume from the last checkpoint, step, log, save.

A stage supplies `step_fn(state, step, rng) -> (state, metrics)`; everything stateful (the
optimiser state, the step counter, the RNG) lives in the checkpoint, and the data for step s is
a pure function of (seed, s), so a killed run resumes to the same final step.

Only `state.params` (what the optimiser trains) and the optimiser state are checkpointed; frozen
weights (a LoRA base) are the stage's input, rebuilt identically by the rerun. A checkpoint
whose params do not match the state's (e.g. full weights saved, LoRA adapters now) is refused
with a one-line error rather than restored.

Non-finite updates: the train step skips an update whose loss or gradient norm is not finite
(metrics["skipped"]); the loop counts them, logs each, stops with an error after
`max_skipped` steps in a row, and never writes a checkpoint of non-finite params (it stops
instead, so the last good checkpoint stays the latest).

Preemption: on SIGTERM (a TPU VM's preemption notice) the loop finishes the step it is in,
checkpoints it and exits with status 143; the same command resumes from that step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from reasoner.checkpoint import CheckpointManager
from reasoner.io.metrics_log import MetricsWriter, Progress
from reasoner.train import TrainState
from reasoner.io.log import log


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _leaf_shapes(tree) -> dict:
  is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)
  return {jax.tree_util.keystr(p): tuple(v) for p, v in
          jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_shape)}


def check_resumable(mgr: CheckpointManager, step: int, params, stage: str) -> None:
  """Raises ValueError when the checkpoint at `step` holds other params than `params`."""
  saved = _leaf_shapes(mgr.saved_shapes(step))
  want = _leaf_shapes(jax.tree.map(lambda x: tuple(x.shape), params))
  if saved != want:
    diff = sorted(set(saved.items()) ^ set(want.items()))[:3]
    raise ValueError(f"[{stage}] checkpoint step {step} in {mgr.directory} holds other params than "
                     f"this run trains (e.g. {diff}); was config.model.lora_* changed? Restore it "
                     f"or remove {mgr.directory}")


def step_rng(rng: jax.Array, step: int) -> jax.Array:
  """The RNG `train_loop` hands to step `step` (an actor running ahead derives the same one)."""
  return jax.random.fold_in(rng, step)


class NonFiniteError(RuntimeError):
  """Training produced non-finite values it could not skip past."""


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class _Preemption:
  """Records a SIGTERM while installed (main thread only; elsewhere it never fires)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def agreed(self) -> bool:
    """Whether any process got the signal (every process must stop at the same step)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def device_memory() -> dict:
  """{'mem/in_use_gib', 'mem/peak_gib'} of the most loaded local device, where the backend
  reports memory (GPU, TPU); {} on CPU."""
  stats = [d.memory_stats() for d in jax.local_devices()]
  stats = [s for s in stats if s and "bytes_in_use" in s]
  if not stats:
    return {}
  gib = 2.0 ** 30
  return {"mem/in_use_gib": max(s["bytes_in_use"] for s in stats) / gib,
          "mem/peak_gib": max(s.get("peak_bytes_in_use", 0) for s in stats) / gib}


def train_loop(stage: str, state: TrainState, step_fn: Callable, n_steps: int, *, stage_dir: str,
               writer: MetricsWriter, rng: jax.Array, log_every: int = 10,
               checkpoint_every: int = 50, max_skipped: int = 5) -> TrainState:
  """Runs steps [resumed, n_steps) of `step_fn`, checkpointing every `checkpoint_every` steps
  (see the module docstring for non-finite steps and SIGTERM)."""
  mgr = CheckpointManager(os.path.join(stage_dir, "ckpt"), max_to_keep=2)
  start = mgr.latest_step() or 0
  if start:
    check_resumable(mgr, start, state.params, stage)
    restored = mgr.restore(start, params_target=_abstract(state.params),
                           opt_state_target=_abstract(state.opt_state))
    state = state.replace(step=start, params=restored["params"], opt_state=restored["opt_state"])
    log(f"[{stage}] resumed from checkpoint step {start}/{n_steps}")
  progress = Progress(stage, n_steps, start=start, every=log_every)
  skipped_in_a_row = skipped_total = 0
  window_start, window_steps, window_tokens = time.perf_counter(), 0, 0.0
  with _Preemption() as preemption:
    for step in range(start, n_steps):
      state, metrics = step_fn(state, step, step_rng(rng, step))
      done = step + 1
      window_steps += 1
      # The step's loss tokens and skip flag, in one device-to-host read (the skip rule needs
      # every step's flag).
      n_tokens, skipped = jax.device_get((metrics.get("n_tokens", 0.0),
                                          metrics.get("skipped", 0.0)))
      window_tokens += float(n_tokens)
      if float(skipped) > 0:
        skipped_in_a_row += 1
        skipped_total += 1
        log(f"[{stage}] step {done}: non-finite loss or gradient, update skipped "
            f"({skipped_in_a_row} in a row, {skipped_total} in all)")
        if skipped_in_a_row >= max_skipped:
          mgr.wait()
          raise NonFiniteError(f"[{stage}] {skipped_in_a_row} non-finite steps in a row (up to step "
                               f"{done}); the last checkpoint in {mgr.directory} is the last good "
                               f"state: lower the learning rate or check the data, then rerun")
      else:
        skipped_in_a_row = 0
      if done % log_every == 0 or done == n_steps:
        # Telemetry over the steps since the last line: wall time per step, trained tokens/s,
        # device memory in use.
        window = time.perf_counter() - window_start
        metrics = dict(jax.device_get(metrics), skipped_steps=skipped_total,
                       **{"time/step_s": window / window_steps}, **device_memory())
        if window_tokens:
          metrics["tokens_per_s"] = window_tokens / window
        window_start, window_steps, window_tokens = time.perf_counter(), 0, 0.0
        writer.write(stage, done, metrics)
        progress.update(done, {k: v for k, v in metrics.items() if not k.startswith("_")},
                        force=True)
      preempted = preemption.agreed()
      if done % checkpoint_every == 0 or done == n_steps or preempted:
        if not bool(_all_finite(state.params)):
          mgr.wait()
          raise NonFiniteError(f"[{stage}] params are not finite at step {done}; not "
                               f"checkpointed (the last good one in {mgr.directory} is kept)")
        mgr.save(done, state.params, state.opt_state)
      if preempted:
        mgr.wait()
        mgr.close()
        log(f"[{stage}] SIGTERM: checkpointed step {done}/{n_steps}; rerun the same command "
            f"to resume")
        sys.exit(143)
  mgr.wait()
  mgr.close()
  return state
