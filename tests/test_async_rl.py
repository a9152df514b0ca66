"""Async actor-learner GRPO: the importance-corrected loss against NumPy, the actor's staleness
bound under random timing, and the stage end to end (equal to the synchronous stage at
max_staleness 0, resumable, on a split mesh)."""

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.pipeline import tiny
from reasoner import sharding
from reasoner.losses import GRPOConfig, grpo_objective
from reasoner.losses.off_policy import off_policy_grpo_objective
from reasoner.model import ModelConfig
from reasoner.pipeline.config_check import validate_config
from reasoner.io.metrics_log import MetricsWriter
from reasoner.stages.actor import PolicyActor
from reasoner.stages.async_grpo import run_async_grpo
from reasoner.stages.context import StageContext
from reasoner.stages.grpo import run_grpo

# ---------------------------------------------------------------- the loss


def np_off_policy(logp, prox, behav, ref, adv, mask, c: GRPOConfig, is_clip):
  """(loss, d loss / d logp, truncated weights) in float64 from the formula."""
  logp, prox, behav, ref = (x.astype(np.float64) for x in (logp, prox, behav, ref))
  a = adv[:, None].astype(np.float64)
  w = np.minimum(np.exp(prox - behav), is_clip)
  r = np.exp(logp - prox)
  unclipped, clipped = -a * r, -a * np.clip(r, 1 - c.epsilon_low, 1 + c.epsilon_high)
  pg = w * np.maximum(unclipped, clipped)
  dpg = w * np.where(clipped > unclipped, 0.0, -a * r)
  kl, dkl = np.exp(ref - logp) - (ref - logp) - 1, -np.exp(ref - logp) + 1  # k3
  tok, dtok = pg + c.beta * kl, dpg + c.beta * dkl
  if c.loss_agg == "token_mean":
    agg = mask / mask.sum()
  elif c.loss_agg == "seq_mean":
    agg = mask / mask.sum(1, keepdims=True) / logp.shape[0]
  else:
    agg = mask / (logp.shape[0] * c.constant_norm)
  return (tok * agg).sum(), dtok * agg, w


def loss_inputs(seed, b=6, t=11):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.1, 3.0, (b, t)).astype(np.float32)
  prox = (logp + rng.normal(0, 0.3, (b, t))).astype(np.float32)
  behav = (prox + rng.normal(0, 0.6, (b, t))).astype(np.float32)  # some weights above the clip
  ref = (logp + rng.normal(0, 0.3, (b, t))).astype(np.float32)
  adv = rng.normal(size=b).astype(np.float32)
  mask = (np.arange(t)[None] < rng.integers(3, t, b)[:, None]).astype(np.float32)
  mask[:, 0] = 0
  return logp, prox, behav, ref, adv, mask


@pytest.mark.parametrize("loss_agg", ["seq_mean", "token_mean", "constant"])
def test_off_policy_objective_and_gradient_match_numpy(loss_agg):
  c = GRPOConfig(epsilon_low=0.2, epsilon_high=0.28, beta=0.04, loss_agg=loss_agg,
                 constant_norm=16)
  logp, prox, behav, ref, adv, mask = loss_inputs(0)
  is_clip = 1.5
  f = lambda lp: off_policy_grpo_objective(lp, prox, behav, ref, adv, mask, c, is_clip)
  (loss, m), grad = jax.value_and_grad(f, has_aux=True)(logp)
  ref_loss, ref_grad, w = np_off_policy(logp, prox, behav, ref, adv, mask, c, is_clip)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)
  truncated = (np.exp(prox - behav) > is_clip) & (mask > 0)
  assert 0 < truncated.sum() < mask.sum()  # the inputs exercise both sides of the truncation
  n = mask.sum()
  np.testing.assert_allclose(m["is_weight_mean"], (w * mask).sum() / n, rtol=1e-5)
  np.testing.assert_allclose(m["is_truncated_frac"], truncated.sum() / n, atol=1e-6)
  d = prox.astype(np.float64) - behav
  np.testing.assert_allclose(m["behaviour_kl"], ((np.exp(d) - 1 - d) * mask).sum() / n, rtol=1e-4)
  # No gradient flows into the proximal or behaviour log-probs through the weights.
  g_b = jax.grad(lambda b: off_policy_grpo_objective(logp, prox, b, ref, adv, mask, c, is_clip)[0])(behav)
  assert not np.any(np.asarray(g_b))


@pytest.mark.parametrize("is_clip", [1.0, 2.0])
def test_equals_grpo_when_behaviour_is_the_proximal_policy(is_clip):
  c = GRPOConfig(epsilon_low=0.2, epsilon_high=0.28, beta=0.04, loss_agg="token_mean")
  logp, prox, _, ref, adv, mask = loss_inputs(1)
  off = lambda lp: off_policy_grpo_objective(lp, prox, prox, ref, adv, mask, c, is_clip)
  on = lambda lp: grpo_objective(lp, prox, ref, adv, mask, c)
  (l_off, m_off), g_off = jax.value_and_grad(off, has_aux=True)(logp)
  (l_on, m_on), g_on = jax.value_and_grad(on, has_aux=True)(logp)
  assert float(l_off) == float(l_on)
  np.testing.assert_array_equal(g_off, g_on)
  for k, v in m_on.items():
    assert float(m_off[k]) == float(v), k
  assert float(m_off["is_weight_mean"]) == 1.0 and float(m_off["is_truncated_frac"]) == 0.0
  with pytest.raises(ValueError, match="is_clip must be >= 1"):
    off_policy_grpo_objective(logp, prox, prox, ref, adv, mask, c, 0.5)


# ---------------------------------------------------------------- the actor


@pytest.mark.parametrize("max_staleness,first", [(0, 0), (1, 0), (2, 0), (2, 3)])
def test_actor_respects_the_staleness_bound_under_random_timing(max_staleness, first):
  """Random sleeps on both sides; the learner donates its params right after publishing them."""
  end = first + 8
  rng = np.random.default_rng(max_staleness)
  delays = rng.uniform(0, 0.02, (2, end))
  completed = [first]  # learner steps done
  ahead, lock = [], threading.Lock()

  def produce(params, step):
    with lock:
      ahead.append(step - completed[0])  # how far ahead of the learner's current step
    time.sleep(delays[0, step])
    return int(params["v"]), float(jnp.sum(params["w"]))  # reads the snapshot's buffers

  donate = jax.jit(lambda p: jax.tree.map(lambda x: x + 1, p), donate_argnums=0)
  params = {"v": jnp.asarray(first), "w": jnp.full((4,), float(first))}
  actor = PolicyActor(produce, max_staleness, poll_s=0.005)
  t0 = time.perf_counter()
  actor.start(params, first, end)
  seen = []
  try:
    for step in range(first, end):
      out = actor.get(step)
      seen.append((step, out.version, *out.data))
      time.sleep(delays[1, step])
      params = donate(params)  # version step + 1; the old buffers are gone
      with lock:
        completed[0] = step + 1
      actor.publish(step + 1, params)
  finally:
    actor.close()
  elapsed = time.perf_counter() - t0
  busy, blocked = actor.clock()  # the thread's time accounting adds up
  assert busy >= delays[0, first:end].sum() and busy + blocked <= elapsed
  for step, version, v_in_snapshot, w_sum in seen:
    assert version == max(step - max_staleness, first)  # the version the schedule promises
    assert 0 <= step - version <= max_staleness
    assert v_in_snapshot == version and w_sum == 4.0 * version  # the snapshot is that version
  assert max(ahead) <= max_staleness and min(ahead) >= 0
  assert not actor._snapshots


def test_actor_errors_reach_the_learner_and_close_does_not_hang():
  def produce(params, step):
    if step == 2:
      raise ZeroDivisionError("boom")
    return step

  actor = PolicyActor(produce, 1, poll_s=0.005)
  actor.start({"v": jnp.zeros(())}, 0, 5)
  assert actor.get(0).data == 0
  actor.publish(1, {"v": jnp.ones(())})
  assert actor.get(1).data == 1
  with pytest.raises(RuntimeError, match="failed at step 2") as err:
    actor.get(2)
  assert isinstance(err.value.__cause__, ZeroDivisionError)
  actor.close()
  # An actor blocked on a version that will never be published stops on close.
  blocked = PolicyActor(lambda p, s: s, 0, poll_s=0.005)
  blocked.start({"v": jnp.zeros(())}, 0, 3)
  assert blocked.get(0).data == 0
  blocked.close()
  assert not blocked._thread.is_alive()
  with pytest.raises(ValueError, match="max_staleness must be an integer >= 0"):
    PolicyActor(lambda p, s: s, -1)


def test_config_validation():
  cfg = tiny()
  validate_config(cfg)
  assert cfg.grpo.async_rl.enabled is False and cfg.grpo.async_rl.max_staleness == 1
  for key, value, msg in [("max_staleness", -1, "max_staleness must be >= 0"),
                          ("actor_devices", -2, "actor_devices must be >= 0"),
                          ("is_clip", 0.5, "is_clip must be >= 1")]:
    cfg = tiny()
    cfg.grpo.async_rl[key] = value
    with pytest.raises(ValueError, match=f"config.grpo.async_rl.{msg}"):
      validate_config(cfg)


# ---------------------------------------------------------------- the stage


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
  """Every stage run builds its jitted steps afresh and compiling dominates these tests, so the
  module's identical programs load from a disk cache (the setting is restored afterwards)."""
  from jax.experimental.compilation_cache import compilation_cache
  keys = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla_cache")),
          "jax_persistent_cache_min_compile_time_secs": 0.0,
          "jax_persistent_cache_min_entry_size_bytes": -1}
  old = {k: getattr(jax.config, k) for k in keys}
  compilation_cache.reset_cache()
  for k, v in keys.items():
    jax.config.update(k, v)
  yield
  for k, v in old.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


MODEL = ModelConfig(vocab_size=384, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                    d_ff=64, max_seq_len=128)


@pytest.fixture
def tokenizer(arith_tokenizer):
  return arith_tokenizer


def grpo_cfg(steps, max_staleness=0, enabled=True, actor_devices=0):
  cfg = tiny()
  cfg.grpo.update(dict(steps=steps, prompts_per_step=4, group_size=4, max_new_tokens=16,
                       epochs=2, minibatches=2, dynamic_sampling=False))
  cfg.grpo.loss.beta = 0.04
  # A random model rarely stops, so lengths tie; the language reward varies per sample, so
  # advantages (and updates) are non-zero. A high learning rate makes staleness visible.
  cfg.grpo.reward.w_lang = 1.0
  cfg.grpo.optim.learning_rate = 3e-3
  cfg.grpo.async_rl.update(dict(enabled=enabled, max_staleness=max_staleness,
                                actor_devices=actor_devices))
  cfg.log_every = 1
  cfg.checkpoint_every = 100
  return cfg


def run(cfg, workdir, tokenizer, n_devices=1):
  mesh = sharding.make_mesh(1, -1, 1, devices=jax.devices()[:n_devices])
  params = sharding.sharded_init(MODEL, jax.random.PRNGKey(0), mesh)
  ctx = StageContext(cfg, str(workdir), mesh, MODEL, tokenizer,
                     MetricsWriter(str(workdir), tensorboard=False))
  fn = run_async_grpo if cfg.grpo.async_rl.enabled else run_grpo
  new = fn(ctx, params, jax.random.PRNGKey(1))
  return params, new, ctx.writer.read("grpo")


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_zero_staleness_reproduces_the_synchronous_stage_and_resumes(tmp_path, tokenizer):
  _, sync, sync_rows = run(grpo_cfg(3, enabled=False), tmp_path / "sync", tokenizer)
  # The async run is "killed" after step 2 (its last checkpoint) and rerun to step 3.
  run(grpo_cfg(2), tmp_path / "async", tokenizer)
  init, resumed, rows = run(grpo_cfg(3), tmp_path / "async", tokenizer)
  assert [r["step"] for r in rows] == [1, 2, 3]
  for a, b in zip(leaves(sync), leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert any(np.any(a != b) for a, b in zip(leaves(sync), leaves(init)))
  for s, a in zip(sync_rows, rows):
    for key in ("loss", "reward", "kl", "ratio_mean", "grad_norm"):
      assert a[key] == s[key], (a["step"], key)
    assert a["async/staleness"] == 0 and a["is_weight_mean"] == 1.0


def test_stale_rollouts_train_with_importance_weights(tmp_path, tokenizer):
  init, new, rows = run(grpo_cfg(4, max_staleness=2), tmp_path, tokenizer)
  assert [r["async/staleness"] for r in rows] == [0, 1, 2, 2]
  for r in rows:
    assert all(np.isfinite(v) for k, v in r.items() if isinstance(v, float)), r
  fresh, stale = rows[0], rows[2:]
  assert fresh["behaviour_kl"] == 0.0 and fresh["is_weight_mean"] == 1.0
  # Samples from an older policy: the proximal and behaviour log-probs differ.
  assert all(r["behaviour_kl"] > 1e-6 and r["is_weight_mean"] != 1.0 for r in stale)
  assert all(r["time/rollout_s"] > 0 and r["time/learn_s"] > 0 for r in rows)
  assert any(np.any(a != b) for a, b in zip(leaves(new), leaves(init)))


def test_actor_on_its_own_devices(tmp_path, tokenizer):
  assert len(jax.devices()) == 8
  cfg = grpo_cfg(2, max_staleness=1, actor_devices=4)
  cfg.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  init, new, rows = run(cfg, tmp_path, tokenizer, n_devices=8)
  assert [r["async/staleness"] for r in rows] == [0, 1]
  assert all(np.isfinite(r["loss"]) and np.isfinite(r["behaviour_kl"]) for r in rows)
  # The result comes back on the stage's mesh, changed by training.
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(init)):
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
  assert any(np.any(a != b) for a, b in zip(leaves(new), leaves(init)))
