"""The synchronous GRPO stage's batch layout (rows of dropped groups are left out, in bucketed
row counts, which leaves the update unchanged) and its SFT replay term; the preference metrics
the pipeline reports for the DPO stage."""

import jax
import numpy as np
import pytest

from configs.pipeline import tiny
from reasoner import sharding
from reasoner.losses import grpo_loss
from reasoner.losses.sft import sft_loss
from reasoner.model import ModelConfig
from reasoner.io.metrics_log import MetricsWriter
from reasoner.stages.context import StageContext
from reasoner.stages.grpo import (GRPOBatch, grpo_config, make_collect, make_learn, make_replay,
                                   row_buckets)
from reasoner.train import init_train_state, make_optimizer

MODEL = ModelConfig(vocab_size=384, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                    d_ff=64, max_seq_len=128)


def test_row_buckets():
  pick = row_buckets(128, 1)
  assert [pick(k) for k in (0, 1, 32, 33, 96, 97, 128)] == [32, 32, 32, 64, 96, 128, 128]
  pick = row_buckets(144, 12)  # quarters rounded up to multiples of 12
  assert [pick(k) for k in (1, 36, 37, 72, 100, 144)] == [36, 36, 72, 72, 108, 144]
  sizes = {row_buckets(96, 8)(k) for k in range(97)}
  assert sizes == {24, 48, 72, 96} and all(s % 8 == 0 for s in sizes)
  assert {row_buckets(96, 8, compact=False)(k) for k in range(97)} == {96}
  assert {row_buckets(100, 8)(k) for k in range(101)} == {100}  # not a multiple: never compacted
  assert row_buckets(4, 8)(2) == 4


def stage_ctx(tmp_path, tokenizer, loss_agg):
  cfg = tiny()
  # One update per batch, no replay or entropy term unless a test turns them on.
  cfg.grpo.update(dict(steps=1, prompts_per_step=4, group_size=4, max_new_tokens=16,
                       dynamic_sampling=True, epochs=1, minibatches=1, replay_weight=0.0))
  cfg.grpo.loss.update(dict(loss_agg=loss_agg, entropy_coef=0.0))
  cfg.grpo.reward.w_lang = 1.0  # a random model's rewards then vary within most groups
  cfg.grpo.optim.learning_rate = 1e-2
  mesh = sharding.make_mesh(1, -1, 1, devices=jax.devices()[:2])
  ctx = StageContext(cfg, str(tmp_path), mesh, MODEL, tokenizer,
                     MetricsWriter(str(tmp_path), tensorboard=False))
  return ctx, sharding.sharded_init(MODEL, jax.random.PRNGKey(0), mesh)


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean"])
def test_rows_of_dropped_groups_do_not_change_the_update(tmp_path, arith_tokenizer, loss_agg):
  ctx, params = stage_ctx(tmp_path, arith_tokenizer, loss_agg)
  # A key whose rollouts keep some groups and drop others (half kept with the rollout engine).
  gb = make_collect(ctx)(params, 0, jax.random.PRNGKey(5))
  rows = len(gb.rows["tokens"])
  kept = int(gb.rows["loss_mask"].any(axis=1).sum())
  assert rows == row_buckets(16, 2)(kept) and rows % 2 == 0
  longest = int(gb.rows["segment_ids"].sum(axis=1).max())  # as wide as the longest row needs
  assert gb.rows["tokens"].shape[1] == -(-longest // 32) * 32
  # The same batch with rows of dropped groups added back (masked out, advantage 0).
  extra = 16 - rows if rows < 16 else 4
  pad = {k: np.concatenate([v, np.zeros_like(v[:extra])]) for k, v in gb.rows.items()}
  pad["tokens"][rows:] = gb.rows["tokens"][:extra]
  full = GRPOBatch(pad, np.zeros_like(pad["loss_mask"]), gb.metrics, gb.any_kept)
  loss_fn = lambda p, b, r: grpo_loss(p, b, r, model_cfg=MODEL, config=grpo_config(ctx.config.grpo))
  opt = make_optimizer(ctx.config.grpo.optim)
  results = []
  for batch in (gb, full):
    state = init_train_state(params, opt, mesh=ctx.mesh, param_shardings=ctx.param_shardings)
    state, metrics = make_learn(ctx, opt, loss_fn)(state, batch, 0, jax.random.PRNGKey(2))
    results.append((jax.device_get(state.params), metrics))
  (a, ma), (b, mb) = results
  assert any(np.any(np.asarray(x) != np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(jax.device_get(params))))
  # Adam turns float-rounding differences in near-zero gradients into up to ~1e-6 (lr 1e-2).
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
  for key in ("loss", "grad_norm", "n_tokens"):  # the loss is ~0: advantages sum to 0
    np.testing.assert_allclose(ma[key], mb[key], rtol=1e-5, atol=1e-6)


def test_replay_adds_the_sft_loss_on_replayed_solutions(tmp_path, arith_tokenizer):
  ctx, params = stage_ctx(tmp_path, arith_tokenizer, "token_mean")
  ctx.config.grpo.update(dict(replay_weight=0.5, replay_batch_size=4, replay_problems=20))
  gb = make_collect(ctx)(params, 3, jax.random.PRNGKey(2))  # some groups kept: an update runs
  replay = make_replay(ctx)
  batch = replay(3, 0)
  assert batch["tokens"].shape == (4, ctx.config.grpo.replay_seq_len) and batch["loss_mask"].sum() > 0
  assert not np.array_equal(batch["tokens"], replay(4, 0)["tokens"])  # a new batch each update
  want, _ = sft_loss(params, batch, jax.random.PRNGKey(0), model_cfg=MODEL)
  loss_fn = lambda p, b, r: grpo_loss(p, b, r, model_cfg=MODEL, config=grpo_config(ctx.config.grpo))
  opt = make_optimizer(ctx.config.grpo.optim)
  state = init_train_state(params, opt, mesh=ctx.mesh, param_shardings=ctx.param_shardings)
  _, m = make_learn(ctx, opt, loss_fn)(state, gb, 3, jax.random.PRNGKey(2))
  np.testing.assert_allclose(m["replay_loss"], want, rtol=1e-5)
  np.testing.assert_allclose(m["loss"], m["pg_loss"] + 0.5 * m["replay_loss"], rtol=1e-5, atol=1e-6)
  assert make_replay(stage_ctx(tmp_path / "off", arith_tokenizer, "token_mean")[0]) is None


def test_preference_metrics_against_hand_computed_log_probs(tmp_path, arith_tokenizer):
  from reasoner.losses.dpo import response_logps
  from reasoner.stages.dpo import pair_batch, preference_metrics
  ctx, params = stage_ctx(tmp_path, arith_tokenizer, "token_mean")
  other = sharding.sharded_init(MODEL, jax.random.PRNGKey(5), ctx.mesh)
  enc = arith_tokenizer.encode
  pairs = [(enc("Compute 2+3."), enc(" 5</answer>"), enc(" 6 or 7</answer>")),
           (enc("Compute 9+9."), enc(" 18 is it</answer>"), enc(" 81</answer>")),
           (enc("Solve x+1=3."), enc(" x=2</answer>"), enc(" x=4, x=5</answer>"))]
  got = preference_metrics(ctx, params, other, pairs, 64)
  batch = pair_batch(pairs, 64, arith_tokenizer.pad_id)
  logps = lambda p: [np.asarray(x) for x in response_logps(p, MODEL, batch)]
  (c, r), (rc, rr) = logps(params), logps(other)
  assert got["pref_acc"] == pytest.approx(np.mean(c > r))
  assert got["reward_acc"] == pytest.approx(np.mean((c - rc) > (r - rr)))
  assert preference_metrics(ctx, params, params, pairs, 64)["reward_acc"] == 0.5


def test_replay_control_runs_grpos_replay_updates_alone(tmp_path, arith_tokenizer):
  """The control stage applies exactly GRPO's replay batches, in GRPO's order and number
  (steps x epochs x minibatches), with GRPO's optimiser and weight: the same params as those
  updates applied by hand, and never the policy loss."""
  from reasoner.stages.replay_control import replay_only_loss, run_replay_control
  from reasoner.train import make_train_step
  ctx, params = stage_ctx(tmp_path, arith_tokenizer, "token_mean")
  ctx.config.grpo.update(dict(steps=2, minibatches=2, epochs=1, replay_weight=0.5,
                              replay_batch_size=4, replay_problems=20))
  got = jax.device_get(run_replay_control(ctx, params, jax.random.PRNGKey(3)))
  rows = [r for r in ctx.writer.read("replay_control") if r["step"] > 0]
  assert rows and rows[-1]["step"] == 2 and "pg_loss" not in rows[-1]

  opt = make_optimizer(ctx.config.grpo.optim)
  loss_fn = lambda p, b, r: replay_only_loss(p, b, r, model_cfg=MODEL, weight=0.5)
  step = make_train_step(loss_fn, opt, mesh=ctx.mesh, param_shardings=ctx.param_shardings)
  state = init_train_state(params, opt, mesh=ctx.mesh, param_shardings=ctx.param_shardings)
  replay = make_replay(ctx)
  for s in range(2):
    for k in range(2):
      state, m = step(state, replay(s, k), jax.random.PRNGKey(0))  # the SFT loss draws no rng
  want = jax.device_get(state.params)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
  assert any(np.any(np.asarray(x) != np.asarray(y))
             for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(jax.device_get(params))))
  np.testing.assert_allclose(m["loss"], 0.5 * m["replay_loss"], rtol=1e-6)

  ctx.config.grpo.replay_weight = 0.0
  with pytest.raises(ValueError, match="replay_weight > 0"):
    run_replay_control(ctx, params, jax.random.PRNGKey(3))
