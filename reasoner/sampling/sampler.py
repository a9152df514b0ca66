"""Batched generation in JAX: a jitted prefill into a preallocated KV cache, then a jitted
`lax.while_loop` decode that owns the (donated) cache and updates it in place.

`prefill`, `decode` and `sample` are pure functions (usable inside other jitted code);
`generate` is the host-side wrapper: it left-pads prompts to a bucket length, places arrays on
the mesh, calls the two compiled programs (cached per model config, sampling config and bucket)
and returns NumPy arrays.

The decode loop runs `decode_model.step` (unrolled layers over a per-layer [B, K, S, Dh] cache;
the same block math as `decoder.forward`) so a token costs no copies of weights or cache.

Padding: prompts may be padded on either side (segment id 0 marks pad slots, which are never
attended to). Each row's next-token logits are read at its last real token and its new tokens
continue from that token's rotary position + 1, while the cache slots of new tokens are shared by
all rows (slots P, P+1, ... after a prompt block of width P).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from reasoner.model import decoder
from reasoner.model.config import ModelConfig
from reasoner.sampling import decode_model
from reasoner.sampling.config import SamplingConfig
from reasoner.sampling.step import Buffers, init_buffers, select_next
from reasoner.sharding import batch_shards

# Number of times each program was traced (tests check that a new prompt length inside a bucket
# does not retrace).
TRACE_COUNT = {"prefill": 0, "decode": 0}


@dataclasses.dataclass
class SampleOutput:
  """NumPy results; rows are prompt-major (row i*n + j is sample j of prompt i).

  tokens: [rows, max_new] int32 generated ids, pad after a row stops (the stop token is kept).
  logprobs: [rows, max_new] float32 log-prob of each token under the raw model (temperature 1,
    no top-k/p filtering): what GRPO needs as old log-probs. Injected tokens get theirs too.
    0 after a row stops.
  sample_logprobs: [rows, max_new] log-prob under the sampling rule actually used (temperature,
    top-k, top-p); 0 for greedy and for injected tokens (both deterministic).
  lengths: [rows] int32 number of generated tokens, including the stop token.
  done: [rows] bool, stopped by EOS / a stop token / a stop sequence (False: ran out of budget).
  injected: [rows, max_new] bool, tokens forced by budget control rather than sampled (mask them
    out of losses).
  prompt_lengths: [rows] int32 true prompt lengths.
  """

  tokens: np.ndarray
  logprobs: np.ndarray
  sample_logprobs: np.ndarray
  lengths: np.ndarray
  done: np.ndarray
  injected: np.ndarray
  prompt_lengths: np.ndarray


def bucket(n: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= n; beyond the largest, the next multiple of the largest."""
  for b in sorted(buckets):
    if n <= b:
      return int(b)
  top = max(buckets)
  return int(-(-n // top) * top)


def prefill(params, tokens: jax.Array, positions: jax.Array, segments: jax.Array, *,
            cfg: ModelConfig, cache_len: int, n: int = 1, mesh=None):
  """Runs prompts through the model and returns a decode cache of `cache_len` slots holding them.

  tokens / positions / segments: [b, P] (segment 0 = pad, either side).
  Returns (decode cache (see `decode_model`) for b*n rows, each prompt's cache repeated n times
           (prompt-major), prompts in slots [0, P) and `index` = P,
           next-token logits [b*n, V] float32 at each row's last prompt token,
           next rotary position [b*n] int32).
  """
  TRACE_COUNT["prefill"] += 1
  b, p = tokens.shape
  if cache_len < p:
    raise ValueError(f"cache_len ({cache_len}) is shorter than the prompts ({p})")
  # The prompt attends only to its own P slots; the cache is grown to cache_len afterwards.
  cache = decoder.init_cache(cfg, b, p)
  if mesh is not None:
    from reasoner import sharding
    cache = jax.lax.with_sharding_constraint(cache, sharding.cache_shardings(cache, mesh))
  # Only the last real token's logits are needed: the full [b, P, V] logits of `forward` are
  # unused (XLA drops them); the one hidden state per row is projected instead.
  _, cache, hidden = decoder.forward(params, tokens, positions, cfg, segment_ids=segments,
                                     cache=cache, return_hidden=True)
  last = jnp.max(jnp.where(segments != 0, jnp.arange(p)[None], -1), axis=1)
  last = jnp.maximum(last, 0)
  h_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)  # [b, 1, D]
  logits = decode_model.project_logits(params, h_last, cfg)[:, 0]
  next_pos = jnp.take_along_axis(positions, last[:, None], axis=1)[:, 0].astype(jnp.int32) + 1
  cache = decode_model.from_stacked(cache, n, cache_len)
  if mesh is not None:
    cache = jax.lax.with_sharding_constraint(cache, decode_model.cache_shardings(cache, mesh))
  if n > 1:
    logits = jnp.repeat(logits, n, axis=0)
    next_pos = jnp.repeat(next_pos, n, axis=0)
  return cache, logits, next_pos


def decode(params, cache, logits: jax.Array, next_pos: jax.Array, rng: jax.Array, *,
           cfg: ModelConfig, sampling: SamplingConfig, pad_id: int, eos_id: int):
  """The decode loop: picks a token from `logits`, feeds it, repeats until every row stopped or
  `max_new_tokens` were generated.

  cache: from `prefill` (rows = logits.shape[0]); logits: [rows, V]; next_pos: [rows] position of
  the first new token. Returns (Buffers with the outputs, final cache).
  """
  TRACE_COUNT["decode"] += 1
  rows = logits.shape[0]
  max_new = sampling.max_new_tokens
  dparams = decode_model.prepare_params(params, cfg)
  pick = functools.partial(select_next, scfg=sampling, pad_id=pad_id, eos_id=eos_id)
  step0 = jnp.zeros((), jnp.int32)
  tok, buf = pick(logits, jax.random.fold_in(rng, 0), step0, init_buffers(rows, sampling, pad_id))

  def cond(carry):
    step, _, _, buf = carry
    return (step < max_new) & ~jnp.all(buf.done)

  def body(carry):
    step, tok, cache, buf = carry
    logits, cache = decode_model.step(dparams, cache, tok, next_pos + step - 1, cfg)
    tok, buf = pick(logits, jax.random.fold_in(rng, step), step, buf)
    return step + 1, tok, cache, buf

  _, _, cache, buf = jax.lax.while_loop(cond, body, (step0 + 1, tok, cache, buf))
  return buf, cache


def sample(params, tokens, positions, segments, rng, *, cfg: ModelConfig, sampling: SamplingConfig,
           pad_id: int, eos_id: int, cache_len: int, mesh=None) -> Buffers:
  """prefill + decode as one pure function (for use inside other jitted code)."""
  cache, logits, next_pos = prefill(params, tokens, positions, segments, cfg=cfg,
                                    cache_len=cache_len, n=sampling.n, mesh=mesh)
  buf, _ = decode(params, cache, logits, next_pos, rng, cfg=cfg, sampling=sampling, pad_id=pad_id,
                  eos_id=eos_id)
  return buf


@functools.lru_cache(maxsize=64)
def _programs(cfg_json: str, sampling: SamplingConfig, pad_id: int, eos_id: int, cache_len: int,
              mesh):
  """Jitted (prefill, decode) for one model / sampling config / bucket; jit caches the shapes."""
  cfg = ModelConfig.from_dict(json.loads(cfg_json))
  pre = jax.jit(functools.partial(prefill, cfg=cfg, cache_len=cache_len, n=sampling.n, mesh=mesh))
  dec = jax.jit(functools.partial(decode, cfg=cfg, sampling=sampling, pad_id=pad_id, eos_id=eos_id),
                donate_argnums=(1,))
  return pre, dec


def layout(n_prompts: int, longest: int, sampling: SamplingConfig, mesh=None) -> tuple[int, int, int]:
  """(prompt rows, prompt width, cache length) of a call on `n_prompts` prompts of at most
  `longest` tokens: rows padded to a multiple of the mesh's data x fsdp, width the prompt bucket,
  cache width + max_new_tokens."""
  width = bucket(longest, sampling.prompt_buckets)
  per = batch_shards(mesh)
  rows = -(-n_prompts // per) * per
  return rows, width, width + sampling.max_new_tokens


def programs(cfg: ModelConfig, sampling: SamplingConfig, cache_len: int, *, pad_id: int,
             eos_id: int, mesh=None):
  """The jitted (prefill, decode) pair `generate` runs (cached per config and cache length)."""
  cfg_json = json.dumps(cfg.to_dict(), sort_keys=True)
  return _programs(cfg_json, sampling, int(pad_id), int(eos_id), cache_len, mesh)


def prompt_arrays(prompts: Sequence[Sequence[int]], width: int, rows: Optional[int] = None,
                  pad_id: int = 0):
  """Left-padded tokens / positions / segment ids [rows, width] and true lengths [rows].

  Rows beyond len(prompts) (batch padding for the mesh) get a one-token dummy prompt.
  """
  rows = len(prompts) if rows is None else rows
  tokens = np.full((rows, width), pad_id, np.int32)
  segments = np.zeros((rows, width), np.int32)
  positions = np.zeros((rows, width), np.int32)
  lengths = np.ones((rows,), np.int32)
  for i, p in enumerate(prompts):
    n = len(p)
    tokens[i, width - n:] = p
    segments[i, width - n:] = 1
    positions[i, width - n:] = np.arange(n)
    lengths[i] = n
  segments[len(prompts):, -1] = 1
  return tokens, positions, segments, lengths


def _check_prompts(prompts, cfg: ModelConfig, sampling: SamplingConfig):
  if not len(prompts):
    raise ValueError("generate needs at least one prompt")
  out = []
  for i, p in enumerate(prompts):
    p = np.asarray(p)
    if p.ndim != 1 or not len(p):
      raise ValueError(f"prompt {i} must be a non-empty list of token ids, got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.integer):
      raise ValueError(f"prompt {i} must hold integer token ids, got {p.dtype}")
    if p.min() < 0 or p.max() >= cfg.vocab_size:
      raise ValueError(f"prompt {i} has token ids outside [0, {cfg.vocab_size})")
    out.append(p.astype(np.int32))
  longest = max(len(p) for p in out)
  if longest + sampling.max_new_tokens > cfg.max_seq_len:
    raise ValueError(f"longest prompt ({longest}) + max_new_tokens ({sampling.max_new_tokens}) "
                     f"exceeds the model's max_seq_len ({cfg.max_seq_len})")
  return out


@dataclasses.dataclass
class PreparedCall:
  """What `generate` runs: the compiled programs and their inputs, placed on the mesh.

  `prefill(params, *inputs)` -> (cache, logits, next_pos); `decode(params, cache, logits,
  next_pos, rng)` -> (Buffers, cache) with the cache donated. Rows beyond `keep` are batch
  padding for the mesh; `prompt_lengths` holds the kept rows' true prompt lengths.
  """

  prefill: object
  decode: object
  inputs: tuple
  rng: jax.Array
  keep: int
  prompt_lengths: np.ndarray


def prepare(cfg: ModelConfig, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
            rng: jax.Array, *, pad_id: int, eos_id: int, mesh=None) -> PreparedCall:
  """Checks the prompts, left-pads them to their bucket, places them (and rng) on the mesh and
  looks up the compiled programs: everything `generate` does before running them."""
  prompts = _check_prompts(prompts, cfg, sampling)
  b, n = len(prompts), sampling.n
  rows, width, cache_len = layout(b, max(len(p) for p in prompts), sampling, mesh)
  tokens, positions, segments, lengths = prompt_arrays(prompts, width, rows, pad_id)
  pre, dec = programs(cfg, sampling, cache_len, pad_id=pad_id, eos_id=eos_id, mesh=mesh)
  inputs = (tokens, positions, segments)
  if mesh is not None:
    from reasoner import sharding
    inputs = sharding.shard_batch(inputs, mesh)
    rng = jax.device_put(rng, sharding.replicated(mesh))
  return PreparedCall(prefill=pre, decode=dec, inputs=tuple(inputs), rng=rng, keep=b * n,
                      prompt_lengths=np.repeat(lengths, n)[:b * n])


def generate(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
             rng: jax.Array, *, pad_id: int, eos_id: int, mesh=None) -> SampleOutput:
  """Samples `sampling.n` completions for each prompt (lists of token ids).

  With `mesh`, params must already be placed (e.g. `reasoner.sharding.shard_params`); prompt rows
  are split over the batch axes (padded with dummy rows to a multiple of data*fsdp) and the
  cache over batch and kv heads. Returns NumPy arrays (see `SampleOutput`).
  """
  call = prepare(cfg, prompts, sampling, rng, pad_id=pad_id, eos_id=eos_id, mesh=mesh)
  cache, logits, next_pos = call.prefill(params, *call.inputs)
  buf, cache = call.decode(params, cache, logits, next_pos, call.rng)
  del cache
  from reasoner.sharding import to_host
  get = lambda x: to_host(x)[:call.keep]
  return SampleOutput(tokens=get(buf.tokens), logprobs=get(buf.logprobs),
                      sample_logprobs=get(buf.sample_logprobs), lengths=get(buf.lengths),
                      done=get(buf.done), injected=get(buf.injected),
                      prompt_lengths=call.prompt_lengths)
