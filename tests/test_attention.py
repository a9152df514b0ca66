"""attention(): the blockwise path against the dense reference, gradients, padding, memory."""

import functools
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasoner.model import attention as A
from reasoner.model.attention import attention


def make_inputs(b, t, s, h, kv, d, dtype=jnp.float32, seed=0):
  """Random q [b, t, h, d], k, v [b, s, kv, d]."""
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(b, t, h, d)), dtype)
  k = jnp.asarray(rng.normal(size=(b, s, kv, d)), dtype)
  v = jnp.asarray(rng.normal(size=(b, s, kv, d)), dtype)
  return q, k, v


def left_padded(b, t, pads):
  """[b, t] ids: row r has pads[r] leading zeros then ones."""
  seg = np.ones((b, t), np.int32)
  for r, p in enumerate(pads):
    seg[r, :p] = 0
  return jnp.asarray(seg)


def packed_row(t):
  """One row 1,1,1,2,2,3,3,3,0,0 stretched to length t (ids in runs, trailing padding)."""
  base = np.array([1, 1, 1, 2, 2, 3, 3, 3, 0, 0])
  return np.repeat(base, -(-t // len(base)))[:t]


def weighted_loss(fn, q_seg):
  """A scalar from fn(q, k, v) [b, t, h, d] that weights every query row, padding included
  (the implementations agree there too: 0, and no gradient)."""
  del q_seg

  def loss(q, k, v):
    out = fn(q, k, v).astype(jnp.float32)
    w = jnp.sin(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))
    return (out * w).sum()
  return loss


def check_matches_dense(q, k, v, q_seg, kv_seg, *, q_offset=0, block_q=8, block_kv=8,
                        atol=1e-5, grad_atol=1e-4):
  """Blockwise == dense on every query row (padding rows: 0 from both), in values and in
  q / k / v gradients of a loss over every row."""
  dense = functools.partial(attention, q_segment_ids=q_seg, kv_segment_ids=kv_seg,
                            q_offset=q_offset, impl="dense")
  block = functools.partial(attention, q_segment_ids=q_seg, kv_segment_ids=kv_seg,
                            q_offset=q_offset, impl="blockwise", block_q=block_q,
                            block_kv=block_kv)
  with_grads = lambda fn: jax.jit(
      lambda q, k, v: (fn(q, k, v), jax.grad(weighted_loss(fn, q_seg), (0, 1, 2))(q, k, v)))
  want, g_want = with_grads(dense)(q, k, v)
  got, g_got = with_grads(block)(q, k, v)
  assert got.shape == q.shape and got.dtype == q.dtype
  assert np.isfinite(np.asarray(got, np.float32)).all()
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             atol=atol, rtol=atol)
  np.testing.assert_array_equal(np.asarray(want, np.float32)[np.asarray(q_seg) == 0], 0.0)
  for a, b in zip(g_got, g_want):
    assert a.dtype == b.dtype
    assert np.isfinite(np.asarray(a, np.float32)).all()
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               atol=grad_atol, rtol=grad_atol)


@pytest.mark.parametrize("h,kv", [(4, 2), (4, 4)])
def test_causal_gqa_multi_block(h, kv):
  q, k, v = make_inputs(2, 32, 32, h, kv, 16)
  seg = jnp.ones((2, 32), jnp.int32)
  check_matches_dense(q, k, v, seg, seg, block_q=8, block_kv=8)


def test_left_padding_different_per_row():
  q, k, v = make_inputs(3, 24, 24, 4, 2, 8)
  seg = left_padded(3, 24, [0, 5, 17])
  check_matches_dense(q, k, v, seg, seg, block_q=8, block_kv=4)


def test_packed_segments():
  q, k, v = make_inputs(2, 30, 30, 4, 2, 8)
  seg = jnp.asarray(np.stack([packed_row(30), np.roll(packed_row(30), 4)]), jnp.int32)
  check_matches_dense(q, k, v, seg, seg, block_q=8, block_kv=8)


def test_t_not_a_multiple_of_the_blocks():
  q, k, v = make_inputs(2, 23, 23, 4, 2, 8)
  seg = left_padded(2, 23, [0, 3])
  check_matches_dense(q, k, v, seg, seg, block_q=8, block_kv=5)
  check_matches_dense(q, k, v, seg, seg, block_q=512, block_kv=512)  # clipped to one block


def test_q_offset_continues_a_cache():
  """Prefill after `offset` cached slots: queries at offset..offset+t-1, keys 0..s-1."""
  offset, t, s = 13, 9, 32
  q, k, v = make_inputs(2, t, s, 4, 2, 8)
  kv_seg = np.zeros((2, s), np.int32)
  kv_seg[0, :offset + t] = 1
  kv_seg[1, 3:offset + t] = 1  # a left-padded row; slots past offset + t are empty
  q_seg = jnp.asarray(kv_seg[:, offset:offset + t])
  check_matches_dense(q, k, v, q_seg, jnp.asarray(kv_seg), q_offset=offset, block_q=4, block_kv=8)


def test_traced_q_offset_under_jit():
  t, s = 6, 20
  q, k, v = make_inputs(1, t, s, 2, 1, 8)
  kv_seg = jnp.asarray((np.arange(s) < 11)[None].astype(np.int32))
  q_seg = jnp.ones((1, t), jnp.int32)
  fn = jax.jit(lambda off: attention(q, k, v, q_seg, kv_seg, q_offset=off, impl="blockwise",
                                     block_q=4, block_kv=4))
  want = attention(q, k, v, q_seg, kv_seg, q_offset=5, impl="dense")
  np.testing.assert_allclose(fn(jnp.int32(5)), want, atol=1e-5)


def test_bfloat16():
  q, k, v = make_inputs(2, 40, 40, 4, 2, 16, dtype=jnp.bfloat16)
  seg = left_padded(2, 40, [0, 7])
  check_matches_dense(q, k, v, seg, seg, block_q=16, block_kv=8, atol=2e-2, grad_atol=6e-2)


def test_all_padding_rows_are_finite_with_zero_gradient():
  q, k, v = make_inputs(2, 16, 16, 4, 2, 8)
  seg = jnp.asarray(np.stack([np.zeros(16), np.r_[np.zeros(10), np.ones(6)]]), jnp.int32)
  fn = lambda q, k, v: attention(q, k, v, seg, seg, impl="blockwise", block_q=4, block_kv=4)
  out = jax.jit(fn)(q, k, v)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_array_equal(np.asarray(out)[np.asarray(seg) == 0], 0.0)
  # A loss over every row (padding included): gradients finite, and zero for padding queries.
  loss = lambda q, k, v: (fn(q, k, v) ** 2).sum() + fn(q, k, v).sum()
  grads = jax.jit(jax.grad(loss, (0, 1, 2)))(q, k, v)
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
  np.testing.assert_array_equal(np.asarray(grads[0])[np.asarray(seg) == 0], 0.0)
  np.testing.assert_array_equal(np.asarray(grads[1])[0], 0.0)


def test_vmap_and_scan_over_layers_with_checkpoint():
  """The decoder's use: layers under lax.scan with jax.checkpoint; plus an outer vmap."""
  n_layers, b, t, h, kv, d = 3, 2, 12, 4, 2, 8
  rng = np.random.default_rng(1)
  ws = jnp.asarray(rng.normal(size=(n_layers, d, d)) / np.sqrt(d), jnp.float32)
  x0 = jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32)
  seg = left_padded(b, t, [0, 4])
  keep = np.asarray(seg != 0)

  def run(ws, x, impl):
    def layer(x, w):
      y = jnp.einsum("bthd,de->bthe", x, w)
      kv_ = y[:, :, :kv]
      return x + attention(y, kv_, kv_, seg, seg, impl=impl, block_q=4, block_kv=4), None
    x, _ = jax.lax.scan(jax.checkpoint(layer), x, ws)
    return (x * keep[:, :, None, None]).sum()

  g_want = jax.jit(jax.grad(run), static_argnums=2)(ws, x0, "dense")
  g_got = jax.jit(jax.grad(run), static_argnums=2)(ws, x0, "blockwise")
  np.testing.assert_allclose(g_got, g_want, atol=1e-4, rtol=1e-4)
  batched = jax.vmap(lambda x: attention(x, x[:, :, :kv], x[:, :, :kv], seg, seg,
                                         impl="blockwise", block_q=4, block_kv=8))
  xs = jnp.stack([x0, 2 * x0])
  want = jax.jit(jax.vmap(lambda x: attention(x, x[:, :, :kv], x[:, :, :kv], seg, seg,
                                              impl="dense")))(xs)
  np.testing.assert_allclose(np.asarray(jax.jit(batched)(xs))[:, keep], np.asarray(want)[:, keep],
                             atol=1e-5)


def test_blockwise_backward_memory_is_far_below_dense():
  b, t, h, kv, d = 1, 4096, 4, 2, 64
  q = jax.ShapeDtypeStruct((b, t, h, d), jnp.float32)
  k = jax.ShapeDtypeStruct((b, t, kv, d), jnp.float32)
  seg = jax.ShapeDtypeStruct((b, t), jnp.int32)

  def temp_bytes(impl):
    loss = lambda q, k, v, seg: attention(q, k, v, seg, seg, impl=impl).sum()
    compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, k, k, seg).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  dense, blockwise = temp_bytes("dense"), temp_bytes("blockwise")
  assert dense > 256 * 2**20  # the [1, 2, 2, 4096, 4096] float32 scores alone are 256 MiB
  assert blockwise < dense / 4, (blockwise, dense)


def test_rotated_single_sequence_path_matches_dense():
  """The cudnn path's rotate-to-right-padding logic, run through XLA on CPU."""
  q, k, v = make_inputs(3, 20, 20, 4, 2, 8)
  seg = np.ones((3, 20), np.int32)
  seg[0, :6] = 0  # left padding
  seg[1, 15:] = 0  # right padding
  seg[2] = 0  # all padding
  seg = jnp.asarray(seg)
  keep = np.asarray(seg != 0)
  fn = lambda q, k, v: A._rotated_single_sequence(q, k, v, seg, implementation="xla")
  dense = lambda q, k, v: attention(q, k, v, seg, seg, impl="dense")
  out = jax.jit(fn)(q, k, v)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(np.asarray(out), np.asarray(dense(q, k, v)), atol=1e-5)
  assert not np.asarray(out)[~keep].any()  # padding rows 0, as every implementation gives them
  g_got = jax.jit(jax.grad(weighted_loss(fn, seg), (0, 1, 2)))(q, k, v)
  g_want = jax.jit(jax.grad(weighted_loss(dense, seg), (0, 1, 2)))(q, k, v)
  for a, b in zip(g_got, g_want):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_splash_kernel_in_interpret_mode():
  """The splash call (layout, GQA, segment ids, scale, backward) through Pallas' interpreter."""
  q, k, v = make_inputs(2, 128, 128, 4, 2, 64)
  seg = jnp.asarray(np.stack([np.r_[np.zeros(5), np.ones(123)], packed_row(128)]), jnp.int32)
  splash = lambda q, k, v: A._splash_attention(q, k, v, seg, seg, interpret=True)
  dense = lambda q, k, v: attention(q, k, v, seg, seg, impl="dense")
  try:
    out = jax.jit(splash)(q, k, v)
  except Exception as e:  # noqa: BLE001 (an interpreter limitation is not our bug)
    pytest.skip(f"splash interpret mode unavailable here: {type(e).__name__}: {e}")
  keep = np.asarray(seg != 0)
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(np.asarray(out), np.asarray(dense(q, k, v)), atol=1e-5)
  assert not np.asarray(out)[~keep].any()  # padding rows 0, as every implementation gives them
  g_got = jax.jit(jax.grad(weighted_loss(splash, seg), (0, 1, 2)))(q, k, v)
  g_want = jax.jit(jax.grad(weighted_loss(dense, seg), (0, 1, 2)))(q, k, v)
  for a, b in zip(g_got, g_want):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_impl_selection_and_errors():
  q, k, _ = make_inputs(1, 64, 64, 4, 2, 8)
  big_q, big_k = (jax.ShapeDtypeStruct((1, 2048, 4, 64), jnp.float32),
                  jax.ShapeDtypeStruct((1, 2048, 2, 64), jnp.float32))
  assert jax.default_backend() == "cpu"
  assert A.select_impl(q, k) == "dense"
  assert A.select_impl(big_q, big_k) == "blockwise"
  assert A.select_impl(big_q, big_k, packed=False) == "blockwise"  # no cudnn on CPU
  assert A.select_impl(q, k, impl="blockwise") == "blockwise"
  seg = jnp.ones((1, 64), jnp.int32)
  with pytest.raises(ValueError, match="auto, dense, blockwise, cudnn, splash"):
    attention(q, k, k, seg, seg, impl="flash")
  with pytest.raises(ValueError, match="cudnn.*GPU"):
    attention(q, k, k, seg, seg, impl="cudnn", packed=False)
  with pytest.raises(ValueError, match="splash.*TPU"):
    attention(q, k, k, seg, seg, impl="splash")


# ----------------------------------------------------------------------------------------------
# Which rows may use cuDNN: the losses say whether their rows are one sequence each.


def _rows(b=4, t=24, vocab=512):
  """Rollout-style rows (prompt + completion, right padding; one sequence per row)."""
  from reasoner.stages.rollouts import rollout_rows
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(3, vocab, 5 + i)) for i in range(b)]
  completions = [list(rng.integers(3, vocab, 3 + 2 * i)) for i in range(b)]
  rows = rollout_rows(prompts, completions, t, 0)
  return {k: jnp.asarray(v) for k, v in rows.items()}


def _packed_flags(fn):
  """The `packed` values the decoder passes to `attention` while `fn` is traced."""
  from reasoner.model import decoder
  seen, inner = [], decoder.attention

  def spy(*args, **kwargs):
    seen.append(kwargs.get("packed", True))
    return inner(*args, **kwargs)
  with mock.patch.object(decoder, "attention", spy):
    jax.eval_shape(fn)
  return set(seen)


def test_losses_declare_one_sequence_rows_and_sft_stays_packed():
  from reasoner import losses as Ls
  from reasoner.model import get_config, init_params
  from reasoner.stages.grpo import logprob_fn
  from reasoner.tts.prm import step_features
  cfg = get_config("tiny")
  params = init_params(cfg, jax.random.PRNGKey(0))
  rows = _rows()
  b, t = rows["tokens"].shape
  zeros = jnp.zeros((b, t), jnp.float32)
  rng = jax.random.PRNGKey(0)
  rl = dict(rows, advantages=jnp.ones((b,)), ref_logprobs=zeros, old_logprobs=zeros)
  pairs = {"chosen": rows, "rejected": rows, "ref_chosen_logps": jnp.zeros((b,)),
           "ref_rejected_logps": jnp.zeros((b,))}
  ppo = dict(rows, old_logprobs=zeros, old_values=zeros, advantages=zeros, returns=zeros)
  ppo_params = {"model": params, "value_head": Ls.init_value_head(cfg.d_model)}
  ends = jnp.full((b, 2), 4, jnp.int32)
  one_sequence = {
      "grpo": lambda: Ls.grpo_loss(params, rl, rng, model_cfg=cfg, config=Ls.GRPOConfig()),
      "off-policy grpo": lambda: Ls.off_policy_grpo_loss(
          params, dict(rl, behaviour_logprobs=zeros), rng, model_cfg=cfg,
          config=Ls.GRPOConfig(), is_clip=2.0),
      "grpo reference pass": lambda: logprob_fn(cfg)(params, rows),
      "on-policy distill": lambda: Ls.on_policy_distill_loss(
          params, dict(rows, teacher_logprobs=zeros), rng, model_cfg=cfg),
      "dpo": lambda: Ls.dpo_loss(params, pairs, rng, model_cfg=cfg, config=Ls.DPOConfig()),
      "ppo": lambda: Ls.ppo_loss(ppo_params, ppo, rng, model_cfg=cfg, config=Ls.PPOConfig()),
      "prm": lambda: step_features(params, rows["tokens"], rows["positions"],
                                   rows["segment_ids"], ends, ends - 1, cfg),
  }
  for name, fn in one_sequence.items():
    assert _packed_flags(fn) == {False}, name
  packed = {
      "sft": lambda: Ls.sft_loss(params, rows, rng, model_cfg=cfg),
      "dpo + replayed sft rows": lambda: Ls.dpo_loss(
          params, pairs, rng, model_cfg=cfg, config=Ls.DPOConfig(), replay=rows,
          replay_weight=0.5),
  }
  for name, fn in packed.items():
    assert _packed_flags(fn) == {True}, name


@pytest.fixture
def pretend_cuda_hopper():
  """select_impl and JAX's cuDNN front end as on an H100 (for lowering only; nothing runs)."""
  fa = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
  if not all(hasattr(fa, n) for n in ("check_cudnn_version", "check_compute_capability")):
    pytest.skip("this JAX's cuDNN attention front end has other hooks")
  with mock.patch.object(A, "_cuda_capability", lambda: (9, 0)), \
       mock.patch.object(fa, "check_cudnn_version", lambda: 91000), \
       mock.patch.object(fa, "check_compute_capability", lambda c: True):
    yield


def _cuda_module_text(fn, *args) -> str:
  """StableHLO of jit(fn) lowered for CUDA (jax.export), cuDNN's custom calls allowed."""
  from jax import export
  checks = [export.DisabledSafetyCheck.custom_call(n + suffix)
            for n in ("__cudnn$fmhaSoftmax", "__cudnn$fmhaScaleBiasSoftmax")
            for suffix in ("", "Backward")]
  return export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=checks)(
      *args).mlir_module()


def test_grpo_step_lowers_to_cudnn_flash_attention_for_cuda(pretend_cuda_hopper):
  """On a GPU the GRPO loss's forward and backward go through cuDNN's fused attention (lowered
  for CUDA here on a CPU machine, with JAX's argument checks), and SFT's packed rows do not."""
  from reasoner import losses as Ls
  from reasoner.model import decoder, get_config, init_params
  cfg = get_config("tiny").replace(dtype="bfloat16", param_dtype="bfloat16")
  params = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  rows = _rows(t=64)
  b, t = rows["tokens"].shape
  rl = dict(rows, advantages=jnp.ones((b,)), ref_logprobs=jnp.zeros((b, t)))
  rng = jax.random.PRNGKey(0)
  grpo = lambda p, batch: jax.grad(lambda p: Ls.grpo_loss(
      p, batch, rng, model_cfg=cfg, config=Ls.GRPOConfig())[0])(p)
  sft = lambda p, batch: jax.grad(lambda p: Ls.sft_loss(p, batch, rng, model_cfg=cfg)[0])(p)
  with decoder.compile_for("gpu"):
    text = _cuda_module_text(grpo, params, rl)
    fwd = text.count("@__cudnn$fmhaSoftmax(")
    bwd = text.count("@__cudnn$fmhaSoftmaxBackward(")
    assert fwd >= 1 and bwd >= 1, (fwd, bwd)
    assert "PADDING_CAUSAL" in text  # causal, with the rows' lengths as sequence lengths
    assert "__cudnn" not in _cuda_module_text(sft, params, rows)


def test_packed_rows_through_the_masked_cudnn_call_match_dense():
  """The explicit cudnn path's packed-row call (segment mask as a bias, causal), run through
  XLA on CPU: equal to the dense reference in values and gradients, padding rows 0."""
  q, k, v = make_inputs(3, 40, 40, 4, 2, 8)
  seg = jnp.asarray(np.stack([packed_row(40), np.r_[np.zeros(7), np.ones(33)], np.zeros(40)]),
                    jnp.int32)
  keep = np.asarray(seg != 0)
  fn = lambda q, k, v: A._masked_self_attention(q, k, v, seg, seg, implementation="xla")
  dense = lambda q, k, v: attention(q, k, v, seg, seg, impl="dense")
  out = jax.jit(fn)(q, k, v)
  np.testing.assert_allclose(np.asarray(out), np.asarray(dense(q, k, v)), atol=1e-5)
  assert not np.asarray(out)[~keep].any()
  g_got = jax.jit(jax.grad(weighted_loss(fn, seg), (0, 1, 2)))(q, k, v)
  g_want = jax.jit(jax.grad(weighted_loss(dense, seg), (0, 1, 2)))(q, k, v)
  for a, b in zip(g_got, g_want):
    assert np.isfinite(np.asarray(a)).all()
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_explicit_cudnn_takes_packed_rows_and_auto_does_not(pretend_cuda_hopper):
  """With cfg.attention="cudnn" SFT's packed rows lower to cuDNN's biased fused attention
  (forward and backward) for CUDA; with "auto" they stay on the blockwise path, and a
  single-sequence row takes the lengths call, not the bias."""
  from reasoner import losses as Ls
  from reasoner.model import decoder, get_config, init_params
  q = jax.ShapeDtypeStruct((2, 1024, 4, 64), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((2, 1024, 2, 64), jnp.bfloat16)
  assert A.select_impl(q, k, impl="cudnn", packed=True) == "cudnn"
  assert A.select_impl(q, k, packed=True) == "blockwise"
  assert A.select_impl(q, k, packed=False) == "cudnn"
  cfg = get_config("tiny").replace(dtype="bfloat16", param_dtype="bfloat16", attention="cudnn")
  params = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  rows = _rows(t=64)
  rows["segment_ids"] = jnp.asarray(np.tile(packed_row(64), (4, 1)), jnp.int32)
  rng = jax.random.PRNGKey(0)
  sft = lambda p, batch: jax.grad(lambda p: Ls.sft_loss(p, batch, rng, model_cfg=cfg)[0])(p)
  with decoder.compile_for("gpu"):
    text = _cuda_module_text(sft, params, rows)
  assert "@__cudnn$fmhaScaleBiasSoftmax(" in text
  assert "@__cudnn$fmhaScaleBiasSoftmaxBackward(" in text
  assert "@__cudnn$fmhaSoftmax(" not in text
