"""Asynchronous GRPO (`config.grpo.async_rl.enabled`): an actor thread samples and scores the
rollouts of step t + 1 with a policy snapshot while the learner trains on step t's.

  actor    `PolicyActor` (`reasoner/stages/actor.py`) runs the synchronous stage's `make_collect`
           (sample, reward, group advantages, rows). Step s is sampled by policy version
           max(s - max_staleness, first step): each output carries that version and the sampler's
           per-token log-probs (the behaviour policy's, temperature 1 like the training forward).
  learner  the synchronous stage's `make_learn` with `off_policy_grpo_loss`: PPO-clip on
           pi / pi_prox (pi_prox = the learner's params at the start of the step, recomputed as
           in the synchronous stage), each token weighted by min(pi_prox / pi_behav, is_clip)
           (formula in `reasoner/losses/off_policy.py`). A batch sampled by the learner's current
           version uses pi_behav = pi_prox (w = 1), so max_staleness = 0 reproduces the
           synchronous stage.
  devices  by default both threads share the stage's mesh. With actor_devices = n > 0 the last n
           devices form the actor's mesh (data-parallel sampling, tensor axis as configured) and
           the learner trains on the others; each snapshot is a transfer to the actor's devices.
  resume   the checkpoint holds the learner (params, optimiser state, step). A restarted run
           starts the actor from the restored params, so its first max_staleness steps are
           sampled by the restored version (fresher than in the killed run); the data and RNG of
           every step are still functions of (seed, step).
  LoRA     with config.model.lora_rank > 0 the learner trains adapters on a frozen base
           (`reasoner/stages/trainable.py`); snapshots copy only the adapters and share the base
           (moved once to the actor's devices when it has its own).

Single-process only: on several hosts two threads could enqueue their collectives in different
orders on different hosts.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from reasoner import sharding
from reasoner.losses.off_policy import off_policy_grpo_loss
from reasoner.stages.actor import PolicyActor, copy_to
from reasoner.stages.context import StageContext
from reasoner.stages.grpo import grpo_config, make_collect, make_learn
from reasoner.stages.loop import step_rng, train_loop
from reasoner.stages.trainable import (init_stage_state, reference_params, stage_result,
                                       uses_lora)
from reasoner.train import make_optimizer
from reasoner.train.state import merge_trees


def split_devices(ctx: StageContext, actor_devices: int) -> tuple[StageContext, StageContext]:
  """(learner context, actor context): the same mesh, or the last `actor_devices` devices of it
  as the actor's mesh and the rest, in the configured (data, fsdp, tensor) shape, the learner's."""
  if not actor_devices:
    return ctx, ctx
  devices = sorted(ctx.mesh.devices.flat, key=lambda d: d.id)
  if not 0 < actor_devices < len(devices):
    raise ValueError(f"config.grpo.async_rl.actor_devices={actor_devices} must leave the learner at "
                     f"least one of the {len(devices)} devices")
  m = ctx.config.mesh
  learner = sharding.make_mesh(m.data, m.fsdp, m.tensor, devices=devices[:-actor_devices])
  actor = sharding.make_mesh(-1, 1, m.tensor, devices=devices[-actor_devices:])
  return dataclasses.replace(ctx, mesh=learner), dataclasses.replace(ctx, mesh=actor)


def run_async_grpo(ctx: StageContext, params, rng: jax.Array):
  if jax.process_count() > 1:
    raise ValueError("config.grpo.async_rl needs a single-process run; use the synchronous stage "
                     "on several hosts")
  grpo_cfg = ctx.config.grpo
  opts = grpo_cfg.async_rl
  loss_cfg = grpo_config(grpo_cfg)
  learner_ctx, actor_ctx = split_devices(ctx, int(opts.actor_devices))
  if learner_ctx is not ctx:
    params = jax.device_put(params, learner_ctx.param_shardings)
  optimizer = make_optimizer(grpo_cfg.optim)
  state = init_stage_state(learner_ctx, "grpo", params, optimizer)
  loss_fn = functools.partial(off_policy_grpo_loss, model_cfg=ctx.model_cfg, config=loss_cfg,
                              is_clip=float(opts.is_clip))
  reference = reference_params if state.frozen is not None else params
  learn = make_learn(learner_ctx, optimizer, loss_fn,
                     ref_params=reference if loss_cfg.beta > 0 else None, off_policy=True)
  collect = make_collect(actor_ctx)
  if uses_lora(ctx):  # snapshots are adapters; the actor adds them to its copy of the base
    own = actor_ctx is ctx
    base = state.frozen if own else jax.device_put(state.frozen, actor_ctx.param_shardings)
    copy = copy_to(None if own else sharding.lora_shardings(ctx.model_cfg, actor_ctx.mesh))
    place = lambda adapters: merge_trees(base, copy(adapters))
  else:
    place = copy_to(None if actor_ctx is ctx else actor_ctx.param_shardings)
  actor = PolicyActor(lambda p, step: collect(p, step, step_rng(rng, step)), opts.max_staleness,
                      place=place)

  def step_fn(state, step, rng_step):
    if not actor.started:  # here rather than up front: train_loop may have restored a checkpoint
      actor.start(state.params, step, grpo_cfg.steps)
    out = actor.get(step)
    lag = step - out.version
    state, metrics = learn(state, out.data, step, rng_step,
                           None if lag == 0 else out.data.behaviour_logprobs)
    actor.publish(step + 1, state.params)
    busy, blocked = actor.clock()
    metrics.update({"async/staleness": float(lag), "time/learner_wait_s": out.learner_wait_s,
                    "time/actor_busy_total_s": busy, "time/actor_blocked_total_s": blocked})
    return state, metrics

  try:
    state = train_loop("grpo", state, step_fn, grpo_cfg.steps, stage_dir=ctx.stage_dir("grpo"),
                       writer=ctx.writer, rng=rng, log_every=ctx.config.log_every,
                       checkpoint_every=ctx.config.checkpoint_every,
                       max_skipped=ctx.config.max_skipped_steps)
  finally:
    actor.close()
  params = stage_result(learner_ctx, state)
  if learner_ctx is not ctx:
    return jax.device_put(params, ctx.param_shardings)
  return params
