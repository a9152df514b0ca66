"""Stage 4 (M3 -> M4): DPO on preference pairs, anchored to M3, with replay of earlier data.

Pairs come from a JSONL file of {prompt, chosen, rejected} (`data.preferences_path`) or, by
default, from M3 itself: for each problem M3 samples N completions; the shortest verified-correct,
well-formatted one is chosen and an incorrect or malformed one rejected. The loss adds
`replay_weight` x the SFT loss on replayed reference solutions so earlier skills are kept.

Two preference metrics on held-out pairs (sampled from M3 on test problems):
  pref_acc    share of pairs whose chosen response the model gives the higher log-probability;
  reward_acc  share of pairs whose chosen response gets the higher DPO implicit reward
              log pi - log pi_M3 (what DPO optimises; ties count half, so M3 itself scores 0.5).

With config.model.lora_rank > 0 the stage trains adapters on M3 frozen
(`reasoner/stages/trainable.py`), and the reference log-probs come from that frozen base.
"""

from __future__ import annotations


import jax
import numpy as np

from reasoner.data.datasets import load_jsonl_preferences
from reasoner.losses.dpo import DPOConfig, dpo_loss, response_logps
from reasoner.sampling import SamplingConfig
from reasoner.sharding import to_host
from reasoner.stages.context import StageContext
from reasoner.stages.loop import train_loop
from reasoner.stages.rollouts import VERIFY_CHUNK, rollout_rows, sample_and_verify
from reasoner.stages.sft import sft_examples
from reasoner.stages.supervised import epoch_batches
from reasoner.stages.trainable import init_stage_state, stage_result, train_shardings
from reasoner.train import make_eval_fn, make_optimizer, make_train_step
from reasoner.train.packing import pack_sequences
from reasoner.io.log import log


def sampled_pairs(ctx: StageContext, params, problems, n: int, temperature: float, max_new: int,
                  rng: jax.Array, chunk: int = VERIFY_CHUNK,
                  batch_rows: int = 0) -> list[tuple[list[int], list[int], list[int]]]:
  """(prompt_ids, chosen_ids, rejected_ids) from the model's own samples, one per problem at most
  (`sample_and_verify`, sampler calls of at most `batch_rows` rows)."""
  sampling = SamplingConfig(max_new_tokens=max_new, temperature=temperature, n=n)
  pairs = []
  for v in sample_and_verify(ctx, params, problems, sampling, rng, chunk, batch_rows):
    good = [ids for ids, ok in zip(v.completion_ids, v.ok) if ok]
    bad = [ids for ids, ok in zip(v.completion_ids, v.ok) if not ok]
    if good and bad:
      pairs.append((v.prompt_ids, min(good, key=len), bad[0]))
  return pairs


def file_pairs(ctx: StageContext, path: str):
  return [(ctx.encode_prompt(p.prompt), ctx.encode_response(p.chosen), ctx.encode_response(p.rejected))
          for p in load_jsonl_preferences(path)]


def pair_batch(pairs, seq_len: int, pad_id: int) -> dict:
  prompts = [p for p, _, _ in pairs]
  return {"chosen": rollout_rows(prompts, [c for _, c, _ in pairs], seq_len, pad_id),
          "rejected": rollout_rows(prompts, [r for _, _, r in pairs], seq_len, pad_id)}


def pair_logps(ctx: StageContext, params, pairs, seq_len: int, chunk_size: int = 64):
  """Total log-probs (chosen [n], rejected [n]) of the responses of `pairs` under `params`,
  computed `chunk_size` pairs at a time (the last chunk padded: one compile)."""
  fn = make_eval_fn(lambda p, b: response_logps(p, ctx.model_cfg, b), mesh=ctx.mesh,
                    tokens_per_device=int(ctx.config.dpo.tokens_per_device))
  out_c, out_r = [], []
  for i in range(0, len(pairs), chunk_size):
    chunk = pairs[i:i + chunk_size]
    n = len(chunk)
    chunk = chunk + chunk[:1] * (chunk_size - n)
    c, r = fn(params, pair_batch(chunk, seq_len, ctx.tokenizer.pad_id))
    out_c.append(to_host(c)[:n])
    out_r.append(to_host(r)[:n])
  return np.concatenate(out_c), np.concatenate(out_r)


def preference_metrics(ctx: StageContext, params, ref_params, pairs, seq_len: int) -> dict:
  """pref_acc and reward_acc (module docstring) of `params` on `pairs`, reference `ref_params`."""
  if not pairs:
    return {"pref_acc": float("nan"), "reward_acc": float("nan")}
  c, r = pair_logps(ctx, params, pairs, seq_len)
  ref_c, ref_r = pair_logps(ctx, ref_params, pairs, seq_len)
  margin = (c - ref_c) - (r - ref_r)
  return {"pref_acc": float(np.mean(c > r)),
          "reward_acc": float(np.mean((margin > 0) + 0.5 * (margin == 0)))}


def held_out_pairs(ctx: StageContext, m3_params, rng: jax.Array):
  dpo_cfg = ctx.config.dpo
  problems = ctx.problems("test", dpo_cfg.n_problems, "dpo-heldout")
  return sampled_pairs(ctx, m3_params, problems, dpo_cfg.samples_per_problem, dpo_cfg.temperature,
                       dpo_cfg.max_new_tokens, rng, batch_rows=int(dpo_cfg.get("rollout_rows", 0)))


def dpo_train_loss(dpo_cfg, model_cfg):
  """The DPO stage's loss(params, batch, rng) for config.dpo `dpo_cfg`: DPO on batch["pairs"] (chosen,
  rejected, ref_chosen_logps, ref_rejected_logps) + replay_weight x the SFT loss on batch["replay"]."""
  loss_cfg = DPOConfig.from_dict(dpo_cfg.loss)

  def loss_fn(p, batch, rng):
    return dpo_loss(p, batch["pairs"], rng, model_cfg=model_cfg, config=loss_cfg,
                    replay=batch["replay"], replay_weight=float(dpo_cfg.replay_weight))

  return loss_fn


def run_dpo(ctx: StageContext, params, rng: jax.Array):
  dpo_cfg = ctx.config.dpo
  if ctx.config.data.preferences_path:
    pairs = file_pairs(ctx, ctx.config.data.preferences_path)
  else:
    problems = ctx.problems("train", dpo_cfg.n_problems, "dpo")
    pairs = sampled_pairs(ctx, params, problems, dpo_cfg.samples_per_problem, dpo_cfg.temperature,
                          dpo_cfg.max_new_tokens, jax.random.fold_in(rng, 0),
                          batch_rows=int(dpo_cfg.get("rollout_rows", 0)))
  if not pairs and ctx.config.data.preferences_path:
    raise ValueError(f"[dpo] no preference pairs in {ctx.config.data.preferences_path}")
  if not pairs:  # e.g. an R1-Zero run whose M3 never gets the format: nothing to prefer
    log("[dpo] no preference pairs: M3's samples were all correct or all wrong (raise "
        "dpo.n_problems or dpo.temperature, or give data.preferences_path); M4 is M3 unchanged")
    return params
  log(f"[dpo] {len(pairs)} preference pairs")
  optimizer = make_optimizer(dpo_cfg.optim)
  state = init_stage_state(ctx, "dpo", params, optimizer)
  ref = params if state.frozen is None else state.frozen  # LoRA: the frozen base, adapters off
  data = pair_batch(pairs, dpo_cfg.seq_len, ctx.tokenizer.pad_id)
  data["ref_chosen_logps"], data["ref_rejected_logps"] = pair_logps(ctx, ref, pairs, dpo_cfg.seq_len,
                                                                    dpo_cfg.batch_size)

  replay = pack_sequences(sft_examples(ctx, ctx.problems("train", dpo_cfg.n_problems, "dpo-replay")),
                          dpo_cfg.seq_len, ctx.tokenizer.pad_id)
  loss_fn = dpo_train_loss(dpo_cfg, ctx.model_cfg)
  step = make_train_step(loss_fn, optimizer, mesh=ctx.mesh, param_shardings=train_shardings(ctx),
                         tokens_per_device=int(dpo_cfg.tokens_per_device))

  def step_fn(state, i, rng):
    idx = epoch_batches(len(pairs), dpo_cfg.batch_size, i, ctx.config.seed)
    ridx = epoch_batches(replay["tokens"].shape[0], dpo_cfg.batch_size, i, ctx.config.seed + 1)
    batch = {"pairs": jax.tree.map(lambda x: x[idx], data),
             "replay": {k: v[ridx] for k, v in replay.items()}}
    return step(state, batch, rng)

  state = train_loop("dpo", state, step_fn, dpo_cfg.steps, stage_dir=ctx.stage_dir("dpo"),
                     writer=ctx.writer, rng=jax.random.fold_in(rng, 1), log_every=ctx.config.log_every,
                     checkpoint_every=ctx.config.checkpoint_every,
                     max_skipped=ctx.config.max_skipped_steps)
  return stage_result(ctx, state)
