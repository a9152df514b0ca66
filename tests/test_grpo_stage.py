"""The synchronous GRPO stage's batch layout (rows of dropped groups are left out, in bucketed
row counts, which leaves the update unchanged), its dynamic sampling (rounds of fresh prompts
until the step holds prompts_per_step mixed groups) and its SFT replay term; the preference
metrics the pipeline reports for the DPO stage."""

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
from reasoner.pipeline.config_check import validate_config
from reasoner.sampling.rollouts import Rollouts
from reasoner.stages import grpo as grpo_stage
from reasoner.stages.grpo import (GRPOBatch, grpo_config, make_collect, make_learn, make_replay,
                                   next_round_prompts, row_buckets)
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


def stage_ctx(tmp_path, tokenizer, loss_agg, init=True):
  cfg = tiny()
  # One update per batch, no replay or entropy term unless a test turns them on; one round of
  # dynamic sampling (a step short of P mixed groups) unless a test asks for more.
  cfg.grpo.update(dict(steps=1, prompts_per_step=4, group_size=4, max_new_tokens=16,
                       dynamic_sampling=True, max_sampling_rounds=1, epochs=1, minibatches=1,
                       replay_weight=0.0))
  cfg.grpo.loss.update(dict(loss_agg=loss_agg, entropy_coef=0.0))
  cfg.grpo.reward.w_lang = 1.0  # a random model's rewards then vary within most groups
  cfg.grpo.optim.learning_rate = 1e-2
  mesh = sharding.make_mesh(1, -1, 1, devices=jax.devices()[:2])
  ctx = StageContext(cfg, str(tmp_path), mesh, MODEL, tokenizer,
                     MetricsWriter(str(tmp_path), tensorboard=False))
  return ctx, sharding.sharded_init(MODEL, jax.random.PRNGKey(0), mesh) if init else None


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


def test_next_round_prompts():
  # need / (mixed rate so far), at most P, rounded up to whole sampler calls of `width` prompts.
  assert next_round_prompts(3, 1, 4, 4, 4) == 4  # wants 12, capped at P = 4
  assert next_round_prompts(1, 3, 4, 4, 2) == 2  # wants 2 (rate 3/4)
  assert next_round_prompts(1, 3, 8, 4, 4) == 4  # wants 3, one call of 4
  assert next_round_prompts(2, 0, 4, 8, 2) == 8  # nothing mixed yet: P
  assert next_round_prompts(3, 6, 8, 32, 5) == 5  # wants 4, one call of 5
  assert next_round_prompts(30, 2, 64, 32, 12) == 36  # wants P = 32: three calls of 12


def controlled_rollouts(ctx, monkeypatch, mixed_prompts):
  """A stand-in sampler and reward: completions of 1..max_new_tokens random tokens (a function
  of the call's key), and the first completion of a prompt in `mixed_prompts` scores 1, every
  other one 0 (so only those groups have mixed rewards). Returns the list the sampler's calls are
  recorded in: (prompts, batch_rows, rollouts, key)."""
  G = ctx.config.grpo.group_size

  def rewards(problems, texts, lengths, cfg):
    r = np.array([float(i % G == 0 and p.prompt in mixed_prompts) for i, p in enumerate(problems)],
                 np.float32)
    return r, {"r_out": r}

  calls = []

  def sample(params, prompts, sampling, rng, batch_rows=0):
    gen = np.random.default_rng(np.asarray(jax.random.key_data(rng)).tolist())
    lengths = gen.integers(1, sampling.max_new_tokens + 1, len(prompts) * sampling.n)
    completions = [gen.integers(10, 100, n).tolist() for n in lengths]
    ro = Rollouts([list(p) for p in prompts for _ in range(sampling.n)], completions,
                  [""] * len(completions), lengths, lengths < sampling.max_new_tokens,
                  [np.zeros(n, bool) for n in lengths], [np.zeros(n, np.float32) for n in lengths])
    calls.append((prompts, batch_rows, ro, rng))
    return ro

  monkeypatch.setattr(grpo_stage, "compute_rewards", rewards)
  ctx.sample = sample
  return calls


def round_problems(ctx, step, *ns):
  """The training problems of each round of step `step` (round r has ns[r] of them)."""
  return [ctx.problems("train", n, "grpo", step, *([r] if r else [])) for r, n in enumerate(ns)]


def group_counts(metrics):
  return tuple(metrics[k] for k in ("sampling_rounds", "groups_sampled", "groups_trained",
                                    "groups_shortfall"))


def trained_groups_check(ctx, gb, calls, groups):
  """The batch's first rows are those of `groups` ((round, prompt) pairs, in order): their
  prompts, completions and advantages (rewards 1, 0, ..., 0 normalised by hand); the rest carry no
  loss."""
  G = ctx.config.grpo.group_size
  r = np.array([1.0] + [0.0] * (G - 1))
  want_adv = (r - r.mean()) / (r.std(ddof=1) + 1e-6)
  for k, (rnd, j) in enumerate(groups):
    prompt = calls[rnd][0][j]
    for i in range(G):
      row, completion = k * G + i, calls[rnd][2].completion_ids[j * G + i]
      tokens = gb.rows["tokens"][row]
      assert tokens[:len(prompt)].tolist() == prompt
      assert tokens[len(prompt):len(prompt) + len(completion)].tolist() == completion
      assert gb.rows["loss_mask"][row].sum() > 0
      np.testing.assert_allclose(gb.rows["advantages"][row], want_adv[i], rtol=1e-5)
  assert not gb.rows["loss_mask"][len(groups) * G:].any()


def test_dynamic_sampling_resamples_until_the_step_holds_p_mixed_groups(tmp_path, arith_tokenizer,
                                                                        monkeypatch):
  ctx, params = stage_ctx(tmp_path, arith_tokenizer, "token_mean", init=False)  # a fake sampler
  ctx.config.grpo.update(dict(max_sampling_rounds=3, rollout_rows=0))  # P = 4 prompts per call
  rounds = round_problems(ctx, 7, 4, 4, 4)
  assert len({p.prompt for ps in rounds for p in ps}) == 12  # fresh prompts every round
  # Round 0: 1 mixed group; round 1: 2 (3 < P); round 2: 2, of which the first makes P.
  mixed = [(0, 1), (1, 0), (1, 2), (2, 0), (2, 3)]
  calls = controlled_rollouts(ctx, monkeypatch, {rounds[r][j].prompt for r, j in mixed})
  gb = make_collect(ctx)(params, 7, jax.random.PRNGKey(3))
  # Round 0 is the step's usual problems; round 1 samples need / rate = 3 / (1/4) -> P = 4
  # prompts, round 2 1 / (3/8) -> 3, rounded up to one call of 4; all in calls of P x G rows.
  assert [c[:2] for c in calls] == [([ctx.encode_prompt(p.prompt) for p in ps], 16) for ps in rounds]
  assert len(gb.rows["tokens"]) == 16  # exactly P groups of G rows
  trained_groups_check(ctx, gb, calls, mixed[:4])  # the fifth mixed group is beyond P: dropped
  for r, call in enumerate(calls):  # round r keyed fold_in(rng, r) (round 0 as it always was)
    np.testing.assert_array_equal(call[3], jax.random.fold_in(jax.random.PRNGKey(3), r))
  lengths = np.concatenate([c[2].lengths for c in calls])
  m = gb.metrics
  assert group_counts(m) == (3, 12, 4, 0)
  assert m["groups_mixed_frac"] == pytest.approx(5 / 12)
  assert m["groups_kept"] == pytest.approx(4 / 12)
  # Reward and lengths over every sampled completion (48): five completions scored 1.
  assert m["reward"] == pytest.approx(5 / 48) and m["reward/r_out"] == pytest.approx(5 / 48)
  assert m["sampled_tokens"] == lengths.sum()
  assert m["response_length"] == pytest.approx(lengths.mean())
  assert gb.any_kept


def test_dynamic_sampling_stops_at_max_sampling_rounds_and_reports_the_shortfall(
    tmp_path, arith_tokenizer, monkeypatch):
  ctx, params = stage_ctx(tmp_path, arith_tokenizer, "token_mean", init=False)  # a fake sampler
  ctx.config.grpo.update(dict(max_sampling_rounds=2, rollout_rows=8))  # 2 prompts per call
  rounds = round_problems(ctx, 2, 4, 2)
  mixed = [(0, 0), (0, 2), (0, 3)]  # 3 mixed in round 0, none in round 1
  calls = controlled_rollouts(ctx, monkeypatch, {rounds[r][j].prompt for r, j in mixed})
  gb = make_collect(ctx)(params, 2, jax.random.PRNGKey(1))
  # Round 1 samples 1 / (3/4) -> 2 prompts: one call of the same width as round 0's two.
  assert [c[:2] for c in calls] == [([ctx.encode_prompt(p.prompt) for p in ps], 8) for ps in rounds]
  assert len(gb.rows["tokens"]) == row_buckets(16, 2)(12) == 12
  trained_groups_check(ctx, gb, calls, mixed)
  m = gb.metrics
  assert group_counts(m) == (2, 6, 3, 1)
  assert m["groups_mixed_frac"] == pytest.approx(0.5) and m["groups_kept"] == pytest.approx(0.5)
  assert m["reward"] == pytest.approx(3 / 24)


def test_without_dynamic_sampling_one_round_trains_every_group(tmp_path, arith_tokenizer,
                                                               monkeypatch):
  ctx, params = stage_ctx(tmp_path, arith_tokenizer, "token_mean", init=False)  # a fake sampler
  ctx.config.grpo.update(dict(dynamic_sampling=False, max_sampling_rounds=3))
  calls = controlled_rollouts(ctx, monkeypatch, set())  # no group mixed
  gb = make_collect(ctx)(params, 7, jax.random.PRNGKey(3))
  assert len(calls) == 1 and len(gb.rows["tokens"]) == 16
  assert gb.rows["loss_mask"].any(axis=1).all() and not gb.rows["advantages"].any() and gb.any_kept
  m = gb.metrics
  assert group_counts(m) == (1, 4, 4, 0)
  assert (m["groups_mixed_frac"], m["groups_kept"]) == (0.0, 1.0)


def test_max_sampling_rounds_is_validated():
  cfg = tiny()
  validate_config(cfg)
  for value in (0, -1):
    cfg.grpo.max_sampling_rounds = value
    with pytest.raises(ValueError, match="config.grpo.max_sampling_rounds must be >= 1"):
      validate_config(cfg)


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


def test_distillation_and_dpo_with_nothing_to_learn_keep_the_model(tmp_path, arith_tokenizer,
                                                                  monkeypatch, capsys):
  """An R1-Zero teacher that never gets the format leaves no verified samples and no preference
  pairs: the stages then hand on their starting model unchanged (and say so) instead of failing."""
  from reasoner.stages import distill, dpo
  from reasoner.stages.models import save_stage_model
  ctx, params = stage_ctx(tmp_path, arith_tokenizer, "token_mean")
  save_stage_model(ctx, "sft", params, MODEL)  # the student's starting model (distill.init_from)
  teacher = sharding.sharded_init(MODEL, jax.random.PRNGKey(9), ctx.mesh)
  monkeypatch.setattr(distill, "rejection_sample",
                      lambda *a, **k: ([], {"sampled": 8, "correct": 0, "kept_unique": 0,
                                            "accept_rate": 0.0}))
  monkeypatch.setattr(dpo, "sampled_pairs", lambda *a, **k: [])
  m3 = distill.run_distill(ctx, teacher, jax.random.PRNGKey(1))
  m4 = dpo.run_dpo(ctx, params, jax.random.PRNGKey(2))
  for got in (m3, m4):
    for x, y in zip(jax.tree.leaves(jax.device_get(got)), jax.tree.leaves(jax.device_get(params))):
      np.testing.assert_array_equal(x, y)
  out = capsys.readouterr().out
  assert "no verified samples to train on" in out and "M4 is M3 unchanged" in out
  ctx.config.data.preferences_path = str(tmp_path / "prefs.jsonl")
  (tmp_path / "prefs.jsonl").write_text("")
  with pytest.raises(ValueError, match="no preference pairs in"):  # a user's file: an error
    dpo.run_dpo(ctx, params, jax.random.PRNGKey(2))
