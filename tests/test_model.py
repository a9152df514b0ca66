"""The decoder against an independent NumPy implementation, plus cache / packing / padding invariants."""

import jax
import jax.numpy as jnp
import numpy as np
from unittest import mock
import pytest

from reasoner.model import ModelConfig, forward, get_config, init_cache, init_params

CFG = ModelConfig(vocab_size=96, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=12,
                  d_ff=80, max_seq_len=64)


def numpy_reference(params, tokens, cfg):
  """Straightforward per-row, per-head decoder in float64 NumPy (causal, no padding)."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  b, t = tokens.shape
  hd = cfg.head_dim
  inv = 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2) / hd)
  ang = np.arange(t)[:, None] * inv[None]
  cos, sin = np.cos(ang), np.sin(ang)

  def rope(x):  # [t, hd]
    x1, x2 = x[:, : hd // 2], x[:, hd // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

  def norm(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps) * w

  out = []
  for row in range(b):
    h = p["embed"][tokens[row]]
    for l in range(cfg.n_layers):
      lp = {k: v[l] for k, v in p["layers"].items()}
      x = norm(h, lp["attn_norm"])
      heads = []
      for hh in range(cfg.n_heads):
        kv = hh // (cfg.n_heads // cfg.n_kv_heads)
        q = x @ lp["wq"][:, hh]
        k = x @ lp["wk"][:, kv]
        v = x @ lp["wv"][:, kv]
        if cfg.qkv_bias:
          q, k, v = q + lp["bq"][hh], k + lp["bk"][kv], v + lp["bv"][kv]
        q, k = rope(q), rope(k)
        s = q @ k.T / np.sqrt(hd)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        heads.append(a @ v)
      attn = np.stack(heads, 1)  # [t, H, hd]
      h = h + np.einsum("thk,hkd->td", attn, lp["wo"])
      x = norm(h, lp["mlp_norm"])
      g = x @ lp["w_gate"]
      h = h + ((g / (1 + np.exp(-g))) * (x @ lp["w_up"])) @ lp["w_down"]
    h = norm(h, p["final_norm"])
    out.append(h @ (p["embed"].T if cfg.tie_embeddings else p["lm_head"]))
  return np.stack(out)


def _randomise(params, seed=0):
  """Non-trivial norms and biases so the reference comparison exercises them."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("overrides", [{}, {"qkv_bias": True}, {"tie_embeddings": True},
                                       {"n_kv_heads": 4}, {"n_kv_heads": 1}])
def test_forward_matches_numpy_reference(overrides):
  cfg = CFG.replace(**overrides)
  params = _randomise(init_params(cfg, jax.random.PRNGKey(1)))
  tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (2, 11), 0, cfg.vocab_size))
  positions = np.broadcast_to(np.arange(11), (2, 11))
  logits, cache = forward(params, jnp.asarray(tokens), jnp.asarray(positions), cfg)
  assert cache is None
  np.testing.assert_allclose(np.asarray(logits), numpy_reference(params, tokens, cfg), atol=2e-4, rtol=1e-4)


def test_incremental_cache_equals_full_forward():
  params = init_params(CFG, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(3), (3, 12), 0, CFG.vocab_size)
  positions = jnp.broadcast_to(jnp.arange(12), (3, 12))
  full, _ = forward(params, tokens, positions, CFG)
  cache = init_cache(CFG, 3, 16)
  out, cache = forward(params, tokens[:, :5], positions[:, :5], CFG, cache=cache)
  outs = [out]
  for i in range(5, 12):
    out, cache = forward(params, tokens[:, i:i + 1], positions[:, i:i + 1], CFG, cache=cache)
    outs.append(out)
  assert int(cache["index"]) == 12
  np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-5)


def test_left_padding_in_cache_does_not_change_a_row():
  params = init_params(CFG, jax.random.PRNGKey(0))
  seq = jax.random.randint(jax.random.PRNGKey(4), (1, 6), 0, CFG.vocab_size)
  alone, _ = forward(params, seq, jnp.arange(6)[None], CFG)
  pad = 3
  tokens = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), seq], 1)
  positions = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), jnp.arange(6)[None]], 1)
  segments = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), jnp.ones((1, 6), jnp.int32)], 1)
  cache = init_cache(CFG, 1, 12)
  padded, cache = forward(params, tokens, positions, CFG, segment_ids=segments, cache=cache)
  np.testing.assert_allclose(padded[:, pad:], alone, atol=1e-5)
  # The next token continues at position 6 and matches the unpadded continuation.
  nxt = jnp.array([[7]])
  step, _ = forward(params, nxt, jnp.array([[6]]), CFG, segment_ids=jnp.ones((1, 1), jnp.int32), cache=cache)
  ref, _ = forward(params, jnp.concatenate([seq, nxt], 1), jnp.arange(7)[None], CFG)
  np.testing.assert_allclose(step[:, 0], ref[:, -1], atol=1e-5)


def test_packed_segments_equal_separate_sequences():
  params = init_params(CFG, jax.random.PRNGKey(0))
  a = jax.random.randint(jax.random.PRNGKey(5), (1, 5), 0, CFG.vocab_size)
  b = jax.random.randint(jax.random.PRNGKey(6), (1, 4), 0, CFG.vocab_size)
  tokens = jnp.concatenate([a, b, jnp.zeros((1, 2), jnp.int32)], 1)
  positions = jnp.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 0]])
  segments = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0]])
  packed, _ = forward(params, tokens, positions, CFG, segment_ids=segments)
  la, _ = forward(params, a, jnp.arange(5)[None], CFG)
  lb, _ = forward(params, b, jnp.arange(4)[None], CFG)
  np.testing.assert_allclose(packed[:, :5], la, atol=1e-5)
  np.testing.assert_allclose(packed[:, 5:9], lb, atol=1e-5)
  assert np.isfinite(np.asarray(packed)).all()


def test_remat_gives_same_gradients():
  params = init_params(CFG, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(7), (2, 8), 0, CFG.vocab_size)
  positions = jnp.broadcast_to(jnp.arange(8), (2, 8))

  def loss(p, cfg):
    return jnp.mean(jax.nn.log_softmax(forward(p, tokens, positions, cfg)[0])[..., 0])

  g1 = jax.grad(loss)(params, CFG)
  g2 = jax.grad(loss)(params, CFG.replace(remat=True))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), g1, g2)


def test_bfloat16_compute_keeps_float32_params_and_is_close():
  params = init_params(CFG, jax.random.PRNGKey(0))
  tokens = jax.random.randint(jax.random.PRNGKey(8), (2, 8), 0, CFG.vocab_size)
  positions = jnp.broadcast_to(jnp.arange(8), (2, 8))
  ref, _ = forward(params, tokens, positions, CFG)
  low, _ = forward(params, tokens, positions, CFG.replace(dtype="bfloat16"))
  assert low.dtype == jnp.float32 and params["embed"].dtype == jnp.float32
  np.testing.assert_allclose(low, ref, atol=0.05)


def test_llama3_rope_scaling_changes_only_low_frequencies():
  from reasoner.model.layers import rope_inv_freq
  plain = np.asarray(rope_inv_freq(128, 500000.0))
  scaled = np.asarray(rope_inv_freq(128, 500000.0, get_config("llama3_1_8b").rope_scaling))
  assert np.allclose(scaled[:8], plain[:8])  # high frequencies untouched
  np.testing.assert_allclose(scaled[-1], plain[-1] / 8.0, rtol=1e-6)  # lowest divided by factor


@pytest.mark.parametrize("preset", ["tiny", "qwen2_5_0_5b", "qwen2_5_1_5b", "qwen2_5_7b",
                                    "llama3_2_1b", "llama3_1_8b"])
def test_presets_have_published_sizes(preset):
  expected = {"qwen2_5_0_5b": 0.494e9, "qwen2_5_1_5b": 1.54e9, "qwen2_5_7b": 7.62e9,
              "llama3_2_1b": 1.24e9, "llama3_1_8b": 8.03e9}
  n = get_config(preset).n_params
  if preset in expected:
    assert abs(n - expected[preset]) / expected[preset] < 0.01
  else:
    assert n < 2e6


def test_config_errors_are_clear():
  with pytest.raises(ValueError, match="unknown architecture 'gpt9'"):
    ModelConfig(arch="gpt9")
  with pytest.raises(ValueError, match=r"unknown model config field\(s\) \['d_modle'\]"):
    ModelConfig.from_dict({"d_modle": 3})
  with pytest.raises(ValueError, match="multiple of n_kv_heads"):
    ModelConfig(n_heads=6, n_kv_heads=4)
  with pytest.raises(ValueError, match="unknown model preset 'huge'"):
    get_config("huge")


def test_bfloat16_projections_on_cpu_ask_for_float32_results_and_round_once():
  """On XLA:CPU a bfloat16 matmul asks for a float32 result (a 4-5x faster kernel there) and
  rounds it to bfloat16 once: every projection's dot in the compiled forward has bfloat16
  operands and a float32 result, and a projection equals the float64 product of its bfloat16
  inputs to within one bfloat16 rounding."""
  from reasoner.model.decoder import matmul_out_dtype, project
  assert jax.default_backend() == "cpu"
  assert matmul_out_dtype(jnp.bfloat16) == jnp.float32
  assert matmul_out_dtype(jnp.float32) is None
  cfg = CFG.replace(dtype="bfloat16")
  params = init_params(cfg, jax.random.PRNGKey(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
  hlo = jax.jit(lambda p: forward(p, tokens, positions, cfg)[0]).lower(params).as_text()
  dots = [line for line in hlo.splitlines() if "dot_general" in line and "->" in line]
  # The layers are one scanned body: its 7 projections (q, k, v, o, gate, up, down) and the
  # head; attention's batched einsums are the only dots allowed a bfloat16 result.
  proj = [d for d in dots if d.count("bf16>") == 2 and d.rstrip().endswith("f32>")
          and "batching_dims" not in d]
  bf16_out = [d for d in dots if d.count("bf16>") == 3 and "batching_dims" not in d]
  assert len(proj) == 8 and not bf16_out, "\n".join(dots)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, cfg.d_model)), jnp.bfloat16)
  lp = jax.tree.map(lambda a: a[0], params["layers"])
  for name in ("wq", "w_up", "w_down"):
    xin = x if name != "w_down" else jnp.asarray(
        np.random.default_rng(2).normal(size=(2, 9, cfg.d_ff)), jnp.bfloat16)
    y = project(cfg, xin, lp, name)
    assert y.dtype == jnp.bfloat16
    w = np.asarray(lp[name].astype(jnp.bfloat16), np.float64)
    ref = np.tensordot(np.asarray(xin, np.float64), w, axes=1).reshape(y.shape)
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=2 ** -8, atol=1e-6)


def test_bfloat16_projection_gradients_on_cpu_are_bfloat16_matmuls_of_the_rounded_cotangent():
  """The backward of a bfloat16 projection on XLA:CPU runs its matmuls on bfloat16 operands
  (the cotangent rounded, as on an accelerator) with float32 results, not float32 x float32:
  for the whole block's gradient, and the gradients match float64 products of the rounded
  operands."""
  from reasoner.model import decoder
  cfg = CFG.replace(dtype="bfloat16")
  params = init_params(cfg, jax.random.PRNGKey(0))
  lp = jax.tree.map(lambda a: a[0], params["layers"])
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 9, cfg.d_model)), jnp.bfloat16)
  for name, flat in (("w_up", True), ("w_up", False), ("wq", False)):
    with mock.patch.object(decoder, "flat_matmuls", lambda: flat):
      y, vjp = jax.vjp(lambda x, w: decoder.project(cfg, x, {name: w}, name), x, lp[name])
      dy = jnp.asarray(rng.normal(size=y.shape), jnp.bfloat16)
      dx, dw = vjp(dy)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == lp[name].dtype
    x64 = np.asarray(x, np.float64).reshape(18, -1)
    w64 = np.asarray(lp[name].astype(jnp.bfloat16), np.float64).reshape(cfg.d_model, -1)
    g64 = np.asarray(dy, np.float64).reshape(18, -1)
    np.testing.assert_allclose(np.asarray(dx, np.float64).reshape(18, -1), g64 @ w64.T,
                               rtol=2 ** -8, atol=1e-3)
    # dw is float32 (the params'): the product of the bfloat16 operands, rounded to bfloat16.
    np.testing.assert_allclose(np.asarray(dw, np.float64).reshape(w64.shape), x64.T @ g64,
                               rtol=2 ** -8, atol=1e-3)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 9)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
  loss = lambda p: jax.nn.logsumexp(forward(p, tokens, positions, cfg)[0]).sum()
  hlo = jax.jit(jax.grad(loss)).lower(params).as_text()
  dots = [line for line in hlo.splitlines() if "dot_general" in line and "->" in line
          and "batching_dims" not in line]  # attention's batched einsums aside
  f32_only = [d for d in dots if "bf16>" not in d]
  # Forward and backward: 7 projections x 3 matmuls and the head's 3 (logits, dh, dw).
  assert len(dots) == 24 and not f32_only, "\n".join(f32_only)
