"""Log-probs, entropies and losses over chunks of positions equal the whole-batch computation
(values and gradients), on one device and on the 8-device mesh, and use far less memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasoner import losses
from reasoner.losses.logprobs import logits_chunk, next_token_stats, sequence_stats
from reasoner.model import ModelConfig, forward, init_params
from reasoner.sharding import make_mesh, shard_params
from reasoner.train import make_train_step
from reasoner.train.state import init_train_state

# A vocabulary large enough that a 1 MiB budget splits a 2-row batch into 32-position chunks.
CFG = ModelConfig(vocab_size=4096, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  d_ff=64, max_seq_len=128, logits_chunk_mib=1)
WHOLE = CFG.replace(logits_chunk_mib=0)


def batch(rows=2, t=80, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, CFG.vocab_size, (rows, t)).astype(np.int32)
  seg = np.ones((2, t), np.int32)
  seg[0, :7] = 0  # left padding
  seg[1, 50:] = 2  # a second packed segment
  pos = np.where(seg[1] == 2, np.arange(t) - 50, np.arange(t))
  positions = np.stack([np.maximum(np.arange(t) - 7, 0), pos]).astype(np.int32)
  mask = (seg > 0).astype(np.float32) * (np.arange(t) % 3 != 0)
  reps = rows // 2  # rows beyond the first two repeat their layout (with their own tokens)
  tile = lambda x: np.tile(x, (reps, 1))
  return dict(tokens=tokens, positions=tile(positions), segment_ids=tile(seg), loss_mask=tile(mask))


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.PRNGKey(0))


def test_chunk_size_from_the_budget():
  # 1 MiB / (2 rows x 4096 x 4 bytes) = 32 positions at most: 3 chunks, balanced to 27 each
  # (81 positions, one of padding; 32 + 32 + 16 would pad 16).
  assert logits_chunk(2, 80, 4096, 1) == 27
  assert logits_chunk(2, 64, 4096, 1) == 32  # divides: 2 chunks of the largest size
  assert logits_chunk(2, 80, 4096, 0) == 80
  assert logits_chunk(2, 16, 4096, 1) == 16  # fits whole
  assert logits_chunk(64, 100, 151936, 1) == 1


@pytest.mark.parametrize("budget_mib", [1, 2, 3, 5, 7, 16])
@pytest.mark.parametrize("seq", [1, 7, 80, 255, 256, 1000])
def test_chunks_stay_in_budget_with_less_than_a_position_of_padding_per_chunk(budget_mib, seq):
  rows, vocab = 2, 4096
  chunk = logits_chunk(rows, seq, vocab, budget_mib)
  largest = max(1, budget_mib * 2**20 // (rows * vocab * 4))
  n = -(-seq // chunk)
  assert chunk <= max(largest, 1) or chunk == seq
  assert n == -(-seq // min(largest, seq))  # no more chunks than the budget forces
  assert n * chunk - seq < n


def test_chunked_stats_equal_whole_logits(params):
  b = batch()
  out = sequence_stats(params, CFG, b, entropy=True, argmax=True)
  logits, _ = forward(params, b["tokens"], b["positions"], WHOLE, segment_ids=b["segment_ids"])
  seg = b["segment_ids"]
  np.testing.assert_allclose(out["logp"], losses.token_logprobs(logits, b["tokens"], seg),
                             atol=2e-5)
  np.testing.assert_allclose(out["entropy"], losses.token_entropy(logits, seg), atol=2e-5)
  lp = np.asarray(jax.nn.log_softmax(logits, -1))
  keep = np.asarray(losses.logprobs.continues_segment(seg)) > 0
  am = np.zeros_like(b["tokens"])
  am[:, 1:] = lp[:, :-1].argmax(-1)
  np.testing.assert_array_equal(np.asarray(out["argmax"])[keep], am[keep])


@pytest.mark.parametrize("loss", ["sft", "grpo", "dpo"])
def test_chunked_losses_and_grads_equal_unchunked(params, loss):
  b = batch()
  if loss == "sft":
    fn = lambda p, cfg: losses.sft_loss(p, b, None, model_cfg=cfg)
  elif loss == "grpo":
    lp, _ = losses.sequence_logprobs(params, WHOLE, b)
    full = dict(b, advantages=np.array([1.0, -0.5], np.float32), old_logprobs=np.asarray(lp) + 0.01,
                ref_logprobs=np.asarray(lp) - 0.1)
    c = losses.GRPOConfig(beta=0.04, entropy_coef=0.01)
    fn = lambda p, cfg: losses.grpo_loss(p, full, None, model_cfg=cfg, config=c)
  else:
    other = batch(seed=1)
    pair = dict(chosen=b, rejected=other, ref_chosen_logps=np.array([-300.0, -250.0], np.float32),
                ref_rejected_logps=np.array([-310.0, -240.0], np.float32))
    fn = lambda p, cfg: losses.dpo_loss(p, pair, None, model_cfg=cfg,
                                        config=losses.DPOConfig(nll_weight=0.5))
  (l1, m1), g1 = jax.value_and_grad(lambda p: fn(p, CFG), has_aux=True)(params)
  (l0, m0), g0 = jax.value_and_grad(lambda p: fn(p, WHOLE), has_aux=True)(params)
  np.testing.assert_allclose(l1, l0, rtol=1e-5, atol=1e-6)
  for k in m0:
    np.testing.assert_allclose(m1[k], m0[k], rtol=1e-4, atol=1e-5, err_msg=k)
  jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=2e-4, atol=2e-6), g1, g0)


@pytest.mark.parametrize("variant", ["tied", "bfloat16", "frozen_head", "frozen_tied"])
def test_fused_sft_head_equals_the_whole_logits(variant):
  """SFT's chunked loss computes its gradient during the forward sweep (`chunked_nll`): values,
  metrics and gradients equal the whole-logits path for a tied embedding, bfloat16 compute, and
  a head that is not differentiated (a frozen base), and a plain call (no gradient) agrees."""
  cfg = CFG.replace(tie_embeddings=variant in ("tied", "frozen_tied"),
                    dtype="bfloat16" if variant == "bfloat16" else "float32")
  whole = cfg.replace(logits_chunk_mib=0)
  p = init_params(cfg, jax.random.PRNGKey(3))
  b = batch()
  head = "embed" if cfg.tie_embeddings else "lm_head"
  frozen = variant.startswith("frozen")

  def loss(c):  # scaled, as a weighted term of a larger loss is (the cotangent is not 1)
    def fn(q):
      q = dict(q, **{head: p[head]}) if frozen else q  # a frozen head: a constant of fn
      value, metrics = losses.sft_loss(q, b, None, model_cfg=c)
      return 0.5 * value, metrics
    return fn

  args = {k: v for k, v in p.items() if k != head} if frozen else p
  (l1, m1), g1 = jax.jit(jax.value_and_grad(loss(cfg), has_aux=True))(args)
  (l0, m0), g0 = jax.jit(jax.value_and_grad(loss(whole), has_aux=True))(args)
  plain, _ = jax.jit(loss(cfg))(args)
  tol = dict(rtol=2e-2, atol=2e-3) if variant == "bfloat16" else dict(rtol=2e-4, atol=2e-6)
  np.testing.assert_allclose(l1, l0, rtol=1e-2 if variant == "bfloat16" else 1e-5)
  np.testing.assert_allclose(plain, l1, rtol=1e-4 if variant == "bfloat16" else 1e-6)
  for k in m0:
    np.testing.assert_allclose(m1[k], m0[k], rtol=1e-2, atol=1e-2, err_msg=k)
  assert set(g1) == set(g0) and (head in g1) != frozen
  jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, **tol), g1, g0)
  assert float(jnp.abs(g1["final_norm"]).max()) > 0  # the hidden states' gradient arrives


def test_fused_sft_head_bounds_compiled_memory():
  """The SFT loss's gradient at 1 x 4096 tokens, vocab 32k, through the fused head: like the
  rematerialised scan, temporaries stay far below one copy of the float32 logits."""
  cfg = CFG.replace(vocab_size=32768, max_seq_len=4096, logits_chunk_mib=8, n_layers=1)
  shapes = jax.eval_shape(functools.partial(init_params, cfg), jax.random.PRNGKey(0))
  t = 4096
  b = {k: jax.ShapeDtypeStruct((1, t), jnp.float32 if k == "loss_mask" else jnp.int32)
       for k in ("tokens", "positions", "segment_ids", "loss_mask")}

  def temp(c):
    g = jax.grad(lambda p, b: losses.sft_loss(p, b, None, model_cfg=c)[0])
    return jax.jit(g).lower(shapes, b).compile().memory_analysis().temp_size_in_bytes

  chunked, whole = temp(cfg), temp(cfg.replace(logits_chunk_mib=0))
  logits_bytes = t * cfg.vocab_size * 4
  assert whole > logits_bytes
  assert chunked < logits_bytes / 8, (chunked, whole)


def test_chunked_train_step_on_mesh_matches_one_device(params):
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  b = batch(rows=4, t=64)
  import optax
  opt = optax.sgd(0.1)
  loss_fn = functools.partial(losses.sft_loss, model_cfg=CFG)
  ref_step = make_train_step(functools.partial(losses.sft_loss, model_cfg=WHOLE), opt)
  copy = jax.tree.map(jnp.copy, params)  # the step donates its state
  ref_state, ref_m = ref_step(init_train_state(copy, opt), b, jax.random.PRNGKey(0))
  from reasoner.sharding import param_shardings
  step = make_train_step(loss_fn, opt, mesh=mesh, param_shardings=param_shardings(CFG, mesh))
  state = init_train_state(shard_params(params, CFG, mesh), opt, mesh=mesh,
                           param_shardings=param_shardings(CFG, mesh))
  state, m = step(state, b, jax.random.PRNGKey(0))
  np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5)
  jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6),
               jax.device_get(state.params), jax.device_get(ref_state.params))


def test_chunking_bounds_compiled_memory():
  """Gradient of the output layer's mean log-prob at 1 x 4096 tokens, vocab 32k: the whole
  float32 logits are 512 MiB (and the backward holds several such); 8 MiB chunks keep the
  temporaries far below one copy."""
  cfg = CFG.replace(vocab_size=32768, max_seq_len=4096, logits_chunk_mib=8)
  shapes = jax.eval_shape(functools.partial(init_params, cfg), jax.random.PRNGKey(0))
  t = 4096
  hidden = jax.ShapeDtypeStruct((1, t, cfg.d_model), jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, t), jnp.int32)

  def temp(c):
    loss = lambda p, h, tok: jnp.mean(next_token_stats(p, c, h, tok)["logp"])
    g = jax.grad(loss, argnums=(0, 1))
    return jax.jit(g).lower(shapes, hidden, tokens).compile().memory_analysis().temp_size_in_bytes

  chunked, whole = temp(cfg), temp(cfg.replace(logits_chunk_mib=0))
  logits_bytes = t * cfg.vocab_size * 4
  assert whole > logits_bytes  # the unchunked path holds the full logits
  assert chunked < logits_bytes / 8, (chunked, whole)
