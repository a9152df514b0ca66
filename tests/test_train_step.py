"""Optimiser, train state and the jitted (sharded) train / eval steps on a tiny model."""

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reasoner import sharding
from reasoner.losses import GRPOConfig, grpo_loss, sequence_logprobs, sft_loss
from reasoner.losses import PPOConfig, gae, init_value_head, ppo_forward, ppo_loss
from reasoner.model import ModelConfig, init_params
from reasoner.train import (OptimConfig, as_optim_config, decay_mask, init_train_state,
                            make_eval_fn, make_optimizer, make_schedule, make_train_step,
                            mixed_precision, pad_sequences, run_epochs)

CFG = ModelConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                  d_ff=96, max_seq_len=32)
SFT = functools.partial(sft_loss, model_cfg=CFG)
RNG = jax.random.PRNGKey(0)


def make_batch(n, seed=0, seq_len=16, full=False):
  rng = np.random.default_rng(seed)
  if full:  # every row has the same number of loss tokens
    ex = [(rng.integers(1, 64, 4), rng.integers(1, 64, seq_len - 4)) for _ in range(n)]
  else:
    ex = [(rng.integers(1, 64, rng.integers(2, 6)), rng.integers(1, 64, rng.integers(3, 10)))
          for _ in range(n)]
  return pad_sequences(ex, seq_len, pad_id=0)


def params(seed=0):
  return jax.device_put(init_params(CFG, jax.random.PRNGKey(seed)), jax.devices()[0])


def max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.abs(np.asarray(x, np.float64) - np.asarray(y)).max()), a, b)))


# ---------------------------------------------------------------- optimiser config

def test_schedule_warmup_and_decay():
  sched = make_schedule(OptimConfig(learning_rate=1.0, warmup_steps=4, total_steps=14,
                                    schedule="cosine", min_lr_ratio=0.1))
  np.testing.assert_allclose([sched(i) for i in range(4)], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
  np.testing.assert_allclose(sched(9), 0.1 + 0.9 * 0.5, rtol=1e-5)  # half-way through decay
  np.testing.assert_allclose(sched(14), 0.1, rtol=1e-5)
  lin = make_schedule(dict(learning_rate=2.0, total_steps=10, schedule="linear"))
  np.testing.assert_allclose([lin(0), lin(5), lin(10)], [2.0, 1.0, 0.0], atol=1e-6)
  assert float(make_schedule(dict(schedule="constant", learning_rate=3.0))(100)) == 3.0


def test_optim_config_sources_and_errors():
  cd = ml_collections.ConfigDict(dict(learning_rate=3e-4, grad_accum_steps=2))
  assert as_optim_config(cd) == OptimConfig(learning_rate=3e-4, grad_accum_steps=2)
  with pytest.raises(ValueError, match=r"unknown OptimConfig field\(s\) \['lerning_rate'\]"):
    make_optimizer(dict(lerning_rate=1e-3))
  with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
    make_optimizer(dict(schedule="cosin"))
  mask = decay_mask(init_params(CFG, RNG))
  assert mask["embed"] and mask["layers"]["wq"]
  assert not mask["final_norm"] and not mask["layers"]["attn_norm"]
  assert decay_mask(init_value_head(8)) == {"w": True, "b": False}


# ---------------------------------------------------------------- single-device steps

def test_sft_steps_decrease_loss_and_report_metrics():
  opt = make_optimizer(dict(learning_rate=3e-3, warmup_steps=2, schedule="constant"))
  state = init_train_state(params(), opt)
  step = make_train_step(SFT, opt)
  batch = make_batch(4)
  losses = []
  for i in range(6):
    state, m = step(state, batch, RNG)
    losses.append(float(m["loss"]))
    if i == 0:
      assert float(m["learning_rate"]) == pytest.approx(1.5e-3)  # warmup 1 of 2
      assert float(m["grad_norm"]) > 0 and set(m) >= {"accuracy", "n_tokens"}
  assert float(m["learning_rate"]) == pytest.approx(3e-3)
  assert int(state.step) == 6
  assert losses[-1] < losses[0] - 0.1


def test_grad_accumulation_equals_one_step_on_concatenated_batch():
  # Equal token counts per micro-batch make the full-batch mean loss the mean of the micro
  # losses; a large Adam eps keeps the update a smooth function of the gradient.
  kw = dict(learning_rate=1e-2, schedule="constant", eps=1e-3, weight_decay=0.1)
  batch = make_batch(4, full=True)
  micro = [{k: v[:2] for k, v in batch.items()}, {k: v[2:] for k, v in batch.items()}]

  opt_k = make_optimizer(dict(kw, grad_accum_steps=2))
  state_k = init_train_state(params(), opt_k)
  step_k = make_train_step(SFT, opt_k)
  start = jax.tree.map(np.asarray, state_k.params)
  state_k, _ = step_k(state_k, micro[0], RNG)
  assert max_diff(state_k.params, start) == 0.0  # no update until the k-th micro-step
  state_k, _ = step_k(state_k, micro[1], RNG)

  opt_1 = make_optimizer(kw)
  state_1, _ = make_train_step(SFT, opt_1)(init_train_state(params(), opt_1), batch, RNG)
  assert max_diff(state_1.params, start) > 1e-3
  assert max_diff(state_k.params, state_1.params) < 1e-5


def test_bf16_compute_keeps_float32_master_weights():
  bf16 = mixed_precision(CFG)
  assert bf16.dtype == "bfloat16" and bf16.param_dtype == "float32"
  loss_fn = functools.partial(sft_loss, model_cfg=bf16)
  batch = make_batch(4)
  p = params()
  (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(p, batch, RNG)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  ref_loss, _ = jax.jit(SFT)(p, batch, RNG)
  assert float(loss) == pytest.approx(float(ref_loss), rel=2e-2)
  opt = make_optimizer(dict(learning_rate=1e-3))
  state, _ = make_train_step(loss_fn, opt)(init_train_state(p, opt), batch, RNG)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))


# ---------------------------------------------------------------- sharded

def test_sharded_step_equals_single_device_step():
  assert len(jax.devices()) == 8
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  psh = sharding.param_shardings(CFG, mesh)
  opt = make_optimizer(dict(learning_rate=1e-3, eps=1e-4, weight_decay=0.01, grad_accum_steps=1))
  batch = make_batch(8, seed=3)

  state_s = init_train_state(init_params(CFG, RNG), opt, mesh=mesh, param_shardings=psh)
  state_s, m_s = make_train_step(SFT, opt, mesh=mesh, param_shardings=psh)(state_s, batch, RNG)
  step_1 = make_train_step(SFT, opt)
  state_1, m_1 = step_1(init_train_state(params(), opt), batch, RNG)

  assert max_diff(state_s.params, state_1.params) < 1e-5
  assert max_diff(state_s.opt_state, state_1.opt_state) < 1e-5
  for k in ("loss", "grad_norm", "accuracy", "learning_rate"):
    assert float(m_s[k]) == pytest.approx(float(m_1[k]), rel=1e-5)
  # The state keeps its layout: params as the rules say, Adam moments like their params.
  assert state_s.params["layers"]["wq"].sharding.spec == psh["layers"]["wq"].spec
  mu = state_s.opt_state[1].inner_state[0].mu
  assert mu["layers"]["w_down"].sharding.spec == psh["layers"]["w_down"].spec
  # Without param_shardings the step keeps whatever layout the state already has.
  state_s, _ = make_train_step(SFT, opt, mesh=mesh)(state_s, batch, RNG)
  assert state_s.params["layers"]["wq"].sharding.spec == psh["layers"]["wq"].spec
  assert int(state_s.step) == 2

  # Forward-only eval (reference log-probs) on the mesh equals the unsharded one.
  eval_fn = lambda p, b: sequence_logprobs(p, CFG, b)[0]
  state_1, _ = step_1(state_1, batch, RNG)
  ref = make_eval_fn(eval_fn)(state_1.params, batch)
  out = make_eval_fn(eval_fn, mesh)(state_s.params, batch)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


# ---------------------------------------------------------------- RL epochs

def test_grpo_epochs_keep_old_logprobs():
  opt = make_optimizer(dict(learning_rate=1e-2, schedule="constant"))
  state = init_train_state(params(), opt)
  batch = make_batch(4, seed=5)
  old = np.asarray(make_eval_fn(lambda p, b: sequence_logprobs(p, CFG, b)[0])(state.params, batch))
  rollouts = dict(batch, advantages=np.array([1.0, -1.0, 0.5, -0.5], np.float32),
                  old_logprobs=old, ref_logprobs=old.copy())
  loss_fn = functools.partial(grpo_loss, model_cfg=CFG, config=GRPOConfig(beta=0.04))
  state, metrics = run_epochs(make_train_step(loss_fn, opt), state, rollouts, RNG, epochs=2,
                              minibatches_per_epoch=2, seed=0)
  assert len(metrics) == 4 and int(state.step) == 4
  assert float(metrics[0]["ratio_mean"]) == pytest.approx(1.0, abs=1e-5)
  assert float(metrics[0]["kl"]) == pytest.approx(0.0, abs=1e-5)
  assert abs(float(metrics[-1]["ratio_mean"]) - 1.0) > 1e-4  # the policy moved off pi_old
  assert float(metrics[-1]["approx_kl"]) > 0


def test_ppo_step_trains_value_head():
  opt = make_optimizer(dict(learning_rate=1e-2, schedule="constant"))
  p = {"model": params(), "value_head": init_value_head(CFG.d_model)}
  batch = make_batch(4, seed=6)
  logp, _, values = jax.jit(lambda p, b: ppo_forward(p, CFG, b))(p, batch)
  rewards = np.zeros(batch["tokens"].shape, np.float32)  # on each row's last response token
  rewards[np.arange(4), (batch["segment_ids"] > 0).sum(1) - 1] = [1.0, 0.0, 1.0, 0.0]
  adv, ret = gae(rewards, values, batch["loss_mask"], 1.0, 0.95)
  full = dict(batch, old_logprobs=logp, old_values=values, advantages=adv, returns=ret)
  step = make_train_step(functools.partial(ppo_loss, model_cfg=CFG, config=PPOConfig()), opt)
  state, m = step(init_train_state(p, opt), full, RNG)
  assert np.any(np.asarray(state.params["value_head"]["w"]) != 0)
  assert np.isfinite(float(m["vf_loss"])) and float(m["vf_loss"]) > 0


# ---------------------------------------------------------------- micro-batching

def test_micro_batches_from_a_per_device_token_budget():
  from reasoner.train import micro_batches_for
  assert micro_batches_for(16, 128, 0) == 1  # no budget
  assert micro_batches_for(16, 128, 16 * 128) == 1
  assert micro_batches_for(16, 128, 4 * 128) == 4
  assert micro_batches_for(16, 128, 5 * 128) == 4  # 16 / 4 = 4 rows fit, 8 do not
  assert micro_batches_for(12, 100, 250) == 6  # 2 rows per micro-batch; 3 would not divide 12
  assert micro_batches_for(16, 128, 10) == 16  # below one row: one row at a time
  mesh = sharding.make_mesh(data=2, fsdp=4, tensor=1)
  assert micro_batches_for(16, 128, 128, mesh) == 2  # 2 rows per device
  assert micro_batches_for(12, 128, 128, mesh) == 6  # 12 rows split over data (2) only: 6 per device


@pytest.mark.parametrize("on_mesh", [False, True])
def test_micro_batched_step_equals_the_whole_batch(on_mesh):
  """Rows with equal loss-token counts: the mean of micro-batch gradients is the batch gradient,
  so one SGD step lands on the same params (and reports the same loss)."""
  import optax
  batch = make_batch(16, seed=3, full=True)
  opt = optax.sgd(0.5)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2) if on_mesh else None
  shard = sharding.param_shardings(CFG, mesh) if on_mesh else None
  out = {}
  # micro_batches=4 explicitly, and from a budget of 2 rows of 16 tokens per device at a time
  # (16 rows: 8 micro-batches on one device; 4 rows per device on the mesh: 2).
  for name, kw in (("whole", {}), ("m4", dict(micro_batches=4)),
                   ("budget", dict(tokens_per_device=32))):
    p = params()
    if on_mesh:
      p = sharding.shard_params(p, CFG, mesh)
    state = init_train_state(p, opt, mesh=mesh, param_shardings=shard)
    step = make_train_step(SFT, opt, mesh=mesh, param_shardings=shard, **kw)
    state, metrics = step(state, batch, RNG)
    out[name] = (jax.device_get(state.params), float(metrics["loss"]))
  for name in ("m4", "budget"):
    assert out[name][1] == pytest.approx(out["whole"][1], rel=1e-5)
    assert max_diff(out[name][0], out["whole"][0]) < 1e-5


def _one_step(loss, batch, on_mesh=False, seed=0, **kw):
  """(params after one SGD(0.5) step, metrics) of `loss` on `batch`, on one device or a 2x2x2 mesh."""
  import optax
  opt = optax.sgd(0.5)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2) if on_mesh else None
  shard = sharding.param_shardings(CFG, mesh) if on_mesh else None
  p = params(seed)
  if on_mesh:
    p = sharding.shard_params(p, CFG, mesh)
  state = init_train_state(p, opt, mesh=mesh, param_shardings=shard)
  step = make_train_step(loss, opt, mesh=mesh, param_shardings=shard, **kw)
  state, metrics = step(state, batch, RNG)
  return jax.device_get(state.params), jax.device_get(metrics)


@pytest.mark.parametrize("on_mesh", [False, True])
def test_micro_batches_with_unequal_loss_tokens_equal_the_whole_batch(on_mesh):
  """Rows with different loss-token counts (packed SFT rows never hold equal counts): each
  micro-batch weighs by its loss tokens, so the update, the loss, the token-mean accuracy and the
  token count are the whole batch's."""
  batch = make_batch(16, seed=5)
  counts = batch["loss_mask"].sum(axis=1)
  assert len(set(counts.tolist())) > 2
  whole_p, whole_m = _one_step(SFT, batch, on_mesh)
  assert "loss_weight" not in whole_m
  assert float(whole_m["n_tokens"]) == counts.sum()
  for kw in (dict(micro_batches=4), dict(tokens_per_device=32)):
    p, m = _one_step(SFT, batch, on_mesh, **kw)
    assert set(m) == set(whole_m)
    assert float(m["n_tokens"]) == counts.sum()  # a count: summed, not averaged
    for key in ("loss", "accuracy"):
      assert float(m[key]) == pytest.approx(float(whole_m[key]), rel=1e-5), key
    assert max_diff(p, whole_p) < 1e-5


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean", "constant"])
def test_micro_batched_grpo_equals_the_whole_batch_for_every_aggregation(loss_agg):
  """GRPO's three aggregations are means over tokens, over sequences with tokens, over rows: the
  loss reports which, and micro-batches weighted by it reproduce the whole batch (one row has
  no loss tokens, so the sequence counts differ between micro-batches too)."""
  batch = dict(make_batch(8, seed=6))
  batch["loss_mask"] = batch["loss_mask"].copy()
  batch["loss_mask"][2] = 0
  batch["advantages"] = np.random.default_rng(1).normal(size=8).astype(np.float32)
  loss = functools.partial(grpo_loss, model_cfg=CFG, config=GRPOConfig(
      beta=0.0, loss_agg=loss_agg, constant_norm=12.0 if loss_agg == "constant" else None))
  whole_p, whole_m = _one_step(loss, batch)
  p, m = _one_step(loss, batch, micro_batches=4)
  assert float(m["loss"]) == pytest.approx(float(whole_m["loss"]), rel=1e-5, abs=1e-7)
  assert float(m["n_tokens"]) == float(whole_m["n_tokens"])
  assert max_diff(p, whole_p) < 1e-5


def test_micro_batches_split_every_row_group():
  """A batch of row groups of different sizes (GRPO's rows and its SFT replay rows): the count
  divides each group's rows on every device and keeps all their tokens within the budget."""
  from reasoner.stages.grpo import with_replay
  from reasoner.train import micro_batches_of
  batch = {**make_batch(12, seed=1), "replay": make_batch(16, seed=2)}  # 28 rows x 16 tokens
  assert micro_batches_of(batch, 0) == 1
  assert micro_batches_of(batch, 28 * 16) == 1
  assert micro_batches_of(batch, 14 * 16) == 2
  assert micro_batches_of(batch, 8 * 16) == 4  # gcd(12, 16) = 4: 3 + 4 rows at a time
  assert micro_batches_of(batch, 1) == 4  # the most it can split
  mesh = sharding.make_mesh(data=2, fsdp=4, tensor=1)
  # 12 rows split over data only (6 a device), 16 over data x fsdp (2 a device): m divides 2.
  assert micro_batches_of(batch, 1, mesh) == 2
  with pytest.raises(ValueError, match="scalar"):
    micro_batches_of({**make_batch(4), "scale": np.float32(1.0)}, 16)
  loss = with_replay(SFT, 0.5, CFG)
  _, whole = _one_step(loss, batch)
  _, m = _one_step(loss, batch, tokens_per_device=8 * 16)
  assert float(m["n_tokens"]) == float(whole["n_tokens"])
  assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["replay_loss"]))


def test_batch_tokens_counts_every_tokens_leaf():
  from reasoner.train.step import batch_tokens
  pair = {"chosen": make_batch(4), "rejected": make_batch(4), "ref": np.zeros(4)}
  assert batch_tokens(pair) == (4, 32)
  assert batch_tokens(make_batch(6)) == (6, 16)
  with pytest.raises(ValueError, match="tokens"):
    batch_tokens({"x": np.zeros((2, 3))})


def test_micro_batches_must_divide_the_rows():
  import optax
  step = make_train_step(SFT, optax.sgd(0.1), micro_batches=3)
  with pytest.raises(ValueError, match="micro_batches=3 must divide"):
    step(init_train_state(params(), optax.sgd(0.1)), make_batch(8), RNG)


def test_micro_batching_cuts_compiled_activation_memory():
  import optax
  from reasoner.train.state import TrainState
  from reasoner.train.step import train_step_fn
  cfg = CFG.replace(remat=False, max_seq_len=256)
  loss = functools.partial(sft_loss, model_cfg=cfg)
  opt = optax.sgd(0.1)
  p = jax.eval_shape(lambda: init_params(cfg, RNG))
  state = jax.eval_shape(lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                              opt_state=opt.init(p)), p)
  b = {k: jax.ShapeDtypeStruct((32, 256), jnp.float32 if k == "loss_mask" else jnp.int32)
       for k in ("tokens", "positions", "segment_ids", "loss_mask")}
  temp = lambda m: (jax.jit(train_step_fn(loss, opt, m)).lower(state, b, RNG).compile()
                    .memory_analysis().temp_size_in_bytes)
  assert temp(8) < temp(1) / 3


# ---------------------------------------------------------------- non-finite steps

def test_non_finite_loss_or_gradient_skips_the_update():
  opt = make_optimizer(dict(learning_rate=1e-2, schedule="constant"))
  state = init_train_state(params(), opt)
  batch = make_batch(4, seed=7)

  def loss_fn(p, b, rng):
    loss, metrics = sft_loss(p, b, rng, model_cfg=CFG)
    return loss * b["scale"][0], metrics

  step = make_train_step(loss_fn, opt)  # donates the state: compare host copies
  ones = dict(batch, scale=np.ones(4, np.float32))
  start = jax.device_get(state.params)
  good, m = step(state, ones, RNG)
  assert float(m["skipped"]) == 0 and max_diff(good.params, start) > 0
  good_host = jax.device_get((good.params, good.opt_state))
  out = good
  for bad in (np.nan, np.inf):
    out, m = step(out, dict(batch, scale=np.full(4, bad, np.float32)), RNG)
    assert float(m["skipped"]) == 1
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 (out.params, out.opt_state), good_host)
  # A finite step after skipped ones trains as if they never happened.
  again, _ = step(out, ones, RNG)
  ref, _ = step(init_train_state(good_host[0], opt).replace(opt_state=good_host[1]), ones, RNG)
  assert max_diff(again.params, ref.params) == 0


def test_train_loop_stops_on_a_run_of_skips_and_never_saves_non_finite_params(tmp_path):
  from reasoner.checkpoint import CheckpointManager
  from reasoner.io import MetricsWriter
  from reasoner.stages.loop import NonFiniteError, train_loop

  opt = make_optimizer(dict(learning_rate=1e-2, schedule="constant"))
  state = init_train_state(params(), opt)
  writer = MetricsWriter(str(tmp_path), tensorboard=False)

  def step_fn(bad_from, poison=False):
    def fn(state, step, rng):
      if step < bad_from:
        return state.replace(params=jax.tree.map(lambda x: x + 1.0, state.params)), {"skipped": 0.0}
      if poison:  # an update that slipped through with a finite gradient but broke the params
        return state.replace(params=jax.tree.map(lambda x: x * np.inf, state.params)), {"skipped": 0.0}
      return state, {"skipped": 1.0}
    return fn

  with pytest.raises(NonFiniteError, match="3 non-finite steps in a row"):
    train_loop("s", state, step_fn(4), 20, stage_dir=str(tmp_path / "a"), writer=writer, rng=RNG,
               log_every=1, checkpoint_every=2, max_skipped=3)
  assert CheckpointManager(tmp_path / "a" / "ckpt").latest_step() == 6  # skipped steps keep params
  rows = [r for r in writer.read("s")]
  assert [r["skipped_steps"] for r in rows] == [0, 0, 0, 0, 1, 2]
  with pytest.raises(NonFiniteError, match="not finite at step 4"):
    train_loop("t", state, step_fn(3, poison=True), 20, stage_dir=str(tmp_path / "b"),
               writer=writer, rng=RNG, log_every=1, checkpoint_every=2)
  assert CheckpointManager(tmp_path / "b" / "ckpt").latest_step() == 2


def test_train_loop_logs_step_time_and_tokens_per_second(tmp_path):
  from reasoner.io import MetricsWriter
  from reasoner.stages.loop import train_loop

  opt = make_optimizer(dict(learning_rate=1e-2, schedule="constant"))
  writer = MetricsWriter(str(tmp_path), tensorboard=False)

  def step_fn(state, step, rng):
    time.sleep(0.05)
    return state, {"loss": 1.0, "n_tokens": 100.0, "skipped": 0.0}

  train_loop("s", init_train_state(params(), opt), step_fn, 4, stage_dir=str(tmp_path / "s"),
             writer=writer, rng=RNG, log_every=2, checkpoint_every=100)
  rows = writer.read("s")
  assert [r["step"] for r in rows] == [2, 4]
  for r in rows:
    assert 0.05 <= r["time/step_s"] < 5 and r["tokens_per_s"] == pytest.approx(100 / r["time/step_s"],
                                                                               rel=0.05)
    assert r["skipped_steps"] == 0
