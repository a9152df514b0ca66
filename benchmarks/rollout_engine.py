"""Long-tail rollouts: useful tokens/s and KV memory of the static sampler and the rollout
engine (`reasoner.sampling.engine`) on the same workload, in one run.

  python -m benchmarks.rollout_engine [--quick] [--presets=tiny,mid] [--batch=64] [--rows=256]
      [--n=4] [--median=128] [--sigma=1.0] [--prompt_len=128] [--page_size=32]
      [--steps_per_sync=16] [--dtype=float32]

Workload: `rows` rows (`rows / n` random prompts of `prompt_len` tokens, n samples each), greedy.
Row i's response length is fixed by the benchmark, not by the random weights: lengths are the
quantiles of a log-normal with median `median` and shape `sigma` (sigma 1: p99 = 10.2x the
median), shuffled, and the benchmark asserts median and p99 / median >= 8 before running. EOS
is off and each row stops at its length:
  - static: `batch` rows per call (batch / n prompts), one after another; a call's decode loop
    runs until its longest row ends (what the sampler's loop does when rows end by EOS), over a
    cache of prompt bucket + the workload's longest response for every row.
  - engine: `batch` decode slots, the rows' lengths given as per-row budgets; a pool no larger
    than the static cache.
Useful tokens are the rows' response tokens (the sum of the lengths); both sides' times are
after compilation (the static programs are compiled ahead of the timed calls, the engine is run
once before the timed run). KV memory: the static cache of one call and the engine's page pool
(allocated), and the most pages the engine had in use.
"""

from __future__ import annotations

import argparse
import functools
import time
from statistics import NormalDist

import jax

import numpy as np

from benchmarks.common import load_note
from reasoner.model import get_config, init_params
from reasoner.sampling import SamplingConfig
from reasoner.sampling import paged, sampler
from reasoner.sampling.engine import Engine, EngineConfig


def long_tail_lengths(rows: int, median: float, sigma: float, cap: int, seed: int = 0) -> np.ndarray:
  """Per-row response lengths: the (i + 0.5) / rows quantiles of LogNormal(log median, sigma),
  rounded, clipped to [1, cap], shuffled."""
  q = [(i + 0.5) / rows for i in range(rows)]
  lengths = np.array([median * np.exp(sigma * NormalDist().inv_cdf(p)) for p in q])
  lengths = np.clip(np.round(lengths), 1, cap).astype(np.int32)
  return np.random.default_rng(seed).permutation(lengths)


def check_long_tail(lengths: np.ndarray, median: float) -> dict:
  med = float(np.median(lengths))
  p99 = float(np.percentile(lengths, 99))
  assert abs(med - median) <= 0.05 * median, f"median {med} is not {median}"
  assert p99 >= 8 * med, f"p99 {p99} < 8 x median {med}"
  return {"median": med, "p99": p99, "max": int(lengths.max()), "mean": float(lengths.mean())}


def bench_static(params, cfg, prompts, lengths, n: int, batch: int, prompt_len: int):
  """The static sampler, `batch` rows per call; returns (seconds, KV bytes of one call)."""
  per_call = batch // n
  cap = int(lengths.max())
  width = sampler.bucket(prompt_len, (prompt_len,))
  cache_len = width + cap
  calls = []
  for i in range(0, len(prompts), per_call):
    chunk = prompts[i:i + per_call]
    longest = int(lengths[i * n:(i + len(chunk)) * n].max())
    sc = SamplingConfig(max_new_tokens=longest, greedy=True, n=n, prompt_buckets=(width,))
    tokens, positions, segments, _ = sampler.prompt_arrays(chunk, width)
    pre = jax.jit(functools.partial(sampler.prefill, cfg=cfg, cache_len=cache_len, n=n))
    dec = jax.jit(functools.partial(sampler.decode, cfg=cfg, sampling=sc, pad_id=0, eos_id=-1),
                  donate_argnums=(1,))
    pre_c = pre.lower(params, tokens, positions, segments).compile()
    cache, logits, nxt = jax.eval_shape(pre, params, tokens, positions, segments)
    dec_c = dec.lower(params, cache, logits, nxt, jax.random.PRNGKey(0)).compile()
    calls.append((pre_c, dec_c, (tokens, positions, segments), longest))
  t0 = time.perf_counter()
  for pre_c, dec_c, inputs, longest in calls:
    cache, logits, nxt = pre_c(params, *inputs)
    buf, cache = dec_c(params, cache, logits, nxt, jax.random.PRNGKey(0))
    # Rows of a call stop at their own lengths; the call runs as long as its longest row.
    assert int(np.asarray(buf.lengths).max()) == longest
  secs = time.perf_counter() - t0
  return secs, batch * cache_len * paged.kv_bytes_per_token(cfg)


def bench_engine(params, cfg, prompts, lengths, n: int, batch: int, prompt_len: int,
                 page_size: int, steps_per_sync: int, static_kv_bytes: int):
  cap = int(lengths.max())
  sc = SamplingConfig(max_new_tokens=cap, greedy=True, n=n, prompt_buckets=(prompt_len,))
  per_page = page_size * paged.kv_bytes_per_token(cfg)
  ecfg = EngineConfig(slots=batch, page_size=page_size, steps_per_sync=steps_per_sync,
                      num_pages=static_kv_bytes // per_page)
  eng = Engine(cfg, sc, pad_id=0, eos_id=-1, engine=ecfg, max_prompt_len=prompt_len)
  out, _ = eng.run(params, prompts, jax.random.PRNGKey(0), limits=lengths)  # compiles
  t0 = time.perf_counter()
  out, stats = eng.run(params, prompts, jax.random.PRNGKey(0), limits=lengths)
  secs = time.perf_counter() - t0
  np.testing.assert_array_equal(out.lengths, lengths)
  return secs, stats


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="tiny preset, small workload (smoke run)")
  ap.add_argument("--presets", default="tiny,mid")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--rows", type=int, default=256)
  ap.add_argument("--n", type=int, default=4, help="samples per prompt (a GRPO group)")
  ap.add_argument("--median", type=float, default=128)
  ap.add_argument("--sigma", type=float, default=1.0)
  ap.add_argument("--prompt_len", type=int, default=128)
  ap.add_argument("--page_size", type=int, default=32)
  ap.add_argument("--steps_per_sync", type=int, default=16)
  ap.add_argument("--dtype", default="float32")
  args = ap.parse_args(argv)
  presets = args.presets.split(",")
  if args.quick:
    presets, args.batch, args.rows, args.median, args.prompt_len = ["tiny"], 16, 64, 16, 16
    args.page_size, args.steps_per_sync = 8, 8
  lengths = long_tail_lengths(args.rows, args.median, args.sigma, cap=int(16 * args.median))
  shape = check_long_tail(lengths, args.median)
  dev = jax.devices()[0]
  print(f"jax {jax.__version__} on {dev.platform}, {load_note()}; {args.rows} rows "
        f"({args.rows // args.n} prompts x {args.n}), prompt {args.prompt_len}, response lengths "
        f"median {shape['median']:.0f} p99 {shape['p99']:.0f} max {shape['max']} mean "
        f"{shape['mean']:.0f}, batch {args.batch}, greedy, {args.dtype}")
  print(f"{'preset':<8}{'static tok/s':>14}{'engine tok/s':>14}{'ratio':>8}{'static s':>10}"
        f"{'engine s':>10}{'static KV MiB':>15}{'pool MiB':>10}{'peak used MiB':>15}"
        f"{'calls':>7}{'slot-steps':>12}{'compactions':>13}  layout")
  rows = []
  for preset in presets:
    cfg = get_config(preset, dtype=args.dtype, param_dtype=args.dtype,
                     max_seq_len=max(args.prompt_len + shape["max"], 512))
    params = init_params(cfg, jax.random.PRNGKey(0))
    prompts = np.random.default_rng(1).integers(3, cfg.vocab_size,
                                                (args.rows // args.n, args.prompt_len)).tolist()
    useful = int(lengths.sum())
    st_s, st_kv = bench_static(params, cfg, prompts, lengths, args.n, args.batch, args.prompt_len)
    en_s, stats = bench_engine(params, cfg, prompts, lengths, args.n, args.batch, args.prompt_len,
                               args.page_size, args.steps_per_sync, st_kv)
    assert stats.pool_bytes <= st_kv
    mib = 2 ** 20
    line = (f"{preset:<8}{useful / st_s:>14.0f}{useful / en_s:>14.0f}{st_s / en_s:>7.2f}x"
            f"{st_s:>10.1f}{en_s:>10.1f}{st_kv / mib:>15.1f}{stats.pool_bytes / mib:>10.1f}"
            f"{stats.peak_bytes / mib:>15.1f}{stats.decode_calls:>7}{stats.slot_steps:>12}"
            f"{stats.compactions:>13}  {stats.layout}")
    print(line, flush=True)
    rows.append({"preset": preset, "static_s": st_s, "engine_s": en_s, "ratio": st_s / en_s,
                 "static_kv": st_kv, "pool": stats.pool_bytes, "peak": stats.peak_bytes,
                 "layout": stats.layout, "compactions": stats.compactions,
                 "slot_steps": stats.slot_steps})
  return rows


if __name__ == "__main__":
  main()
