"""Losses against straightforward NumPy references on random inputs, plus the model wrappers."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from reasoner import losses
from reasoner.losses import (DPOConfig, GRPOConfig, PPOConfig, dpo_objective,
                             filter_zero_variance_groups, full_reverse_kl, gae, group_advantages,
                             grpo_objective, on_policy_distill_objective, ppo_objective,
                             token_entropy, token_logprobs)
from reasoner.model import ModelConfig, forward, init_params
from reasoner.train import pad_sequences

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  d_ff=64, max_seq_len=32)


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def rand(shape, seed, scale=1.0):
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


# ---------------------------------------------------------------- log-probs and entropy

def test_token_logprobs_and_entropy_match_numpy_with_alignment_and_segments():
  logits = rand((3, 7, 11), 0, 3.0)
  tokens = np.random.default_rng(1).integers(0, 11, (3, 7))
  seg = np.array([[1, 1, 1, 2, 2, 2, 0], [1] * 7, [1, 1, 0, 0, 0, 0, 0]])
  ls = np_log_softmax(logits.astype(np.float64))
  ref_lp = np.zeros((3, 7))
  ref_ent = np.zeros((3, 7))
  for b in range(3):
    for t in range(1, 7):
      if seg[b, t] != 0 and seg[b, t] == seg[b, t - 1]:
        ref_lp[b, t] = ls[b, t - 1, tokens[b, t]]
        ref_ent[b, t] = -(np.exp(ls[b, t - 1]) * ls[b, t - 1]).sum()
  np.testing.assert_allclose(token_logprobs(logits, tokens, seg), ref_lp, atol=1e-5)
  np.testing.assert_allclose(token_entropy(logits, seg), ref_ent, atol=1e-5)
  # Without segment ids every position t >= 1 is predicted; position 0 is always 0.
  full = np.asarray(token_logprobs(logits, tokens))
  assert np.all(full[:, 0] == 0)
  np.testing.assert_allclose(full[:, 1:], np.take_along_axis(ls[:, :-1], tokens[:, 1:, None], -1)[..., 0],
                             atol=1e-5)
  with pytest.raises(ValueError, match="disagree on"):
    token_logprobs(logits, tokens[:, :5])


# ---------------------------------------------------------------- GRPO advantages

def test_group_advantages_worked_example():
  np.testing.assert_allclose(group_advantages(np.array([1.0, 0.0, 1.0, 0.0]), 4),
                             [0.866, -0.866, 0.866, -0.866], atol=1e-3)
  assert np.all(np.asarray(group_advantages(np.array([1.0, 1.0, 1.0, 1.0]), 4)) == 0.0)
  # Equal rewards whose float mean is inexact still give exactly zero.
  assert np.all(np.asarray(group_advantages(np.full(3, 0.1), 3)) == 0.0)


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_advantages_match_numpy(scale_by_std):
  r = np.random.default_rng(0).normal(size=12)
  g = r.reshape(3, 4)
  ref = g - g.mean(1, keepdims=True)
  if scale_by_std:
    ref = ref / (g.std(1, ddof=1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(group_advantages(r, 4, scale_by_std), ref.reshape(-1), rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(ValueError, match="multiple of group_size=5"):
    group_advantages(r, 5)


def test_filter_zero_variance_groups():
  keep = filter_zero_variance_groups(np.array([1, 1, 0, 1, 2, 2, 2, 2, 0, 0, 0, 1]), 4)
  np.testing.assert_array_equal(keep, [True] * 4 + [False] * 4 + [True] * 4)


# ---------------------------------------------------------------- GRPO objective

def np_grpo(logp, old, ref, adv, mask, c: GRPOConfig):
  """Returns (loss, d loss / d logp) computed in float64 with explicit formulas."""
  logp, old, ref = (x.astype(np.float64) for x in (logp, old, ref))
  a = adv[:, None].astype(np.float64)
  r = np.exp(logp - old)
  lo, hi = 1 - c.epsilon_low, 1 + c.epsilon_high
  unclipped, clipped = -a * r, -a * np.clip(r, lo, hi)
  pg = np.maximum(unclipped, clipped)
  dpg = np.where(clipped > unclipped, 0.0, -a * r)
  if c.kl_estimator == "k1":
    kl, dkl = logp - ref, np.ones_like(logp)
  else:
    kl, dkl = np.exp(ref - logp) - (ref - logp) - 1, -np.exp(ref - logp) + 1
  tok, dtok = pg + c.beta * kl, dpg + c.beta * dkl
  b = logp.shape[0]
  if c.loss_agg == "token_mean":
    w = mask / mask.sum()
  elif c.loss_agg == "seq_mean":
    w = mask / mask.sum(1, keepdims=True) / b
  else:
    w = mask / (b * c.constant_norm)
  return (tok * w).sum(), dtok * w


def grpo_inputs(seed, b=4, t=9):
  rng = np.random.default_rng(seed)
  logp = -rng.uniform(0.1, 3.0, (b, t)).astype(np.float32)
  old = (logp + rng.normal(0, 0.3, (b, t))).astype(np.float32)
  ref = (logp + rng.normal(0, 0.3, (b, t))).astype(np.float32)
  adv = rng.normal(size=b).astype(np.float32)
  lengths = rng.integers(2, t, b)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  mask[:, 0] = 0
  return logp, old, ref, adv, mask


@pytest.mark.parametrize("loss_agg", ["seq_mean", "token_mean", "constant"])
@pytest.mark.parametrize("kl_estimator", ["k1", "k3"])
def test_grpo_objective_and_gradient_match_numpy(loss_agg, kl_estimator):
  c = GRPOConfig(epsilon_low=0.2, epsilon_high=0.28, beta=0.04, kl_estimator=kl_estimator,
                 loss_agg=loss_agg, constant_norm=16)
  logp, old, ref, adv, mask = grpo_inputs(0)
  f = lambda lp: grpo_objective(lp, old, ref, adv, mask, c)
  (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(logp)
  ref_loss, ref_grad = np_grpo(logp, old, ref, adv, mask, c)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)
  assert np.all(np.isfinite(grad))
  r = np.exp(logp - old)
  a = adv[:, None]
  n = mask.sum()
  np.testing.assert_allclose(metrics["clip_frac_low"], ((a < 0) & (r < 0.8) & (mask > 0)).sum() / n,
                             atol=1e-6)
  np.testing.assert_allclose(metrics["clip_frac_high"],
                             ((a > 0) & (r > 1.28) & (mask > 0)).sum() / n, atol=1e-6)
  np.testing.assert_allclose(metrics["ratio_mean"], (r * mask).sum() / n, rtol=1e-5)


@pytest.mark.parametrize("loss_agg", ["seq_mean", "token_mean"])
@pytest.mark.parametrize("coef", [-0.3, 0.1])
def test_grpo_entropy_coef_subtracts_the_aggregated_entropy(loss_agg, coef):
  logp, old, ref, adv, mask = grpo_inputs(5)
  ent = np.random.default_rng(6).uniform(0, 2, logp.shape).astype(np.float32)
  c0 = GRPOConfig(beta=0.04, loss_agg=loss_agg)
  c = dataclasses.replace(c0, entropy_coef=coef)
  f = lambda lp, e: grpo_objective(lp, old, ref, adv, mask, c, entropy=e)[0]
  loss, (g_logp, g_ent) = jax.value_and_grad(f, argnums=(0, 1))(logp, ent)
  base, base_grad = np_grpo(logp, old, ref, adv, mask, c0)
  # np_grpo's gradient with unit token losses is the aggregation weight of each token.
  _, w = np_grpo(np.zeros_like(logp), np.zeros_like(logp), np.zeros_like(logp),
                 -np.ones_like(adv), mask, dataclasses.replace(c0, beta=0.0))
  np.testing.assert_allclose(loss, base - coef * (ent * w).sum(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_logp, base_grad, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(g_ent, -coef * w, rtol=1e-5, atol=1e-8)
  with pytest.raises(ValueError, match="entropy"):
    grpo_objective(logp, old, ref, adv, mask, c)


def test_grpo_on_policy_gradient_is_advantage_weighted_score():
  logp, _, ref, adv, mask = grpo_inputs(1)
  c = GRPOConfig(beta=0.0, loss_agg="token_mean")
  (loss, m), grad = jax.value_and_grad(
      lambda lp: grpo_objective(lp, None, None, adv, mask, c), has_aux=True)(logp)
  np.testing.assert_allclose(grad, -adv[:, None] * mask / mask.sum(), rtol=1e-5, atol=1e-7)
  assert float(m["ratio_mean"]) == pytest.approx(1.0)
  assert float(m["clip_frac"]) == 0.0 and float(m["kl"]) == 0.0
  with pytest.raises(ValueError, match="needs ref_logprobs"):
    grpo_objective(logp, None, None, adv, mask, GRPOConfig(beta=0.1))


def test_grpo_aggregation_modes_relate_as_expected():
  logp, old, ref, adv, _ = grpo_inputs(2)
  mask = (np.arange(9)[None] < np.array([3, 4, 9, 6])[:, None]).astype(np.float32)
  mask[:, 0] = 0
  loss = {agg: float(grpo_objective(logp, old, ref, adv, mask,
                                    GRPOConfig(loss_agg=agg, constant_norm=20))[0])
          for agg in ("seq_mean", "token_mean", "constant")}
  b, n = mask.shape[0], mask.sum()
  # Dr.GRPO's constant normaliser is the token sum over b * constant_norm.
  assert loss["constant"] == pytest.approx(loss["token_mean"] * n / (b * 20), rel=1e-5)
  # Unequal lengths: per-sequence means weight the tokens of short sequences more.
  assert abs(loss["seq_mean"] - loss["token_mean"]) > 1e-4
  equal = np.zeros_like(mask)
  equal[:, 1:6] = 1
  same = [float(grpo_objective(logp, old, ref, adv, equal, GRPOConfig(loss_agg=agg))[0])
          for agg in ("seq_mean", "token_mean")]
  assert same[0] == pytest.approx(same[1], rel=1e-5)


def test_clip_higher_is_asymmetric():
  # One token per sequence: ratios 1.25 (positive advantage) and 0.75 (negative advantage).
  old = np.zeros((2, 2), np.float32)
  logp = np.array([[0, np.log(1.25)], [0, np.log(0.75)]], np.float32)
  adv = np.array([1.0, -1.0], np.float32)
  mask = np.array([[0, 1], [0, 1]], np.float32)

  def grads(eps_high):
    c = GRPOConfig(epsilon_low=0.2, epsilon_high=eps_high, beta=0.0, loss_agg="token_mean")
    (_, m), g = jax.value_and_grad(lambda lp: grpo_objective(lp, old, None, adv, mask, c),
                                   has_aux=True)(logp)
    return np.asarray(g)[:, 1], m

  g_sym, m_sym = grads(0.2)
  g_high, m_high = grads(0.28)
  assert g_sym[0] == 0.0 and float(m_sym["clip_frac_high"]) == 0.5  # 1.25 > 1.2: clipped
  assert g_high[0] < 0 and float(m_high["clip_frac_high"]) == 0.0  # 1.25 < 1.28: still learns
  assert g_sym[1] == 0.0 and g_high[1] == 0.0  # 0.75 < 0.8 clipped on the low side in both
  assert float(m_sym["clip_frac_low"]) == float(m_high["clip_frac_low"]) == 0.5


def test_config_validation():
  with pytest.raises(ValueError, match="unknown kl_estimator 'k2'"):
    GRPOConfig(kl_estimator="k2")
  with pytest.raises(ValueError, match="needs a positive constant_norm"):
    GRPOConfig(loss_agg="constant")
  with pytest.raises(ValueError, match=r"unknown GRPOConfig field\(s\) \['betta'\]"):
    GRPOConfig.from_dict({"betta": 0.1})
  with pytest.raises(ValueError, match="unknown DPO loss_type"):
    DPOConfig(loss_type="hinge")
  assert GRPOConfig.from_dict({"epsilon_high": 0.28}).epsilon_high == 0.28


# ---------------------------------------------------------------- DPO

@pytest.mark.parametrize("loss_type,ls", [("sigmoid", 0.0), ("sigmoid", 0.1), ("ipo", 0.0)])
def test_dpo_objective_matches_numpy(loss_type, ls):
  rng = np.random.default_rng(3)
  pc, pr, rc, rr = (rng.normal(-20, 3, 6).astype(np.float32) for _ in range(4))
  c = DPOConfig(beta=0.2, loss_type=loss_type, label_smoothing=ls)
  loss, m = dpo_objective(pc, pr, rc, rr, c)
  h = (pc - rc).astype(np.float64) - (pr - rr)
  logsig = lambda x: -np.log1p(np.exp(-x))
  if loss_type == "sigmoid":
    ref = np.mean(-(1 - ls) * logsig(0.2 * h) - ls * logsig(-0.2 * h))
  else:
    ref = np.mean((h - 1 / (2 * 0.2)) ** 2)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  cr, rj = 0.2 * (pc - rc), 0.2 * (pr - rr)
  np.testing.assert_allclose(m["reward_accuracy"], np.mean(cr > rj), atol=1e-6)
  np.testing.assert_allclose(m["reward_margin"], np.mean(cr - rj), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["chosen_reward"], np.mean(cr), rtol=1e-5, atol=1e-6)
  g = jax.grad(lambda x: dpo_objective(x, pr, rc, rr, c)[0])(pc)
  assert np.all(np.isfinite(g))
  if loss_type == "sigmoid" and ls == 0:
    assert np.all(g < 0)  # raising the chosen log-prob always lowers the sigmoid loss


# ---------------------------------------------------------------- distillation

def test_on_policy_distill_objective_is_reverse_kl_policy_gradient():
  logp, _, teacher, _, mask = grpo_inputs(4)
  (loss, m), grad = jax.value_and_grad(
      lambda lp: on_policy_distill_objective(lp, teacher, mask), has_aux=True)(logp)
  n = mask.sum()
  kl = ((logp - teacher) * mask).sum() / n
  np.testing.assert_allclose(loss, kl, rtol=1e-5)
  np.testing.assert_allclose(m["reverse_kl"], kl, rtol=1e-5)
  np.testing.assert_allclose(grad, (logp - teacher) * mask / n, rtol=1e-5, atol=1e-7)
  # Off-policy samples: importance weight s / s_sample, advantage from the sampler.
  sample = logp + np.float32(0.1)
  loss2 = on_policy_distill_objective(logp, teacher, mask, sample)[0]
  ref2 = ((sample - teacher) * np.exp(logp - sample) * mask).sum() / n
  np.testing.assert_allclose(loss2, ref2, rtol=1e-5)


def test_full_reverse_kl_matches_numpy():
  s, t = rand((2, 5, 13), 5, 2.0), rand((2, 5, 13), 6, 2.0)
  ls, lt = np_log_softmax(s.astype(np.float64)), np_log_softmax(t.astype(np.float64))
  kl = (np.exp(ls) * (ls - lt)).sum(-1)
  ref = np.concatenate([np.zeros((2, 1)), kl[:, :-1]], 1)
  out = full_reverse_kl(s, t)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(out) >= -1e-6)
  with pytest.raises(ValueError, match="same shape"):
    full_reverse_kl(s, t[..., :7])


# ---------------------------------------------------------------- PPO

def np_gae(r, v, mask, gamma, lam):
  adv = np.zeros_like(r, dtype=np.float64)
  for b in range(r.shape[0]):
    next_v = next_a = 0.0
    for t in reversed(np.flatnonzero(mask[b])):
      delta = r[b, t] + gamma * next_v - v[b, t]
      next_a = delta + gamma * lam * next_a
      next_v = v[b, t]
      adv[b, t] = next_a
  return adv, np.where(mask > 0, adv + v, 0.0)


def test_gae_matches_numpy_and_skips_environment_tokens():
  rng = np.random.default_rng(7)
  r, v = rand((3, 10), 8), rand((3, 10), 9)
  mask = (rng.uniform(size=(3, 10)) < 0.6).astype(np.float32)  # 0 = prompt / tool output
  mask[:, 0] = 0
  adv, ret = gae(r, v, mask, 0.9, 0.8)
  ref_adv, ref_ret = np_gae(r, v, mask, 0.9, 0.8)
  np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-6)
  # gamma = lam = 1: returns are the rewards-to-go over action tokens.
  _, ret1 = gae(r, v, mask, 1.0, 1.0)
  rtg = np.cumsum((r * mask)[:, ::-1], 1)[:, ::-1] * mask
  np.testing.assert_allclose(ret1, rtg, rtol=1e-5, atol=1e-5)


def test_ppo_objective_matches_numpy():
  logp, old, _, _, mask = grpo_inputs(10)
  values, old_values, adv, ret, ent = (rand(logp.shape, s) for s in (11, 12, 13, 14, 15))
  c = PPOConfig(value_clip=0.2, vf_coef=0.5, ent_coef=0.01, normalize_advantages=True)
  loss, m = ppo_objective(logp, old, values, old_values, adv, ret, mask, c, ent)
  n = mask.sum()
  mean = (adv * mask).sum() / n
  a = (adv - mean) / (np.sqrt((((adv - mean) ** 2) * mask).sum() / n) + 1e-8)
  r = np.exp(logp - old)
  pg = (np.maximum(-a * r, -a * np.clip(r, 0.8, 1.2)) * mask).sum() / n
  vc = old_values + np.clip(values - old_values, -0.2, 0.2)
  vf = 0.5 * (np.maximum((values - ret) ** 2, (vc - ret) ** 2) * mask).sum() / n
  e = (ent * mask).sum() / n
  np.testing.assert_allclose(m["pg_loss"], pg, rtol=1e-4)
  np.testing.assert_allclose(m["vf_loss"], vf, rtol=1e-5)
  np.testing.assert_allclose(loss, pg + 0.5 * vf - 0.01 * e, rtol=1e-4)
  grads = jax.grad(lambda lp, vv: ppo_objective(lp, old, vv, old_values, adv, ret, mask, c)[0],
                   argnums=(0, 1))(logp, values)
  assert all(np.all(np.isfinite(g)) for g in grads)


# ---------------------------------------------------------------- model-level losses

@pytest.fixture(scope="module")
def model():
  params = init_params(CFG, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  ex = [(rng.integers(1, 64, rng.integers(2, 6)), rng.integers(1, 64, rng.integers(3, 9)))
        for _ in range(4)]
  return params, pad_sequences(ex, 16, pad_id=0)


def finite_grads(loss_fn, params, batch):
  (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, batch)
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads))
  return loss, metrics, grads


def test_sft_loss_matches_numpy(model):
  params, batch = model
  loss, m, _ = finite_grads(lambda p, b: losses.sft_loss(p, b, None, model_cfg=CFG), params, batch)
  logits, _ = forward(params, batch["tokens"], batch["positions"], CFG,
                      segment_ids=batch["segment_ids"])
  ls = np_log_softmax(np.asarray(logits, np.float64))
  nll, hits, n = 0.0, 0, 0
  for b, t in zip(*np.nonzero(batch["loss_mask"])):
    nll -= ls[b, t - 1, batch["tokens"][b, t]]
    hits += int(ls[b, t - 1].argmax() == batch["tokens"][b, t])
    n += 1
  np.testing.assert_allclose(loss, nll / n, rtol=1e-5)
  np.testing.assert_allclose(m["accuracy"], hits / n, atol=1e-6)
  assert float(m["n_tokens"]) == n


def test_grpo_loss_on_model(model):
  params, batch = model
  logp, _ = losses.sequence_logprobs(params, CFG, batch)
  full = dict(batch, advantages=np.array([1.0, -1.0, 0.5, -0.5], np.float32),
              old_logprobs=np.asarray(logp), ref_logprobs=np.asarray(logp) - 0.1)
  c = GRPOConfig(beta=0.04)
  loss, m, _ = finite_grads(lambda p, b: losses.grpo_loss(p, b, None, model_cfg=CFG, config=c),
                         params, full)
  assert float(m["ratio_mean"]) == pytest.approx(1.0, abs=1e-5)
  assert float(m["entropy"]) > 0
  no_ref = {k: v for k, v in full.items() if k != "ref_logprobs"}
  with pytest.raises(ValueError, match="needs ref_logprobs"):
    losses.grpo_loss(params, no_ref, None, model_cfg=CFG, config=c)
  with pytest.raises(KeyError, match="missing 'advantages'"):
    losses.grpo_loss(params, batch, None, model_cfg=CFG, config=c)


def test_dpo_loss_with_ref_params_equals_precomputed(model):
  params, batch = model
  ref_params = init_params(CFG, jax.random.PRNGKey(1))
  pairs = {"chosen": {k: v[:2] for k, v in batch.items()},
           "rejected": {k: v[2:] for k, v in batch.items()}}
  c = DPOConfig(beta=0.1)
  ref_c, ref_r = losses.response_logps(ref_params, CFG, pairs)
  pre = dict(pairs, ref_chosen_logps=ref_c, ref_rejected_logps=ref_r)
  loss_pre, m_pre, _ = finite_grads(
      lambda p, b: losses.dpo_loss(p, b, None, model_cfg=CFG, config=c), params, pre)
  loss_in, _ = jax.jit(functools.partial(losses.dpo_loss, model_cfg=CFG, config=c))(
      params, pairs, None, ref_params=ref_params)
  np.testing.assert_allclose(loss_in, loss_pre, rtol=1e-5)
  # Against the per-token log-probs summed by hand.
  lp = np.asarray(losses.sequence_logprobs(params, CFG, batch)[0])
  seq = (lp * batch["loss_mask"]).sum(1)
  np.testing.assert_allclose(m_pre["chosen_logps"], seq[:2].mean(), rtol=1e-5)
  with pytest.raises(KeyError, match="ref_chosen_logps"):
    losses.dpo_loss(params, pairs, None, model_cfg=CFG, config=c)


@pytest.mark.parametrize("length_normalize", [False, True])
def test_dpo_nll_weight_adds_the_chosen_per_token_nll(model, length_normalize):
  params, batch = model
  pairs = {"chosen": {k: v[:2] for k, v in batch.items()},
           "rejected": {k: v[2:] for k, v in batch.items()}}
  pairs["ref_chosen_logps"], pairs["ref_rejected_logps"] = np.full(2, -30.0), np.full(2, -31.0)
  loss = lambda w: losses.dpo_loss(params, pairs, None, model_cfg=CFG, config=DPOConfig(
      beta=0.1, nll_weight=w, length_normalize=length_normalize))
  base, _ = loss(0.0)
  got, m = loss(0.7)
  lp = np.asarray(losses.sequence_logprobs(params, CFG, batch)[0])[:2]
  mask = batch["loss_mask"][:2]
  nll = np.mean(-(lp * mask).sum(1) / mask.sum(1))
  np.testing.assert_allclose(m["chosen_nll"], nll, rtol=1e-5)
  np.testing.assert_allclose(got, base + 0.7 * nll, rtol=1e-5)
  with pytest.raises(ValueError, match="nll_weight"):
    DPOConfig(nll_weight=-1.0)


def test_dpo_replay_rows_in_the_same_forward_equal_a_separate_sft_loss(model):
  """dpo_loss with replay rows = DPO + w x sft_loss on them, in value and gradient (one forward
  over pairs and replay rows instead of two)."""
  params, batch = model
  pairs = {"chosen": {k: v[:2] for k, v in batch.items()},
           "rejected": {k: v[2:] for k, v in batch.items()}}
  pairs["ref_chosen_logps"], pairs["ref_rejected_logps"] = np.full(2, -30.0), np.full(2, -31.0)
  replay = {k: v[1:4] for k, v in batch.items()}
  c = DPOConfig(beta=0.1, nll_weight=0.3)

  def separate(p):
    loss, _ = losses.dpo_loss(p, pairs, None, model_cfg=CFG, config=c)
    return loss + 0.5 * losses.sft_loss(p, replay, None, model_cfg=CFG)[0]

  joint = lambda p: losses.dpo_loss(p, pairs, None, model_cfg=CFG, config=c, replay=replay,
                                    replay_weight=0.5)
  (got, m), g_joint = jax.value_and_grad(joint, has_aux=True)(params)
  want, g_sep = jax.value_and_grad(separate)(params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  sft_ref = losses.sft_loss(params, replay, None, model_cfg=CFG)[0]
  np.testing.assert_allclose(m["replay_loss"], sft_ref, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_joint, g_sep)
  narrow = {k: v[:, :-1] for k, v in replay.items()}
  with pytest.raises(ValueError, match="as wide as the pairs"):
    losses.dpo_loss(params, pairs, None, model_cfg=CFG, config=c, replay=narrow, replay_weight=0.5)


def test_distill_and_ppo_losses_on_model(model):
  params, batch = model
  teacher = np.asarray(losses.sequence_logprobs(init_params(CFG, jax.random.PRNGKey(2)), CFG,
                                                batch)[0])
  loss, m, _ = finite_grads(
      lambda p, b: losses.on_policy_distill_loss(p, b, None, model_cfg=CFG),
      params, dict(batch, teacher_logprobs=teacher))
  np.testing.assert_allclose(loss, m["reverse_kl"], rtol=1e-5)

  ppo_params = {"model": params, "value_head": losses.init_value_head(CFG.d_model)}
  logp, _, values = losses.ppo_forward(ppo_params, CFG, batch)
  rewards = np.zeros(batch["tokens"].shape, np.float32)
  last = batch["loss_mask"].shape[1] - 1 - np.argmax(batch["loss_mask"][:, ::-1], axis=1)
  rewards[np.arange(4), last] = [1.0, 0.0, 1.0, 0.0]
  adv, ret = gae(rewards, values, batch["loss_mask"], 1.0, 0.95)
  full = dict(batch, old_logprobs=logp, old_values=values, advantages=adv, returns=ret)
  c = PPOConfig()
  _, _, g = finite_grads(lambda p, b: losses.ppo_loss(p, b, None, model_cfg=CFG, config=c),
                        ppo_params, full)
  assert np.any(np.asarray(g["value_head"]["w"]) != 0)
