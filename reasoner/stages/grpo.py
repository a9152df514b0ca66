"""Stage 2 (M1 -> M2, or M0 -> M2 in R1-Zero mode): GRPO with verifiable rewards.

One step: sample G completions for each of P training prompts with the current policy, score
them (accuracy + format), turn rewards into group-normalised advantages, then run `epochs`
passes of PPO-clip minibatch updates against the log-probs the policy had when sampling, with an
optional KL penalty to the frozen starting model.

Dynamic sampling (grpo.dynamic_sampling, DAPO's, as published): a group whose G rewards are all
equal has zero advantage and no gradient, so the step keeps sampling rounds of fresh training
prompts until it holds P groups with mixed rewards and trains on exactly those P (mixed groups
beyond P are dropped). grpo.max_sampling_rounds bounds the rounds; a step that reaches it short
of P trains on the mixed groups it has (`groups_shortfall` in its metrics). Round 0 is the step's
P prompts as without dynamic sampling; a later round samples the prompts still needed at the
mixed rate seen so far (at most P), rounded up to whole sampler calls, so every call has round
0's width and reuses its compiled program (`next_round_prompts`). Metrics: `sampling_rounds`,
`groups_sampled`, `groups_mixed_frac` (of those sampled), `groups_trained`, `groups_kept`
(trained / sampled); reward, response length, done rate, `sampled_tokens` and the rollout /
reward times cover every round. Without dynamic sampling: one round, every group trained on.

A step is two halves that the asynchronous mode (`reasoner.stages.async_grpo`) runs on different
threads: `make_collect` (sample, score, lay out rows: the actor's half, a function of the params
it is given) and `make_learn` (recompute old / reference log-probs, update: the learner's half).

The update costs more than the sampling, so the rows carry no dead weight: with dynamic sampling
the rows of groups not trained on are left out (a step short of P mixed groups rounds its row
count up to a quarter of the batch, so it takes at most four compiles), rows are as wide as the
batch's longest prompt + completion (rounded up to 32), and with one update per batch the old
log-probs are not recomputed (the ratio is 1 by definition: `grpo_objective` with old_logp=None).

With config.model.lora_rank > 0 the stage trains adapters on its starting model frozen
(`reasoner/stages/trainable.py`): rollouts sample base + adapters and the KL reference is the
frozen base itself (adapters off), read from the state at every step.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import NamedTuple, Optional

import jax
import numpy as np

from reasoner.losses.grpo import GRPOConfig, filter_zero_variance_groups, grpo_loss, group_advantages
from reasoner.losses.logprobs import logprob_gap, sequence_logprobs
from reasoner.losses.sft import sft_loss
from reasoner.rewards.composite import compute_rewards
from reasoner.sampling import SamplingConfig
from reasoner.sampling.rollouts import Rollouts, concat_rollouts
from reasoner.sharding import batch_shards, to_host
from reasoner.stages.context import StageContext
from reasoner.stages.loop import train_loop
from reasoner.stages.rollouts import rollout_rows
from reasoner.stages.sft import sft_examples
from reasoner.stages.supervised import epoch_batches
from reasoner.stages.trainable import (init_stage_state, policy_params, reference_params,
                                       stage_result, train_shardings)
from reasoner.train import make_eval_fn, make_optimizer, make_train_step, run_epochs
from reasoner.train.packing import pack_sequences


def grpo_config(grpo_cfg) -> GRPOConfig:
  return GRPOConfig(**grpo_cfg.loss.to_dict())


@dataclasses.dataclass
class GRPOBatch:
  """One step's scored rollouts, laid out as training rows."""
  rows: dict  # tokens / positions / segment_ids / loss_mask (dropped groups zeroed) / advantages
  behaviour_logprobs: np.ndarray  # [rows, t] the sampling policy's per-token log-probs
  metrics: dict  # rewards, response length, groups sampled / trained, done rate, rollout time
  any_kept: bool  # some group has a non-zero advantage


class SampledRound(NamedTuple):
  """One round of a step's sampling (rows prompt-major, G per prompt)."""
  rollouts: Rollouts
  rewards: np.ndarray  # [rows] float32
  parts: dict  # reward components, each [rows]
  reward_s: float  # seconds spent scoring


def rollout_sampling(grpo_cfg) -> SamplingConfig:
  """How config.grpo `grpo_cfg` samples: group_size completions of max_new_tokens per prompt."""
  return SamplingConfig(max_new_tokens=grpo_cfg.max_new_tokens, temperature=grpo_cfg.temperature,
                        top_p=grpo_cfg.top_p, n=grpo_cfg.group_size)


def make_collect(ctx: StageContext):
  """collect(params, step, rng) -> GRPOBatch for step `step` sampled with `params`.

  Round r samples G completions for each of its prompts (round 0: the step's P training problems
  `ctx.problems("train", P, "grpo", step)`, keyed fold_in(rng, 0); round r > 0: fresh ones,
  `ctx.problems("train", n, "grpo", step, r)`, keyed fold_in(rng, r)). Without dynamic sampling
  there is one round and every group is trained on. With it, rounds go on until P groups with
  mixed rewards are held or grpo.max_sampling_rounds is reached (`next_round_prompts` sizes them);
  the first P mixed groups in sampling order are trained on, the others are masked out. Reward,
  response-length and done-rate metrics are over every sampled completion, of all rounds."""
  grpo_cfg = ctx.config.grpo
  scale_by_std = grpo_config(grpo_cfg).scale_by_std
  P, G = grpo_cfg.prompts_per_step, grpo_cfg.group_size
  sampling = rollout_sampling(grpo_cfg)
  call_width = call_prompts(grpo_cfg)
  max_rounds = int(grpo_cfg.max_sampling_rounds) if grpo_cfg.dynamic_sampling else 1
  n_rows = row_buckets(P * G, grpo_cfg.minibatches * batch_shards(ctx.mesh),
                       compact=grpo_cfg.dynamic_sampling and grpo_cfg.loss.loss_agg != "constant")

  def sample_round(params, step: int, rng: jax.Array, r: int, n: int) -> SampledRound:
    """Round `r` of step `step`: `n` prompts, G completions each, scored."""
    problems = ctx.problems("train", n, "grpo", step, *([r] if r else []))
    prompts = [ctx.encode_prompt(p.prompt) for p in problems]
    # Calls of `call_width` prompts each (a later round's prompt count is a multiple of it): all
    # share one compiled sampler program. For round 0 this is the same as batch_rows=rollout_rows.
    ro = ctx.sample(params, prompts, sampling, jax.random.fold_in(rng, r),
                    batch_rows=call_width * G)
    t_reward = time.perf_counter()
    rewards, parts = compute_rewards([p for p in problems for _ in range(G)], ro.texts, ro.lengths,
                                     grpo_cfg.reward)
    return SampledRound(ro, np.asarray(rewards, np.float32), parts, time.perf_counter() - t_reward)

  def collect(params, step: int, rng: jax.Array) -> GRPOBatch:
    t0 = time.perf_counter()
    rounds, n, mixed = [], P, 0
    while True:
      rounds.append(sample_round(params, step, rng, len(rounds), n))
      mixed += int(mixed_groups(rounds[-1].rewards, G).sum())
      if mixed >= P or len(rounds) == max_rounds:
        break
      n = next_round_prompts(P - mixed, mixed, sum(len(r.rewards) for r in rounds) // G, P,
                             call_width)
    ro = concat_rollouts([r.rollouts for r in rounds])
    rewards = np.concatenate([r.rewards for r in rounds])
    parts = {k: np.concatenate([r.parts[k] for r in rounds]) for k in rounds[0].parts}
    reward_s = sum(r.reward_s for r in rounds)
    adv = np.asarray(group_advantages(rewards, G, scale_by_std=scale_by_std))
    mixed_mask = mixed_groups(rewards, G)
    trained = train_groups(mixed_mask, P) if grpo_cfg.dynamic_sampling else np.ones_like(mixed_mask)
    keep = np.repeat(trained, G)
    # Trained rows first, then as many others (masked out) as the row bucket needs.
    order = np.concatenate([np.flatnonzero(keep), np.flatnonzero(~keep)])[:n_rows(int(keep.sum()))]
    pick = lambda xs: [xs[i] for i in order]
    prompt_ids, completion_ids = pick(ro.prompt_ids), pick(ro.completion_ids)
    width = row_width(max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids)))
    rows = rollout_rows(prompt_ids, completion_ids, width, ctx.tokenizer.pad_id, pick(ro.injected),
                        logprobs=pick(ro.logprobs))
    behaviour = rows.pop("behaviour_logprobs")
    rows["loss_mask"] *= keep[order, None].astype(np.float32)
    rows["advantages"] = adv[order].astype(np.float32)
    sampled, n_trained = len(mixed_mask), int(trained.sum())
    metrics = {f"reward/{k}": float(np.mean(v)) for k, v in parts.items()}
    metrics.update(reward=float(np.mean(rewards)), response_length=float(ro.lengths.mean()),
                   done_rate=float(ro.done.mean()), sampled_tokens=float(ro.lengths.sum()),
                   sampling_rounds=float(len(rounds)), groups_sampled=float(sampled),
                   groups_mixed_frac=float(mixed_mask.mean()), groups_trained=float(n_trained),
                   groups_kept=n_trained / sampled, groups_shortfall=float(P - n_trained),
                   **{"time/rollout_s": time.perf_counter() - t0 - reward_s,
                      "time/reward_s": reward_s})
    return GRPOBatch(rows, behaviour, metrics, bool(keep.any()))

  return collect


def mixed_groups(rewards, group_size: int) -> np.ndarray:
  """rewards [n] (prompt-major) -> bool [n / group_size]: the groups whose rewards differ."""
  return np.asarray(filter_zero_variance_groups(np.asarray(rewards), group_size))[::group_size]


def train_groups(mixed: np.ndarray, prompts: int) -> np.ndarray:
  """Dynamic sampling's choice: the first `prompts` mixed groups (bool mask over groups)."""
  mixed = np.asarray(mixed, bool)
  return mixed & (np.cumsum(mixed) <= prompts)


def call_prompts(grpo_cfg) -> int:
  """Prompts per sampler call of the GRPO stage: grpo.rollout_rows // G (at least 1), at most
  prompts_per_step (all of them when rollout_rows is 0)."""
  P, G = int(grpo_cfg.prompts_per_step), int(grpo_cfg.group_size)
  rows = int(grpo_cfg.rollout_rows)
  return P if rows <= 0 else min(P, max(1, rows // G))


def next_round_prompts(need: int, mixed: int, sampled: int, prompts: int, width: int) -> int:
  """Prompts the next round of dynamic sampling samples, `need` mixed groups short after
  `sampled` groups of which `mixed` were mixed: need / (the mixed rate so far), `prompts` (P)
  when none was mixed, at most P; rounded up to whole sampler calls of `width` prompts (a call
  costs the same however many of its prompts are real, so the rest are fresh prompts rather than
  padding), so every round's calls share round 0's compiled program."""
  want = prompts if mixed <= 0 else min(prompts, -(-need * sampled // mixed))
  return -(-max(1, want) // width) * width


def row_width(tokens: int) -> int:
  """A row's length: `tokens` rounded up to a multiple of 32 (the step compiles a handful of times)."""
  return -(-int(tokens) // 32) * 32


def max_train_rows(grpo_cfg, mesh) -> int:
  """Rows of the largest batch `make_collect` lays out (every group kept): P x G."""
  total = grpo_cfg.prompts_per_step * grpo_cfg.group_size
  return row_buckets(total, grpo_cfg.minibatches * batch_shards(mesh),
                     compact=grpo_cfg.dynamic_sampling and grpo_cfg.loss.loss_agg != "constant")(total)


def minibatch_rows(grpo_cfg, rows: int) -> int:
  """Rows of each update: the batch's `rows` split into grpo.minibatches."""
  return rows // grpo_cfg.minibatches


def row_buckets(total: int, multiple: int, compact: bool = True):
  """kept rows -> rows to train on: the smallest of (at most) four sizes, quarters of `total`
  rounded up to a multiple of `multiple` (capped at `total`), that holds them; always `total`
  when not `compact` (or when `total` is not a multiple of `multiple`). Rows of dropped groups
  carry no loss, so leaving them out changes nothing but the cost for token- and sequence-mean
  losses (not for the "constant" one, whose denominator counts rows)."""
  unit = max(1, multiple)
  sizes = [total]
  if compact and total % unit == 0:
    quarter = lambda i: min(total, max(unit, -(-total * i // (4 * unit)) * unit))
    sizes = sorted({quarter(i) for i in (1, 2, 3, 4)})
  return lambda kept: next(s for s in sizes if s >= kept)


def with_replay(loss_fn, weight: float, model_cfg):
  """loss_fn + weight x the SFT loss on batch["replay"] (packed rows of reference solutions):
  the PPO-ptx term, which keeps the skills the policy gradient's noise would otherwise wear."""

  def fn(params, batch, rng):
    batch = dict(batch)
    replay = batch.pop("replay")
    loss, metrics = loss_fn(params, batch, rng)
    replay_loss, _ = sft_loss(params, replay, rng, model_cfg=model_cfg)
    total = loss + weight * replay_loss
    return total, {**metrics, "replay_loss": replay_loss, "loss": total}

  return fn


def grpo_loss_fn(grpo_cfg, model_cfg):
  """The GRPO stage's policy loss(params, batch, rng) for config.grpo `grpo_cfg` (without replay)."""
  return functools.partial(grpo_loss, model_cfg=model_cfg, config=grpo_config(grpo_cfg))


def update_loss_fn(grpo_cfg, loss_fn, model_cfg):
  """The loss each update runs: `loss_fn`, plus the replay term when grpo.replay_weight > 0."""
  return with_replay(loss_fn, float(grpo_cfg.replay_weight), model_cfg) if grpo_cfg.replay_weight else loss_fn


def logprob_fn(model_cfg):
  """fn(params, batch) -> per-token log-probs [b, t]: the old / reference log-prob pass."""
  return lambda p, b: sequence_logprobs(p, model_cfg, b, entropy=False, packed=False)[0]


def recomputes_old_logprobs(grpo_cfg, off_policy: bool = False, has_behaviour: bool = False) -> bool:
  """Whether `make_learn` adds old_logprobs to the batch (several updates per batch, or
  off-policy with behaviour log-probs)."""
  return grpo_cfg.epochs * grpo_cfg.minibatches > 1 or (off_policy and has_behaviour)


def replay_shape(config) -> tuple[int, int]:
  """[rows, tokens] of the replay sub-batch: grpo.replay_batch_size packed rows of
  grpo.replay_seq_len tokens."""
  return int(config.grpo.replay_batch_size), int(config.grpo.replay_seq_len)


def make_replay(ctx: StageContext):
  """replay(step, update) -> a batch of `grpo.replay_batch_size` packed SFT rows, or None when
  `grpo.replay_weight` is 0. The solutions are drawn from a training split of their own."""
  grpo_cfg = ctx.config.grpo
  if not grpo_cfg.replay_weight:
    return None
  problems = ctx.problems("train", grpo_cfg.replay_problems, "grpo-replay")
  n, seq_len = replay_shape(ctx.config)
  rows = pack_sequences(sft_examples(ctx, problems), seq_len, ctx.tokenizer.pad_id)
  per_step = grpo_cfg.epochs * grpo_cfg.minibatches

  def replay(step: int, update: int) -> dict:
    idx = epoch_batches(len(rows["tokens"]), n, step * per_step + update, ctx.config.seed + 2)
    return {k: v[idx] for k, v in rows.items()}

  return replay


def make_learn(ctx: StageContext, optimizer, loss_fn, ref_params=None, off_policy: bool = False):
  """learn(state, batch, step, rng, behaviour_logprobs=None) -> (state, metrics).

  With several updates per batch (epochs x minibatches > 1), recomputes the old (proximal)
  log-probs with the training forward first, so the first-epoch ratio is exactly 1; with one
  update the loss takes the ratio as 1 without that forward pass. With `off_policy` the loss also
  gets behaviour_logprobs: the given ones, or none (meaning the proximal ones) when None (the rows
  were sampled by the very params being trained: the synchronous case). With
  `grpo.replay_weight` > 0 each update adds the SFT loss on a batch of replayed solutions.
  `ref_params` is the KL reference: params, or a function of the state (under LoRA the state's
  frozen base, read at every step: no copy of the weights is kept).
  """
  grpo_cfg = ctx.config.grpo
  replay = make_replay(ctx)
  loss_fn = update_loss_fn(grpo_cfg, loss_fn, ctx.model_cfg)
  budget = int(grpo_cfg.tokens_per_device)
  train_step = make_train_step(loss_fn, optimizer, mesh=ctx.mesh,
                               param_shardings=train_shardings(ctx), tokens_per_device=budget)
  logprobs = make_eval_fn(logprob_fn(ctx.model_cfg), mesh=ctx.mesh, tokens_per_device=budget)

  def learn(state, gb: GRPOBatch, step: int, rng: jax.Array,
            behaviour_logprobs: Optional[np.ndarray] = None):
    t0 = time.perf_counter()
    batch = dict(gb.rows)
    if recomputes_old_logprobs(grpo_cfg, off_policy, behaviour_logprobs is not None):
      batch["old_logprobs"] = to_host(logprobs(policy_params(state), batch))
    if off_policy and behaviour_logprobs is not None:
      batch["behaviour_logprobs"] = behaviour_logprobs
    if ref_params is not None:
      ref = ref_params(state) if callable(ref_params) else ref_params
      batch["ref_logprobs"] = to_host(logprobs(ref, batch))
    metrics = {}
    if gb.any_kept:
      extra = None if replay is None else (lambda k: {"replay": replay(step, k)})
      state, updates = run_epochs(train_step, state, batch, rng, epochs=grpo_cfg.epochs,
                                  minibatches_per_epoch=grpo_cfg.minibatches, seed=step, extra=extra)
      # The last update's metrics, how many of the step's updates were skipped and the loss
      # tokens of all of them.
      metrics = {**updates[-1], "skipped": sum(u["skipped"] for u in updates),
                 "n_tokens": sum(u["n_tokens"] for u in updates)}
    metrics = dict(jax.device_get(metrics))
    metrics.update(gb.metrics)
    if "old_logprobs" in batch:  # the sampler's log-probs against the learner's recomputation
      metrics.update(logprob_gap(batch["old_logprobs"], gb.behaviour_logprobs, batch["loss_mask"]))
    metrics["time/learn_s"] = time.perf_counter() - t0
    return state, metrics

  return learn


def run_grpo(ctx: StageContext, params, rng: jax.Array):
  grpo_cfg = ctx.config.grpo
  loss_cfg = grpo_config(grpo_cfg)
  optimizer = make_optimizer(grpo_cfg.optim)
  state = init_stage_state(ctx, "grpo", params, optimizer)
  loss_fn = grpo_loss_fn(grpo_cfg, ctx.model_cfg)
  collect = make_collect(ctx)
  reference = reference_params if state.frozen is not None else params
  learn = make_learn(ctx, optimizer, loss_fn, ref_params=reference if loss_cfg.beta > 0 else None)

  def step_fn(state, step, rng):
    return learn(state, collect(policy_params(state), step, rng), step, rng)

  state = train_loop("grpo", state, step_fn, grpo_cfg.steps, stage_dir=ctx.stage_dir("grpo"),
                     writer=ctx.writer, rng=rng, log_every=ctx.config.log_every,
                     checkpoint_every=ctx.config.checkpoint_every,
                     max_skipped=ctx.config.max_skipped_steps)
  return stage_result(ctx, state)
