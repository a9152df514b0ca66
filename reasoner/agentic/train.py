"""Agentic training: SFT on tool-use demos, then GRPO or PPO on multi-turn tool rollouts.

Every loop is `reasoner.stages.loop.train_loop` (resumable, checkpointed, logged) over a
`step_fn(state, step, rng)` built here; the losses are the pipeline's own (`sft_loss`,
`grpo_loss`, `ppo_loss`) because rollout rows use the shared batch layout with environment
tokens masked out of `loss_mask`.

  GRPO  G episodes per problem; the advantage of every model token of an episode is its
        group-normalised return (composite reward minus tool costs).
  PPO   params {'model', 'value_head'}; each turn's reward sits on the turn's last token and GAE
        runs over model tokens only (environment tokens are skipped, see `reasoner.losses.ppo`).

`config` is the ConfigDict of `configs/agentic.py` (sections env, reward, rollout, sft, grpo, ppo).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from reasoner import sharding
from reasoner.agentic.env import ToolEnv, ToolEnvConfig
from reasoner.agentic.rollout import RolloutConfig, run_episodes, segment_rows
from reasoner.agentic.tasks import MultiplicationTask, demo_segments, encode_demo
from reasoner.data.problem import Problem
from reasoner.losses.grpo import GRPOConfig, filter_zero_variance_groups, group_advantages, grpo_loss
from reasoner.losses.logprobs import sequence_logprobs
from reasoner.losses.ppo import PPOConfig, gae, init_value_head, ppo_forward, ppo_loss
from reasoner.losses.sft import sft_loss
from reasoner.rewards.composite import RewardConfig
from reasoner.stages.context import stable_seed
from reasoner.stages.loop import train_loop
from reasoner.stages.supervised import epoch_batches
from reasoner.train import (init_train_state, make_eval_fn, make_optimizer, make_train_step,
                            run_epochs)


def make_task(config) -> MultiplicationTask:
  return MultiplicationTask(tuple(config.task.digits_a), tuple(config.task.digits_b))


def make_env_factory(config, task, tokenizer, *, tools_enabled: Optional[bool] = None
                     ) -> Callable[[], ToolEnv]:
  """A factory of fresh ToolEnvs with the config's env / reward settings (token cost counted
  with `tokenizer` on the model's text)."""
  env_cfg = ToolEnvConfig.from_dict(config.env)
  if tools_enabled is not None:
    env_cfg = dataclasses.replace(env_cfg, tools_enabled=tools_enabled)
  reward_cfg = RewardConfig.from_config(config.reward)
  count = lambda text: len(tokenizer.encode(text))
  return lambda: ToolEnv(env_cfg, reward_config=reward_cfg, task_checker=task.check,
                         count_tokens=count)


def train_problems(task, config, n: int, *parts) -> list[Problem]:
  return task.generate("train", n, stable_seed(config.seed, "agentic", *parts))


def _shardings(model_cfg, mesh, value_head: bool = False):
  if mesh is None:
    return None
  model = sharding.param_shardings(model_cfg, mesh)
  if not value_head:
    return model
  rep = sharding.replicated(mesh)
  return {"model": model, "value_head": {"w": rep, "b": rep}}


def _minibatch_updates(state, train_step, batch: dict, epochs: int, minibatches: int, step: int,
                       rng):
  """`epochs` passes over `batch` in `minibatches` shuffled slices (`reasoner.train.run_epochs`);
  returns (state, the last update's metrics)."""
  state, metrics = run_epochs(train_step, state, batch, rng, epochs=epochs,
                              minibatches_per_epoch=minibatches, seed=step)
  return state, metrics[-1]


def _with_rollout_metrics(metrics, rollouts) -> dict:
  out = {k: v for k, v in dict(jax.device_get(metrics)).items()}
  out.update({f"rollout/{k}": v for k, v in rollouts.metrics.items()})
  out["reward"] = rollouts.metrics["reward"]
  return out


# ------------------------------------------------------------------------------------------ SFT


def demo_rows(task, tokenizer, config) -> dict:
  """SFT rows [n_examples, max_len] from tool / direct demos (env tokens masked)."""
  problems = train_problems(task, config, config.sft.n_examples, "sft")
  demos = demo_segments(problems, config.sft.tool_fraction, stable_seed(config.seed, "demos"),
                        config.sft.python_fraction)
  episodes = [encode_demo(p, d, tokenizer, config.env.template) for p, d in zip(problems, demos)]
  return segment_rows(episodes, config.rollout.max_len, tokenizer.pad_id)


def run_agentic_sft(params, model_cfg, rows: dict, config, rng, *, stage_dir: str, writer, mesh=None):
  """Cross-entropy on the model-written tokens of `rows`; returns params."""
  optimizer = make_optimizer(config.sft.optim)
  shardings = _shardings(model_cfg, mesh)
  state = init_train_state(params, optimizer, mesh=mesh, param_shardings=shardings)
  step = make_train_step(functools.partial(sft_loss, model_cfg=model_cfg), optimizer, mesh=mesh,
                         param_shardings=shardings)
  n_rows, seed = rows["tokens"].shape[0], stable_seed(config.seed, "sft_batches")

  def step_fn(state, i, rng):
    idx = epoch_batches(n_rows, config.sft.batch_size, i, seed)
    return step(state, {k: v[idx] for k, v in rows.items()}, rng)

  state = train_loop("agentic_sft", state, step_fn, config.sft.steps, stage_dir=stage_dir,
                     writer=writer, rng=rng, log_every=config.log_every,
                     checkpoint_every=config.checkpoint_every)
  return state.params


# ----------------------------------------------------------------------------------------- GRPO


def make_grpo_step(model_cfg, tokenizer, task, config, optimizer, *, mesh=None,
                   ref_params=None, generate_fn=None):
  """step_fn(state, step, rng) -> (state, metrics): roll out, score, one GRPO update."""
  g = config.grpo
  loss_cfg = GRPOConfig.from_dict(g.loss)
  if loss_cfg.beta > 0 and ref_params is None:
    raise ValueError("grpo.loss.beta > 0 needs ref_params (the frozen starting model)")
  P, G = g.prompts_per_step, g.group_size
  if (P * G) % g.minibatches:
    raise ValueError(f"prompts_per_step * group_size = {P * G} is not divisible by "
                     f"minibatches = {g.minibatches}")
  train_step = make_train_step(functools.partial(grpo_loss, model_cfg=model_cfg, config=loss_cfg),
                               optimizer, mesh=mesh, param_shardings=_shardings(model_cfg, mesh))
  logprob_fn = make_eval_fn(
      lambda p, b: sequence_logprobs(p, model_cfg, b, entropy=False, packed=False)[0], mesh=mesh)
  make_env = make_env_factory(config, task, tokenizer)

  def step_fn(state, step, rng):
    problems = train_problems(task, config, P, "grpo", step)
    ro = run_episodes(state.params, model_cfg, tokenizer, [p for p in problems for _ in range(G)],
                      make_env, config.rollout, jax.random.fold_in(rng, 0), mesh=mesh,
                      generate_fn=generate_fn)
    adv = np.asarray(group_advantages(ro.rewards, G, scale_by_std=loss_cfg.scale_by_std))
    keep = (filter_zero_variance_groups(ro.rewards, G) if g.dynamic_sampling
            else np.ones(P * G, bool))
    batch = dict(ro.batch)
    batch["loss_mask"] = batch["loss_mask"] * keep[:, None].astype(np.float32)
    batch["advantages"] = adv.astype(np.float32)
    batch["old_logprobs"] = np.asarray(logprob_fn(state.params, batch))
    if loss_cfg.beta > 0:
      batch["ref_logprobs"] = np.asarray(logprob_fn(ref_params, batch))
    metrics = {}
    if keep.any():
      state, metrics = _minibatch_updates(state, train_step, batch, g.epochs, g.minibatches,
                                          step, jax.random.fold_in(rng, 1))
    metrics = _with_rollout_metrics(metrics, ro)
    metrics["groups_kept"] = float(keep.reshape(P, G)[:, 0].mean())
    return state, metrics

  return step_fn


def run_agentic_grpo(params, model_cfg, tokenizer, config, rng, *, stage_dir: str, writer,
                     mesh=None, generate_fn=None):
  """GRPO on tool-use episodes of the config's task for config.grpo.steps steps; returns params."""
  task = make_task(config)
  optimizer = make_optimizer(config.grpo.optim)
  state = init_train_state(params, optimizer, mesh=mesh,
                           param_shardings=_shardings(model_cfg, mesh))
  ref = params if config.grpo.loss.beta > 0 else None
  step_fn = make_grpo_step(model_cfg, tokenizer, task, config, optimizer, mesh=mesh, ref_params=ref,
                           generate_fn=generate_fn)
  state = train_loop("agentic_grpo", state, step_fn, config.grpo.steps, stage_dir=stage_dir,
                     writer=writer, rng=rng, log_every=config.log_every,
                     checkpoint_every=config.checkpoint_every)
  return state.params


# ------------------------------------------------------------------------------------------ PPO


def ppo_params(params, model_cfg) -> dict:
  """The PPO parameter tree: the policy plus a zero-initialised value head."""
  return {"model": params, "value_head": init_value_head(model_cfg.d_model)}


def make_ppo_step(model_cfg, tokenizer, task, config, optimizer, *, mesh=None, generate_fn=None):
  """step_fn(state, step, rng) -> (state, metrics) on state.params {'model', 'value_head'}."""
  p = config.ppo
  loss_cfg = PPOConfig.from_dict(p.loss)
  n = p.episodes_per_step
  if n % p.minibatches:
    raise ValueError(f"episodes_per_step = {n} is not divisible by minibatches = {p.minibatches}")
  train_step = make_train_step(functools.partial(ppo_loss, model_cfg=model_cfg, config=loss_cfg),
                               optimizer, mesh=mesh,
                               param_shardings=_shardings(model_cfg, mesh, value_head=True))
  forward = make_eval_fn(lambda prm, b: ppo_forward(prm, model_cfg, b), mesh=mesh)
  make_env = make_env_factory(config, task, tokenizer)

  def step_fn(state, step, rng):
    problems = train_problems(task, config, n, "ppo", step)
    ro = run_episodes(state.params["model"], model_cfg, tokenizer, problems, make_env,
                      config.rollout, jax.random.fold_in(rng, 0), mesh=mesh, generate_fn=generate_fn)
    batch = dict(ro.batch)
    logp, _, values = forward(state.params, batch)
    adv, ret = gae(ro.token_rewards, values, batch["loss_mask"], loss_cfg.gamma, loss_cfg.lam)
    batch.update(old_logprobs=np.asarray(logp), old_values=np.asarray(values),
                 advantages=np.asarray(adv), returns=np.asarray(ret))
    state, metrics = _minibatch_updates(state, train_step, batch, p.epochs, p.minibatches,
                                        step, jax.random.fold_in(rng, 1))
    return state, _with_rollout_metrics(metrics, ro)

  return step_fn


def run_agentic_ppo(params, model_cfg, tokenizer, config, rng, *, stage_dir: str, writer,
                    mesh=None, generate_fn=None):
  """PPO (value head + GAE over model tokens) for config.ppo.steps steps; returns the policy
  params (the value head is dropped)."""
  task = make_task(config)
  optimizer = make_optimizer(config.ppo.optim)
  state = init_train_state(ppo_params(params, model_cfg), optimizer, mesh=mesh,
                           param_shardings=_shardings(model_cfg, mesh, value_head=True))
  step_fn = make_ppo_step(model_cfg, tokenizer, task, config, optimizer, mesh=mesh,
                          generate_fn=generate_fn)
  state = train_loop("agentic_ppo", state, step_fn, config.ppo.steps, stage_dir=stage_dir,
                     writer=writer, rng=rng, log_every=config.log_every,
                     checkpoint_every=config.checkpoint_every)
  return state.params["model"]


# ------------------------------------------------------------------------------------ evaluation


def evaluate_agent(params, model_cfg, tokenizer, problems: Sequence[Problem], config, rng, *,
                   tools_enabled: bool = True, greedy: bool = True, mesh=None,
                   generate_fn=None) -> dict:
  """One episode per problem (greedy, or sampled at config.rollout.temperature): accuracy, tool
  use, format, reward and 3 example transcripts. With tools_enabled=False every tool call is
  answered with an error (the same model without its tools)."""
  task = make_task(config)
  rollout_cfg = dataclasses.replace(RolloutConfig.from_dict(config.rollout), greedy=greedy)
  ro = run_episodes(params, model_cfg, tokenizer, list(problems),
                    make_env_factory(config, task, tokenizer, tools_enabled=tools_enabled),
                    rollout_cfg, rng, mesh=mesh, generate_fn=generate_fn)
  out = dict(ro.metrics)
  out["n_problems"] = len(problems)
  out["examples"] = [{"prompt": ep.problem.prompt, "transcript": "".join(
      tokenizer.decode(ids) for ids, _ in ep.segments[1:])} for ep in ro.episodes[:3]]
  return out
