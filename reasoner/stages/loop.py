"""The one training loop every stage uses: resume from the last checkpoint, step, log, save.

A stage supplies `step_fn(state, step, rng) -> (state, metrics)`; everything stateful (the
optimiser state, the step counter, the RNG) lives in the checkpoint, and the data for step s is
a pure function of (seed, s), so a killed run resumes to the same final step.

Only `state.params` (what the optimiser trains) and the optimiser state are checkpointed; frozen
weights (a LoRA base) are the stage's input, rebuilt identically by the rerun. A checkpoint
whose params do not match the state's (e.g. full weights saved, LoRA adapters now) is refused
with a one-line error rather than restored.
"""

from __future__ import annotations

import os
from typing import Callable

import jax

from reasoner.checkpoint import CheckpointManager
from reasoner.io.metrics_log import MetricsWriter, Progress
from reasoner.train import TrainState


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


def train_loop(stage: str, state: TrainState, step_fn: Callable, n_steps: int, *, stage_dir: str,
               writer: MetricsWriter, rng: jax.Array, log_every: int = 10,
               checkpoint_every: int = 50) -> TrainState:
  """Runs steps [resumed, n_steps) of `step_fn`, checkpointing every `checkpoint_every` steps."""
  mgr = CheckpointManager(os.path.join(stage_dir, "ckpt"), max_to_keep=2)
  start = mgr.latest_step() or 0
  if start:
    check_resumable(mgr, start, state.params, stage)
    restored = mgr.restore(start, params_target=_abstract(state.params),
                           opt_state_target=_abstract(state.opt_state))
    state = state.replace(step=start, params=restored["params"], opt_state=restored["opt_state"])
    print(f"[{stage}] resumed from checkpoint step {start}/{n_steps}", flush=True)
  progress = Progress(stage, n_steps, start=start, every=log_every)
  for step in range(start, n_steps):
    state, metrics = step_fn(state, step, step_rng(rng, step))
    done = step + 1
    if done % log_every == 0 or done == n_steps:
      metrics = jax.device_get(metrics)
      writer.write(stage, done, metrics)
      progress.update(done, {k: v for k, v in metrics.items() if not k.startswith("_")}, force=True)
    if done % checkpoint_every == 0 or done == n_steps:
      mgr.save(done, state.params, state.opt_state)
  mgr.wait()
  mgr.close()
  return state
