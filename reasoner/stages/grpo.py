"""Stage 2 (M1 -> M2, or M0 -> M2 in R1-Zero mode): GRPO with verifiable rewards.

One step: sample G completions for each of P training prompts with the current policy, score
them (accuracy + format), turn rewards into group-normalised advantages, then run `epochs`
passes of PPO-clip minibatch updates against the log-probs the policy had when sampling, with an
optional KL penalty to the frozen starting model.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from reasoner.losses.grpo import GRPOConfig, filter_zero_variance_groups, grpo_loss, group_advantages
from reasoner.losses.logprobs import sequence_logprobs
from reasoner.pipeline.evaluate import check_completion
from reasoner.rewards.composite import compute_rewards
from reasoner.sampling import SamplingConfig
from reasoner.sharding import to_host
from reasoner.stages.context import StageContext
from reasoner.stages.loop import train_loop
from reasoner.stages.rollouts import rollout_rows, sample_rollouts
from reasoner.train import init_train_state, make_eval_fn, make_optimizer, make_train_step


def grpo_config(cfg) -> GRPOConfig:
  return GRPOConfig(**cfg.loss.to_dict())


def run_grpo(ctx: StageContext, params, rng: jax.Array):
  cfg = ctx.config.grpo
  loss_cfg = grpo_config(cfg)
  P, G = cfg.prompts_per_step, cfg.group_size
  optimizer = make_optimizer(cfg.optim)
  state = init_train_state(params, optimizer, mesh=ctx.mesh, param_shardings=ctx.param_shardings)
  loss_fn = functools.partial(grpo_loss, model_cfg=ctx.model_cfg, config=loss_cfg)
  train_step = make_train_step(loss_fn, optimizer, mesh=ctx.mesh, param_shardings=ctx.param_shardings)
  logprob_fn = make_eval_fn(lambda p, b: sequence_logprobs(p, ctx.model_cfg, b)[0], mesh=ctx.mesh)
  ref_params = params if loss_cfg.beta > 0 else None
  sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, n=G)

  def step_fn(state, step, rng):
    problems = ctx.problems("train", P, "grpo", step)
    prompts = [ctx.encode_prompt(p.prompt) for p in problems]
    ro = sample_rollouts(state.params, ctx, prompts, sampling, jax.random.fold_in(rng, 0))
    rewards, parts = compute_rewards([p for p in problems for _ in range(G)], ro.texts, ro.lengths,
                                     cfg.reward, task_checker=check_completion)
    adv = np.asarray(group_advantages(np.asarray(rewards, np.float32), G, scale_by_std=loss_cfg.scale_by_std))
    keep = (np.asarray(filter_zero_variance_groups(np.asarray(rewards), G)) if cfg.dynamic_sampling
            else np.ones(P * G, bool))
    width = max(len(p) for p in prompts) + cfg.max_new_tokens
    width = -(-width // 32) * 32  # bucket the row length so the step compiles a handful of times
    batch = rollout_rows(ro.prompt_ids, ro.completion_ids, width, ctx.tokenizer.pad_id, ro.injected)
    batch["loss_mask"] *= keep[:, None].astype(np.float32)
    batch["advantages"] = adv.astype(np.float32)
    batch["old_logprobs"] = to_host(logprob_fn(state.params, batch))
    if ref_params is not None:
      batch["ref_logprobs"] = to_host(logprob_fn(ref_params, batch))
    metrics = {}
    if keep.any():
      mb = P * G // cfg.minibatches
      for epoch in range(cfg.epochs):
        order = np.random.default_rng(step * 1000 + epoch).permutation(P * G)
        for j in range(cfg.minibatches):
          idx = order[j * mb:(j + 1) * mb]
          state, metrics = train_step(state, {k: v[idx] for k, v in batch.items()},
                                      jax.random.fold_in(rng, 1 + epoch * cfg.minibatches + j))
    metrics = dict(jax.device_get(metrics))
    metrics.update({f"reward/{k}": float(np.mean(v)) for k, v in parts.items()})
    metrics.update(reward=float(np.mean(rewards)), response_length=float(ro.lengths.mean()),
                   groups_kept=float(keep.reshape(P, G)[:, 0].mean()), done_rate=float(ro.done.mean()))
    return state, metrics

  state = train_loop("grpo", state, step_fn, cfg.steps, stage_dir=ctx.stage_dir("grpo"),
                     writer=ctx.writer, rng=rng, log_every=ctx.config.log_every,
                     checkpoint_every=ctx.config.checkpoint_every)
  return state.params
