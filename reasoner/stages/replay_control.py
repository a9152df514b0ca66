"""The control for GRPO's SFT replay term: M1 trained with that term alone, no reinforcement.

GRPO on the tiny preset adds `grpo.replay_weight` x the SFT loss on packed reference solutions
to every update (`grpo.with_replay`). Part of M2's gain over M1 could come from that extra SFT
alone. This stage makes the model that answers it: from M1, the same number of updates
(grpo.steps x epochs x minibatches), on the very same replay batches (`grpo.make_replay`, which
is deterministic in the step and update), with the same optimiser settings (grpo.optim) and the
same weight, and no policy-gradient term. The study reports M2 against it (`launch.study`,
`config.controls`).
"""

from __future__ import annotations

import functools

import jax

from reasoner.losses.sft import sft_loss
from reasoner.stages.context import StageContext
from reasoner.stages.grpo import make_replay
from reasoner.stages.loop import train_loop
from reasoner.stages.trainable import init_stage_state, stage_result, train_shardings
from reasoner.train import make_optimizer, make_train_step

NAME = "replay_control"


def replay_only_loss(params, batch, rng, *, model_cfg, weight: float):
  """weight x the SFT loss: GRPO's replay term without the policy loss beside it."""
  loss, metrics = sft_loss(params, batch, rng, model_cfg=model_cfg)
  return weight * loss, {**metrics, "replay_loss": loss, "loss": weight * loss}


def run_replay_control(ctx: StageContext, params, rng: jax.Array):
  """M1 -> the control model: GRPO's replay updates, and nothing else."""
  grpo_cfg = ctx.config.grpo
  replay = make_replay(ctx)
  if replay is None:
    raise ValueError("the replay control needs config.grpo.replay_weight > 0 (with no replay "
                     "term there is nothing to control for)")
  optimizer = make_optimizer(grpo_cfg.optim)
  state = init_stage_state(ctx, NAME, params, optimizer)
  loss_fn = functools.partial(replay_only_loss, model_cfg=ctx.model_cfg,
                              weight=float(grpo_cfg.replay_weight))
  train_step = make_train_step(loss_fn, optimizer, mesh=ctx.mesh,
                               param_shardings=train_shardings(ctx),
                               tokens_per_device=int(grpo_cfg.tokens_per_device))
  updates_per_step = grpo_cfg.epochs * grpo_cfg.minibatches

  def step_fn(state, step, rng):
    updates = []
    for k in range(updates_per_step):
      state, metrics = train_step(state, replay(step, k), jax.random.fold_in(rng, 1 + k))
      updates.append(metrics)
    return state, {**updates[-1], "skipped": sum(u["skipped"] for u in updates),
                   "n_tokens": sum(u["n_tokens"] for u in updates)}

  state = train_loop(NAME, state, step_fn, grpo_cfg.steps, stage_dir=ctx.stage_dir(NAME),
                     writer=ctx.writer, rng=rng, log_every=ctx.config.log_every,
                     checkpoint_every=ctx.config.checkpoint_every,
                     max_skipped=ctx.config.max_skipped_steps)
  return stage_result(ctx, state)
