"""LoRA adapters: exactness against the base and against merged weights, the sampler, training
only the adapters on a frozen base, the GRPO reference, sharding, an SFT stage that resumes,
and the HF export of a model directory that carries adapters."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.pipeline import tiny
from reasoner import sharding
from reasoner.losses.logprobs import sequence_logprobs
from reasoner.losses.sft import sft_loss
from reasoner.model import ModelConfig, forward, init_params
from reasoner.model import lora
from reasoner.io.metrics_log import MetricsWriter
from reasoner.stages.context import StageContext
from reasoner.train import init_train_state, make_optimizer, make_train_step
from reasoner.train.state import merge_trees, model_params

CFG = ModelConfig(vocab_size=384, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  d_ff=64, max_seq_len=128, qkv_bias=True, lora_rank=4, lora_alpha=8.0)
B, T = 4, 16


def batch(seed=0):
  rs = np.random.RandomState(seed)
  mask = np.ones((B, T), np.float32)
  mask[:, :4] = 0
  return {"tokens": rs.randint(0, CFG.vocab_size, (B, T)).astype(np.int32),
          "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
          "segment_ids": np.ones((B, T), np.int32), "loss_mask": mask}


def random_adapters(cfg, seed=3, scale=0.3):
  """Adapters with non-zero a and b (init_lora's b is zero)."""
  ad = lora.init_lora(cfg, jax.random.PRNGKey(seed))
  keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 16))
  return jax.tree.map(lambda x: scale * jax.random.normal(next(keys), x.shape), ad)


def logits(params, cfg, b):
  return forward(params, jnp.asarray(b["tokens"]), jnp.asarray(b["positions"]), cfg)[0]


@functools.lru_cache()
def base_params():
  return init_params(CFG, jax.random.PRNGKey(0))


def test_shapes_axes_and_count():
  shapes = lora.lora_shapes(CFG)["layers"]["lora"]
  assert shapes["wq"] == {"a": (2, 32, 4), "b": (2, 4, 4, 8)}
  assert shapes["wk"]["b"] == (2, 4, 2, 8) and shapes["wo"] == {"a": (2, 4, 8, 4), "b": (2, 4, 32)}
  assert shapes["w_down"] == {"a": (2, 64, 4), "b": (2, 4, 32)}
  axes = lora.lora_logical_axes(CFG)["layers"]["lora"]
  assert axes["wq"] == {"a": ("layers", "embed", "lora_rank"),
                        "b": ("layers", "lora_rank", "heads", "head_dim")}
  assert axes["w_up"]["b"] == ("layers", "lora_rank", "mlp")
  assert lora.lora_param_count(CFG) == sum(np.prod(s) for s in jax.tree.leaves(
      lora.lora_shapes(CFG), is_leaf=lambda x: isinstance(x, tuple)))
  assert lora.lora_shapes(CFG.replace(lora_rank=0)) == {"layers": {"lora": {}}}
  sub = CFG.replace(lora_targets="wv,w_down")
  assert set(lora.lora_shapes(sub)["layers"]["lora"]) == {"wv", "w_down"}


def test_zero_b_is_exactly_the_base_and_split_inverts_merge_trees():
  base = base_params()
  ad = lora.init_lora(CFG, jax.random.PRNGKey(1))
  assert all(not np.any(np.asarray(x["b"])) for x in ad["layers"]["lora"].values())
  assert all(np.any(np.asarray(x["a"])) for x in ad["layers"]["lora"].values())
  full = merge_trees(base, ad)
  b = batch()
  np.testing.assert_array_equal(logits(full, CFG, b), logits(base, CFG, b))
  back, ad2 = lora.split_lora(full)
  assert jax.tree.structure(back) == jax.tree.structure(base) and ad2 is not None
  assert all(x is y for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(base)))
  assert lora.split_lora(base) == (base, None)


@pytest.mark.parametrize("targets", ["wq,wk,wv,wo,w_gate,w_up,w_down", "wv,w_down"])
def test_adapters_equal_the_merged_weights(targets):
  cfg = CFG.replace(lora_targets=targets)
  base = base_params()
  full = merge_trees(base, random_adapters(cfg))
  merged = lora.merge_lora(full, cfg)
  assert not lora.has_lora(merged) and jax.tree.structure(merged) == jax.tree.structure(base)
  # merge_lora against a hand-written einsum of one weight.
  ad = full["layers"]["lora"]
  name = "wv"
  want = base["layers"][name] + 2.0 * jnp.einsum("ldr,lrkh->ldkh", ad[name]["a"], ad[name]["b"])
  np.testing.assert_allclose(merged["layers"][name], want, rtol=1e-5, atol=1e-6)
  for k in set(base["layers"]) - set(targets.split(",")):
    assert merged["layers"][k] is base["layers"][k]
  b = batch()
  got, ref = logits(full, cfg, b), logits(merged, cfg, b)
  assert float(jnp.max(jnp.abs(got - logits(base, cfg, b)))) > 1e-2  # the adapters matter
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_sampler_runs_the_adapters():
  from reasoner.sampling import SamplingConfig, generate
  base = base_params()
  full = merge_trees(base, random_adapters(CFG))
  merged = lora.merge_lora(full, CFG)
  prompts = [[5, 6, 7, 8], [9, 10, 11]]
  sampling = SamplingConfig(max_new_tokens=6, greedy=True)
  run = lambda p: generate(p, CFG, prompts, sampling, jax.random.PRNGKey(0), pad_id=0, eos_id=1)
  a, m, plain = run(full), run(merged), run(base)
  np.testing.assert_array_equal(a.tokens, m.tokens)
  np.testing.assert_allclose(a.logprobs, m.logprobs, atol=1e-4)
  assert not np.array_equal(a.tokens, plain.tokens)


def lora_state(opt, mesh=None):
  base = base_params()
  ad = lora.init_lora(CFG, jax.random.PRNGKey(1))
  if mesh is None:
    return init_train_state(ad, opt, frozen=base)
  return init_train_state(ad, opt, mesh=mesh, param_shardings=sharding.lora_shardings(CFG, mesh),
                          frozen=base, frozen_shardings=sharding.param_shardings(CFG, mesh))


def test_train_step_trains_only_the_adapters():
  opt = make_optimizer(dict(learning_rate=1e-2, schedule="constant"))
  state = lora_state(opt)
  frozen = state.frozen
  before = jax.tree.map(np.array, frozen)
  step = make_train_step(functools.partial(sft_loss, model_cfg=CFG), opt)
  shapes = {tuple(x.shape) for x in jax.tree.leaves(state.params)}
  assert all(x.ndim == 0 or tuple(x.shape) in shapes for x in jax.tree.leaves(state.opt_state))
  n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
  assert n_opt < 3 * lora.lora_param_count(CFG) + 10  # Adam's two moments + counters, no more
  losses = []
  for i in range(3):
    state, m = step(state, batch(i % 2), jax.random.PRNGKey(i))
    losses.append(float(m["loss"]))
  assert state.frozen is frozen and not any(x.is_deleted() for x in jax.tree.leaves(frozen))
  for x, y in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(x), y)
  assert all(np.any(np.asarray(x["b"])) for x in state.params["layers"]["lora"].values())
  assert set(state.params) == {"layers"} and set(state.params["layers"]) == {"lora"}
  assert losses[2] < losses[0]


def test_sharded_adapters_give_the_unsharded_loss_and_update():
  opt = make_optimizer(dict(learning_rate=1e-2, schedule="constant"))
  loss_fn = functools.partial(sft_loss, model_cfg=CFG)
  mesh = sharding.make_mesh(2, 2, 2)
  sh = lora_state(opt, mesh)
  spec = sh.params["layers"]["lora"]["w_up"]["b"].sharding.spec
  assert spec == jax.sharding.PartitionSpec(None, None, "tensor")
  assert sh.params["layers"]["lora"]["wq"]["a"].sharding.spec[1] == "fsdp"
  sh, m_sh = make_train_step(loss_fn, opt, mesh=mesh)(sh, batch(), jax.random.PRNGKey(0))
  one, m_one = make_train_step(loss_fn, opt)(lora_state(opt), batch(), jax.random.PRNGKey(0))
  np.testing.assert_allclose(m_sh["loss"], m_one["loss"], rtol=1e-6)
  for x, y in zip(jax.tree.leaves(sh.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def stage_ctx(tmp_path, tokenizer, cfg=CFG, **sft):
  config = tiny()
  config.sft.update({**dict(steps=2, batch_size=4, seq_len=48, n_examples=16), **sft})
  config.sft.optim.update(dict(learning_rate=1e-2, warmup_steps=0))
  config.grpo.update(dict(steps=1, prompts_per_step=2, group_size=2, epochs=1, minibatches=1,
                          replay_weight=0.0))
  config.grpo.loss.update(dict(beta=0.1, entropy_coef=0.0))
  config.checkpoint_every, config.log_every = 1, 100
  mesh = sharding.make_mesh(1, -1, 1, devices=jax.devices()[:2])
  return StageContext(config, str(tmp_path), mesh, cfg, tokenizer,
                      MetricsWriter(str(tmp_path), tensorboard=False))


def test_grpo_reference_is_the_frozen_base(tmp_path, arith_tokenizer):
  from reasoner.losses import grpo_loss
  from reasoner.stages.grpo import GRPOBatch, grpo_config, make_learn
  from reasoner.stages.rollouts import rollout_rows
  from reasoner.stages.trainable import init_stage_state, reference_params
  cfg = CFG.replace(param_dtype="bfloat16")
  ctx = stage_ctx(tmp_path, arith_tokenizer, cfg)
  params = sharding.shard_params(base_params(), cfg, ctx.mesh)
  opt = make_optimizer(ctx.config.grpo.optim)
  state = init_stage_state(ctx, "grpo", params, opt)
  assert not lora.has_lora(state.frozen) and set(state.params["layers"]) == {"lora"}
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.frozen))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  state = state.replace(params=jax.device_put(random_adapters(cfg, scale=0.1),
                                              sharding.lora_shardings(cfg, ctx.mesh)))
  rs = np.random.RandomState(0)
  prompts = [list(rs.randint(3, 300, 5)) for _ in range(4)]
  rows = rollout_rows(prompts, [list(rs.randint(3, 300, 8)) for _ in range(4)], 16, 0)
  rows["advantages"] = np.array([1.0, -1.0, 0.5, -0.5], np.float32)
  gb = GRPOBatch(rows, np.zeros_like(rows["loss_mask"]), {}, True)

  def loss_fn(p, b, rng):
    loss, m = grpo_loss(p, b, rng, model_cfg=cfg, config=grpo_config(ctx.config.grpo))
    return loss, {**m, "ref_sum": jnp.sum(b["ref_logprobs"] * b["loss_mask"])}

  base_logp = sequence_logprobs(state.frozen, cfg, rows)[0]
  policy_logp = sequence_logprobs(model_params(state), cfg, rows)[0]
  want = float(jnp.sum(base_logp * rows["loss_mask"]))
  assert abs(float(jnp.sum(policy_logp * rows["loss_mask"])) - want) > 1e-2
  _, m = make_learn(ctx, opt, loss_fn, ref_params=reference_params)(state, gb, 0,
                                                                    jax.random.PRNGKey(2))
  np.testing.assert_allclose(m["ref_sum"], want, rtol=1e-5)


def test_sft_stage_trains_adapters_resumes_and_hands_on_merged_params(tmp_path, arith_tokenizer,
                                                                     capsys):
  from reasoner.stages.sft import run_sft
  params = sharding.shard_params(base_params(), CFG, stage_ctx(tmp_path, arith_tokenizer).mesh)
  host = jax.tree.map(np.array, params)
  rng = jax.random.PRNGKey(7)
  full = run_sft(stage_ctx(tmp_path / "a", arith_tokenizer), params, rng)
  # A run killed after its step-1 checkpoint, rerun: resumes there and ends identically.
  run_sft(stage_ctx(tmp_path / "b", arith_tokenizer, steps=1), params, rng)
  capsys.readouterr()
  resumed = run_sft(stage_ctx(tmp_path / "b", arith_tokenizer), params, rng)
  assert "[sft] resumed from checkpoint step 1/2" in capsys.readouterr().out
  assert jax.tree.structure(full) == jax.tree.structure(host) and not lora.has_lora(full)
  for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(host)):  # the input is intact
    np.testing.assert_array_equal(np.asarray(x), y)
  changed = [k for k in host["layers"] if not np.array_equal(full["layers"][k], host["layers"][k])]
  assert sorted(changed) == sorted(lora.lora_targets(CFG))
  assert np.array_equal(full["embed"], host["embed"])
  # A rerun without LoRA would find a checkpoint of other params: refused, not restored.
  from reasoner.checkpoint import CheckpointManager
  from reasoner.stages.loop import check_resumable
  with CheckpointManager(tmp_path / "b" / "stages" / "sft" / "ckpt") as mgr:
    check_resumable(mgr, 2, lora.init_lora(CFG, rng), "sft")  # adapters: resumable
    with pytest.raises(ValueError, match="holds other params"):
      check_resumable(mgr, 2, host, "sft")


def test_export_of_a_model_dir_with_adapters_is_merged(tmp_path):
  from safetensors.numpy import load_file
  import torch
  from transformers import AutoModelForCausalLM
  from launch.export_hf import run as export_cli
  from reasoner.checkpoint import export_hf, load_model, save_model
  from tests.hf_fixtures import torch_logits
  cfg = CFG.replace(vocab_size=128, tie_embeddings=False, arch="qwen2")
  base = init_params(cfg, jax.random.PRNGKey(4))
  full = merge_trees(base, random_adapters(cfg, scale=0.2))
  save_model(tmp_path / "dir", full, cfg)
  loaded, _, _, _ = load_model(tmp_path / "dir")
  assert lora.has_lora(loaded)
  export_cli(str(tmp_path / "dir"), str(tmp_path / "hf"), "float32", 2048, False)
  export_hf(lora.merge_lora(full, cfg), cfg, tmp_path / "manual")
  got, want = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("hf", "manual"))
  assert set(got) == set(want)
  for k in want:  # adapted weights: equal up to the rounding of a sharded vs unsharded matmul
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7)
    if not any(p in k for p in ("proj.weight",)):
      np.testing.assert_array_equal(got[k], want[k])
  model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
  tokens = np.random.RandomState(0).randint(0, 128, (2, 12))
  pos = np.broadcast_to(np.arange(12), (2, 12))
  ours = np.asarray(forward(full, jnp.asarray(tokens), jnp.asarray(pos), cfg)[0])
  assert float(np.max(np.abs(ours - torch_logits(model, tokens)))) < 1e-4
