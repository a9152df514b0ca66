"""Supervised training on (prompt, response) token pairs: pre-training, SFT and distillation SFT."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np

from reasoner.losses.sft import sft_loss
from reasoner.stages.context import StageContext, stable_seed
from reasoner.stages.loop import train_loop
from reasoner.stages.trainable import init_stage_state, stage_result, train_shardings
from reasoner.train import make_optimizer, make_train_step
from reasoner.train.packing import pack_sequences
from reasoner.io.log import log


def epoch_batches(n_rows: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """Row indices of batch `step`: a fresh permutation each epoch, deterministic in (seed, step)."""
  per_epoch = max(1, n_rows // batch_size)
  epoch, k = divmod(step, per_epoch)
  order = np.random.default_rng(stable_seed(seed, epoch)).permutation(n_rows)
  idx = order[k * batch_size:(k + 1) * batch_size]
  if len(idx) < batch_size:  # fewer rows than one batch: wrap around
    idx = np.resize(order, batch_size)
  return idx


def run_supervised(ctx: StageContext, stage: str, params, examples: Sequence[tuple[list[int], list[int]]],
                   scfg, rng: jax.Array):
  """Trains `params` (or LoRA adapters on them: `reasoner.stages.trainable`) with the
  response-only cross-entropy on packed `examples`; returns the trained (merged) params."""
  if not examples:
    raise ValueError(f"[{stage}] no training examples")
  packed = pack_sequences(list(examples), scfg.seq_len, ctx.tokenizer.pad_id)
  n_rows = packed["tokens"].shape[0]
  log(f"[{stage}] {len(examples)} examples packed into {n_rows} rows of {scfg.seq_len} tokens")
  optimizer = make_optimizer(scfg.optim)
  state = init_stage_state(ctx, stage, params, optimizer)
  loss_fn = functools.partial(sft_loss, model_cfg=ctx.model_cfg)
  step = make_train_step(loss_fn, optimizer, mesh=ctx.mesh, param_shardings=train_shardings(ctx),
                         tokens_per_device=int(scfg.tokens_per_device))
  seed = stable_seed(ctx.config.seed, stage, "batches")

  def step_fn(state, i, rng):
    idx = epoch_batches(n_rows, scfg.batch_size, i, seed)
    return step(state, {k: v[idx] for k, v in packed.items()}, rng)

  state = train_loop(stage, state, step_fn, scfg.steps, stage_dir=ctx.stage_dir(stage),
                     writer=ctx.writer, rng=rng, log_every=ctx.config.log_every,
                     checkpoint_every=ctx.config.checkpoint_every,
                     max_skipped=ctx.config.max_skipped_steps)
  return stage_result(ctx, state)
