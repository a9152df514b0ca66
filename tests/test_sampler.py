"""The sampler against full-forward recomputation, plus padding / group / stop / budget-forcing,
compile-cache and sharding invariants."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reasoner import sharding
from reasoner.model import ModelConfig, forward, init_params
from reasoner.model import layers as L
from reasoner.sampling import (TRACE_COUNT, SamplingConfig, bucket, filter_logits, prepare,
                               prompt_arrays, sample, select_next)
from reasoner.sampling.sampler import generate  # the static sampler (not the engine dispatch)
from reasoner.sampling import decode_model
from reasoner.sampling.step import init_buffers

CFG = ModelConfig(vocab_size=96, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                  d_ff=128, max_seq_len=96, init_std=0.3)
PAD, EOS = 0, 1
PROMPTS = [[5, 17, 33, 2, 9, 41, 60], [7, 8], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]]
REF_LEN = 48


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.PRNGKey(0))


@jax.jit
def _ref_logits(params, tokens, lengths):
  """Full forward (no cache) of right-padded rows [b, T]; logits [b, T, V]."""
  t = tokens.shape[1]
  seg = (jnp.arange(t)[None] < lengths[:, None]).astype(jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(t), tokens.shape)
  return forward(params, tokens, pos, CFG, segment_ids=seg)[0]


def _ref_rows(prompts, completions):
  tokens = np.zeros((len(prompts), REF_LEN), np.int32)
  lengths = np.zeros((len(prompts),), np.int32)
  for i, (p, c) in enumerate(zip(prompts, completions)):
    row = list(p) + list(c)
    tokens[i, :len(row)] = row
    lengths[i] = len(row)
  return tokens, lengths


def greedy_reference(params, prompts, steps):
  """Greedy decoding that recomputes the full forward of the whole sequence at every step."""
  outs = [[] for _ in prompts]
  for _ in range(steps):
    tokens, lengths = _ref_rows(prompts, outs)
    logits = np.asarray(_ref_logits(params, tokens, lengths))
    for i in range(len(prompts)):
      outs[i].append(int(np.argmax(logits[i, lengths[i] - 1])))
  return np.asarray(outs)


def reference_logits(params, prompts, completions):
  """logits [rows, max_new, V] predicting each completion token, from one full forward."""
  tokens, lengths = _ref_rows(prompts, completions)
  logits = np.asarray(_ref_logits(params, tokens, lengths))
  m = max(len(c) for c in completions)
  out = np.zeros((len(prompts), m, CFG.vocab_size), np.float32)
  for i, p in enumerate(prompts):
    for j in range(len(completions[i])):
      out[i, j] = logits[i, len(p) - 1 + j]
  return out


def log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def run(params, prompts, seed=0, mesh=None, eos=-1, **kw):
  """generate() with EOS off by default (-1 never matches) so rows run the whole budget."""
  kw.setdefault("max_new_tokens", 12)
  return generate(params, CFG, prompts, SamplingConfig(**kw), jax.random.PRNGKey(seed),
                  pad_id=PAD, eos_id=eos, mesh=mesh)


def test_greedy_with_cache_equals_full_forward_recompute(params):
  out = run(params, PROMPTS, greedy=True)
  ref = greedy_reference(params, PROMPTS, 12)
  np.testing.assert_array_equal(out.tokens, ref)
  assert out.tokens.shape == (3, 12) and (out.lengths == 12).all() and not out.done.any()
  np.testing.assert_array_equal(out.prompt_lengths, [len(p) for p in PROMPTS])


def test_logprobs_equal_log_softmax_of_full_forward(params):
  out = run(params, PROMPTS, seed=3, temperature=1.3, top_k=5, n=2)
  prompts = [p for p in PROMPTS for _ in range(2)]
  logits = reference_logits(params, prompts, out.tokens.tolist())
  raw = np.take_along_axis(log_softmax(logits), out.tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(out.logprobs, raw, atol=2e-4)
  # Each token was drawn from the top 5 of the raw model, and sample_logprobs is its log-prob
  # under softmax(top-5 logits / 1.3).
  rank = (logits > np.take_along_axis(logits, out.tokens[..., None], -1)).sum(-1)
  assert (rank < 5).all()
  scaled = logits / 1.3
  kth = np.sort(scaled, -1)[..., -5][..., None]
  filt = log_softmax(np.where(scaled >= kth, scaled, -np.inf))
  samp = np.take_along_axis(filt, out.tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(out.sample_logprobs, samp, atol=2e-4)


def test_padding_and_bucket_do_not_change_a_row(params):
  alone = run(params, [PROMPTS[1]], greedy=True)
  batched = run(params, PROMPTS, greedy=True)
  wide = run(params, [PROMPTS[1]], greedy=True, prompt_buckets=(40,))
  for other in (batched, wide):
    np.testing.assert_array_equal(alone.tokens[0], other.tokens[1 if other is batched else 0])
  np.testing.assert_allclose(alone.logprobs[0], batched.logprobs[1], atol=1e-5)


def test_right_padded_core_input_equals_left_padded(params):
  sc = SamplingConfig(max_new_tokens=8, greedy=True)
  core = jax.jit(functools.partial(sample, cfg=CFG, sampling=sc, pad_id=PAD, eos_id=-1,
                                   cache_len=16 + 8))
  left = prompt_arrays(PROMPTS, 16, pad_id=PAD)[:3]
  right = [np.zeros_like(a) for a in left]
  for i, p in enumerate(PROMPTS):
    right[0][i, :len(p)] = p
    right[1][i, :len(p)] = np.arange(len(p))
    right[2][i, :len(p)] = 1
  a = core(params, *left, jax.random.PRNGKey(0))
  b = core(params, *right, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
  np.testing.assert_array_equal(a.tokens, greedy_reference(params, PROMPTS, 8))


def test_groups_greedy_identical_sampled_differ(params):
  g = run(params, PROMPTS[:2], greedy=True, n=3, max_new_tokens=6)
  assert g.tokens.shape == (6, 6) and g.logprobs.shape == (6, 6)
  np.testing.assert_array_equal(g.prompt_lengths, [7, 7, 7, 2, 2, 2])
  for i in range(2):
    for j in range(3):
      np.testing.assert_array_equal(g.tokens[3 * i + j], g.tokens[3 * i])
  assert not np.array_equal(g.tokens[0], g.tokens[3])
  s = run(params, PROMPTS[:2], seed=1, temperature=2.0, n=4, max_new_tokens=6)
  rows = {tuple(r) for r in s.tokens[:4]}
  assert len(rows) == 4


def test_top_k_1_equals_greedy(params):
  a = run(params, PROMPTS, greedy=True)
  b = run(params, PROMPTS, seed=5, top_k=1, temperature=0.7)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(b.sample_logprobs, 0.0, atol=1e-6)


def test_filter_logits_against_numpy():
  logits = np.log(np.array([[0.05, 0.4, 0.1, 0.3, 0.15], [0.2, 0.2, 0.2, 0.2, 0.2]], np.float32))
  kept = lambda x: np.isfinite(np.asarray(x))
  np.testing.assert_array_equal(kept(filter_logits(jnp.asarray(logits), 1.0, 2, 1.0)),
                                [[0, 1, 0, 1, 0], [1, 1, 1, 1, 1]])  # ties at the k-th kept
  # top-p 0.65: 0.4 + 0.3 reaches it -> {1, 3}; 0.7 needs the third token (0.15).
  np.testing.assert_array_equal(kept(filter_logits(jnp.asarray(logits), 1.0, 0, 0.65))[0],
                                [0, 1, 0, 1, 0])
  np.testing.assert_array_equal(kept(filter_logits(jnp.asarray(logits), 1.0, 0, 0.75))[0],
                                [0, 1, 0, 1, 1])
  np.testing.assert_array_equal(kept(filter_logits(jnp.asarray(logits), 1.0, 0, 0.01))[0],
                                [0, 1, 0, 0, 0])
  np.testing.assert_allclose(filter_logits(jnp.asarray(logits), 2.0, 0, 1.0), logits / 2.0)


def test_eos_and_stop_sequence_stop_and_pad(params):
  free = run(params, PROMPTS, greedy=True)
  row = free.tokens[0].tolist()
  eos = row[4]
  first = row.index(eos)
  out = run(params, PROMPTS, greedy=True, eos=eos)
  assert out.done[0] and out.lengths[0] == first + 1
  np.testing.assert_array_equal(out.tokens[0, :first + 1], row[:first + 1])
  assert (out.tokens[0, first + 1:] == PAD).all() and (out.logprobs[0, first + 1:] == 0).all()
  for i in (1, 2):  # rows that never emit eos run the whole budget
    if eos not in free.tokens[i].tolist():
      assert not out.done[i] and out.lengths[i] == 12

  seq = tuple(free.tokens[2, 5:7].tolist())
  end = next(j for j in range(1, 12) if tuple(free.tokens[2, j - 1:j + 1].tolist()) == seq)
  out = run(params, PROMPTS, greedy=True, stop_sequences=(seq,))
  assert out.done[2] and out.lengths[2] == end + 1
  np.testing.assert_array_equal(out.tokens[2, :end + 1], free.tokens[2, :end + 1])
  assert (out.tokens[2, end + 1:] == PAD).all()


def test_stop_token_ids_stop(params):
  free = run(params, PROMPTS, greedy=True)
  tok = int(free.tokens[1, 3])
  out = run(params, PROMPTS, greedy=True, stop_token_ids=(tok,))
  first = free.tokens[1].tolist().index(tok)
  assert out.done[1] and out.lengths[1] == first + 1


def test_max_thinking_tokens_forces_think_end(params):
  free = run(params, PROMPTS, greedy=True)
  think_end = next(t for t in range(2, CFG.vocab_size) if t not in free.tokens[:, :8])
  out = run(params, PROMPTS, greedy=True, max_thinking_tokens=5, think_end_id=think_end)
  np.testing.assert_array_equal(out.tokens[:, :5], free.tokens[:, :5])
  assert (out.tokens[:, 5] == think_end).all()
  assert out.injected[:, 5].all() and out.injected.sum() == 3  # forced once per row
  logits = reference_logits(params, PROMPTS, out.tokens.tolist())
  raw = np.take_along_axis(log_softmax(logits), out.tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(out.logprobs, raw, atol=2e-4)  # forced tokens: raw model log-prob


def test_min_thinking_tokens_replaces_early_think_end_with_wait(params):
  free = run(params, PROMPTS, greedy=True)
  row = free.tokens[0].tolist()
  think_end = row[2]
  k = row.index(think_end)
  wait = (90, 91)
  out = run(params, PROMPTS, greedy=True, think_end_id=think_end, min_thinking_tokens=8,
            wait_token_ids=wait)
  np.testing.assert_array_equal(out.tokens[0, :k], row[:k])
  np.testing.assert_array_equal(out.tokens[0, k:k + 2], wait)
  assert out.injected[0, k:k + 2].all() and not out.injected[0, :k].any()
  assert think_end not in out.tokens[:, :8]


def _step_loop(logits_seq, scfg, eos_id=EOS):
  """Runs select_next over hand-made per-step logits [steps, rows, V]."""
  rows = logits_seq.shape[1]
  buf = init_buffers(rows, scfg, PAD)
  fn = jax.jit(functools.partial(select_next, scfg=scfg, pad_id=PAD, eos_id=eos_id))
  for step, lg in enumerate(logits_seq):
    _, buf = fn(jnp.asarray(lg), jax.random.PRNGKey(step), jnp.int32(step), buf)
  return buf


def _peaked(tokens, v=16):
  """Logits [steps, rows, v] with a dominant token per (step, row)."""
  tokens = np.asarray(tokens)
  out = np.zeros(tokens.shape + (v,), np.float32)
  np.put_along_axis(out, tokens[..., None], 10.0, -1)
  return out


def test_budget_forcing_step_function_on_hand_made_logits():
  think_end, wait = 5, (7, 8)
  # Row 0 tries </think> at steps 0, 2 and 4, row 1 tries EOS at step 1, row 2 never closes.
  want = [[5, 3, 5, 3, 5, 3, 1], [3, 1, 3, 3, 3, 3, 3], [3, 3, 3, 3, 3, 3, 3]]
  scfg = SamplingConfig(max_new_tokens=7, greedy=True, think_end_id=think_end,
                        min_thinking_tokens=4, wait_token_ids=wait, max_thinking_tokens=6)
  buf = _step_loop(_peaked(np.asarray(want).T), scfg)
  np.testing.assert_array_equal(buf.tokens, [[7, 8, 7, 8, 5, 3, 1],
                                             [3, 7, 8, 3, 3, 3, 5],
                                             [3, 3, 3, 3, 3, 3, 5]])
  np.testing.assert_array_equal(buf.injected, [[1, 1, 1, 1, 0, 0, 0],
                                               [0, 1, 1, 0, 0, 0, 1],
                                               [0, 0, 0, 0, 0, 0, 1]])
  np.testing.assert_array_equal(buf.done, [True, False, False])
  np.testing.assert_array_equal(buf.lengths, [7, 7, 7])
  # The raw log-prob of an injected token is the model's (low) one, not 0.
  assert buf.logprobs[0, 0] < -9 and buf.logprobs[0, 4] > -1e-3


def test_no_retrace_within_a_bucket(params):
  run(params, [[3, 4, 5, 6, 7], [8, 9], [10]], greedy=True)
  before = dict(TRACE_COUNT)
  run(params, [list(range(2, 11)), [8], [4, 5]], greedy=True)  # other lengths, same bucket
  assert TRACE_COUNT == before
  run(params, [list(range(2, 42)), [8], [4, 5]], greedy=True)  # next bucket: traced anew
  assert TRACE_COUNT["prefill"] == before["prefill"] + 1


@pytest.mark.parametrize("rows", [1, 3])  # dot products at batch 1, fused reductions above (CPU)
def test_cached_attention_equals_gqa_attention(rows):
  kq, kk, kv, km = jax.random.split(jax.random.PRNGKey(4), 4)
  q = jax.random.normal(kq, (rows, 1, 4, 8))
  k = jax.random.normal(kk, (rows, 10, 2, 8))
  v = jax.random.normal(kv, (rows, 10, 2, 8))
  mask = jax.random.bernoulli(km, 0.6, (rows, 1, 10)).at[:, :, 0].set(True)
  want = L.gqa_attention(q, k, v, mask)
  got = decode_model.cached_attention(q, jnp.transpose(k, (0, 2, 3, 1)), jnp.swapaxes(v, 1, 2),
                                      mask)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_decode_donates_the_cache(params):
  sc = SamplingConfig(max_new_tokens=4, greedy=True)
  call = prepare(CFG, PROMPTS, sc, jax.random.PRNGKey(0), pad_id=PAD, eos_id=-1)
  pre, dec = call.prefill, call.decode
  assert call.inputs[0].shape[1] == 32  # the prompt bucket
  cache, logits, nxt = pre(params, *call.inputs)
  assert "input_output_alias" in dec.lower(params, cache, logits, nxt,
                                           jax.random.PRNGKey(0)).compile().as_text()[:2000]
  _, new_cache = dec(params, cache, logits, nxt, jax.random.PRNGKey(0))
  assert all(x.is_deleted() for x in cache["k"] + cache["v"])
  assert int(new_cache["index"]) == 32 + 3  # the last token is never fed back


def test_sharded_generate_equals_single_device(params):
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  sharded = sharding.shard_params(params, CFG, mesh)
  a = run(params, PROMPTS, greedy=True, n=2, max_new_tokens=8)
  b = run(sharded, PROMPTS, greedy=True, n=2, max_new_tokens=8, mesh=mesh)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
  sc = SamplingConfig(max_new_tokens=8, greedy=True, n=2)
  call = prepare(CFG, PROMPTS, sc, jax.random.PRNGKey(0), pad_id=PAD, eos_id=-1, mesh=mesh)
  cache, _, _ = call.prefill(sharded, *call.inputs)
  k0, v0 = cache["k"][0], cache["v"][0]  # layer 0: [rows, kv_heads, head_dim / slots, ...]
  assert k0.shape == (8, 2, 16, 40) and v0.shape == (8, 2, 40, 16)
  assert tuple(k0.sharding.spec)[:2] == tuple(v0.sharding.spec)[:2] == (("data", "fsdp"), "tensor")


def test_bucket():
  assert bucket(1, (32, 64)) == 32 and bucket(33, (64, 32)) == 64 and bucket(65, (32, 64)) == 128


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=0.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(n=0), "n"),
    (dict(max_thinking_tokens=4), "think_end_id"),
    (dict(min_thinking_tokens=4, think_end_id=3), "wait_token_ids"),
    (dict(stop_sequences=((),)), "empty"),
])
def test_sampling_config_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    SamplingConfig(**kw)


@pytest.mark.parametrize("prompts, match", [
    ([], "at least one"),
    ([[3, 4], []], "prompt 1"),
    ([[3, 400]], "outside"),
    ([list(range(2, 90))], "max_seq_len"),
])
def test_generate_input_errors(params, prompts, match):
  with pytest.raises(ValueError, match=match):
    run(params, prompts, greedy=True)
