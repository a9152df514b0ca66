"""Sampler throughput: new tokens per second of `reasoner.sampling.generate` against Hugging Face
`transformers` `generate` (torch, random weights, KV cache) on the same shapes in the same run.

  python -m benchmarks.sampler [--quick] [--presets=tiny,mid] [--batches=1,64]
      [--prompt_len=128] [--new_tokens=256] [--dtype=float32] [--no_torch]
      [--torch_threads=1,2] [--cpu_devices=0] [--splits=1,2]

Both sides decode greedily for exactly `new_tokens` tokens per row (EOS disabled here, like
`min_new_tokens` on the transformers side); the time is the whole call (prefill + decode) after a
compile / warm-up call. Our decode-only time is reported too. Each side gets the best of the
ways it can use the cores it is given: torch of its thread counts (`--torch_threads`), ours of
running the rows on one device or split over several (`--splits`; on CPU the process has one
XLA device per core, `--cpu_devices`, because XLA:CPU runs a small op on one thread; the `devs`
column says which won). `GFLOP/s` is our call's model FLOPs (`model_flops`) over its time;
`ceiling`, shown where our call runs at half or more of this machine's float32 matmul rate at the
model's shapes (`gemm_flops_per_s`), i.e. is compute-bound, is the ratio a call doing those
FLOPs at that rate would reach: the most a compute-bound configuration can get. On a GPU/TPU
the batch-1 decode is compared with the memory-bandwidth roofline: (bytes of params + bytes of
KV cache read per step) / (time per step), over the device's peak HBM bandwidth.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from reasoner import sharding
from reasoner.model import get_config, init_params
from reasoner.sampling import SamplingConfig, generate, prepare

# Peak HBM bandwidth in bytes/s by `device_kind` substring (first match wins).
PEAK_BANDWIDTH = (("H200", 4.8e12), ("H100", 3.35e12), ("A100", 2.0e12), ("v5p", 2.76e12),
                  ("v5 lite", 0.82e12), ("v5e", 0.82e12), ("v4", 1.2e12))


def peak_bandwidth(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name, bw in PEAK_BANDWIDTH:
    if name.lower() in kind.lower():
      return bw
  return None


def _time(fn, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def bench_ours(cfg, batch: int, prompt_len: int, new_tokens: int, repeats: int,
               mesh=None, engine: str = "static") -> dict:
  """Our `generate` (`engine`: the static sampler or the rollout engine), on one device or with
  the rows split over `mesh`'s data axis."""
  params = init_params(cfg, jax.random.PRNGKey(0))
  if mesh is not None:
    params = sharding.shard_params(params, cfg, mesh)
  prompts = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, prompt_len)).tolist()
  sc = SamplingConfig(max_new_tokens=new_tokens, greedy=True, prompt_buckets=(prompt_len,),
                      engine=engine)
  rng = jax.random.PRNGKey(1)
  run = lambda: generate(params, cfg, prompts, sc, rng, pad_id=0, eos_id=-1, mesh=mesh)
  t0 = time.perf_counter()
  out = run()
  compile_s = time.perf_counter() - t0
  assert out.tokens.shape == (batch, new_tokens) and (out.lengths == new_tokens).all()
  total = _time(run, repeats)

  if engine != "static":  # the decode-alone split below times the static sampler's programs
    return {"total_s": total, "decode_s": None, "compile_s": compile_s,
            "tok_s": batch * new_tokens / total}
  # Decode alone: the same compiled programs and placed inputs, prefill outside the timer.
  call = prepare(cfg, prompts, sc, rng, pad_id=0, eos_id=-1, mesh=mesh)

  def decode_only():
    cache, logits, nxt = call.prefill(params, *call.inputs)
    jax.block_until_ready(cache)
    t0 = time.perf_counter()
    buf, cache = call.decode(params, cache, logits, nxt, call.rng)
    jax.block_until_ready(buf.tokens)
    return time.perf_counter() - t0

  decode_s = min(decode_only() for _ in range(repeats))
  return {"total_s": total, "decode_s": decode_s, "compile_s": compile_s,
          "tok_s": batch * new_tokens / total}


def hf_config(cfg):
  from transformers import LlamaConfig
  return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                     intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers,
                     num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                     head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len,
                     rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
                     tie_word_embeddings=cfg.tie_embeddings, attention_bias=cfg.qkv_bias,
                     pad_token_id=0, eos_token_id=1, bos_token_id=2)


def bench_torch(cfg, batch: int, prompt_len: int, new_tokens: int, repeats: int,
                threads: int, device: str = "cpu") -> dict:
  """transformers LlamaForCausalLM.generate, greedy, KV cache, exactly `new_tokens` per row."""
  import torch
  from transformers import LlamaForCausalLM
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = LlamaForCausalLM(hf_config(cfg)).eval().to(device)
  ids = torch.from_numpy(
      np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, prompt_len)).astype(np.int64))
  ids = ids.to(device)
  mask = torch.ones_like(ids)

  def run(n):
    with torch.inference_mode():
      out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                           min_new_tokens=n, use_cache=True, pad_token_id=0, eos_token_id=1)
    if device != "cpu":
      torch.cuda.synchronize()
    assert out.shape == (batch, prompt_len + n), out.shape
  run(2)  # warm-up
  total = _time(lambda: run(new_tokens), repeats)
  first = _time(lambda: run(1), repeats)  # prefill + one token
  return {"total_s": total, "tok_s": batch * new_tokens / total, "threads": threads,
          "decode_tok_s": batch * (new_tokens - 1) / max(total - first, 1e-9)}


def model_flops(cfg, batch: int, prompt_len: int, new_tokens: int) -> float:
  """Multiply-adds x 2 of one generate call: the weight matmuls of every prompt and new token
  (the output projection only where logits are needed: the last prompt token and each new one)
  and the attention over each token's causal context."""
  per_token = 2 * cfg.n_layers * cfg.d_model * (
      (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim + cfg.n_heads * cfg.head_dim
      + 3 * cfg.d_ff)
  head = 2 * cfg.d_model * cfg.vocab_size
  attn_per_slot = 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim  # scores + weighted values
  total = prompt_len + new_tokens
  context = (prompt_len * (prompt_len + 1) / 2  # prompt token i sees i + 1 slots
             + sum(range(prompt_len + 1, total + 1)))  # the new tokens
  return batch * (total * per_token + (new_tokens + 1) * head + attn_per_slot * context)


def gemm_flops_per_s(cfg, batch: int, repeats: int = 5) -> float:
  """This machine's float32 matmul rate at the model's MLP shape ([batch, d_model] x
  [d_model, d_ff], a dependent chain over distinct weights so that they stream from memory like a
  decode's): the compute ceiling of a compute-bound generate."""
  d, f = cfg.d_model, cfg.d_ff
  keys = jax.random.split(jax.random.PRNGKey(0), 8)
  ws = [(jax.random.normal(k, (d, f), jnp.float32), jax.random.normal(k, (f, d), jnp.float32))
        for k in keys]
  loops = 4

  @jax.jit
  def chain(x, ws):
    def body(_, x):
      for up, down in ws:
        x = (x @ up) @ down * 1e-3
      return x
    return jax.lax.fori_loop(0, loops, body, x)

  x = jnp.ones((batch, d), jnp.float32)
  chain(x, ws).block_until_ready()
  secs = _time(lambda: chain(x, ws).block_until_ready(), repeats)
  return loops * len(ws) * 2 * 2 * batch * d * f / secs


def roofline(cfg, batch: int, prompt_len: int, new_tokens: int, decode_s: float) -> tuple:
  """(achieved bytes/s, fraction of peak) of the decode: params + live KV cache per step."""
  # The decode reads every weight once per step in the compute dtype (they are cast once per
  # call), except the input embedding table when it is not tied (only B rows are gathered).
  read_params = cfg.n_params - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model)
  param_bytes = read_params * jnp.dtype(cfg.dtype).itemsize
  kv_per_slot = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize
  mean_slots = prompt_len + new_tokens / 2
  step_bytes = param_bytes + batch * kv_per_slot * mean_slots
  achieved = step_bytes * new_tokens / decode_s
  peak = peak_bandwidth(jax.devices()[0])
  return achieved, (achieved / peak if peak else None)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="tiny preset, small shapes (smoke run)")
  ap.add_argument("--presets", default="tiny,mid")
  ap.add_argument("--batches", default="1,64")
  ap.add_argument("--prompt_len", type=int, default=128)
  ap.add_argument("--new_tokens", type=int, default=256)
  ap.add_argument("--dtype", default="float32", help="our compute/param dtype (torch stays fp32)")
  ap.add_argument("--repeats", type=int, default=1)
  ap.add_argument("--no_torch", action="store_true", help="skip the transformers side")
  ap.add_argument("--engine", default="static",
                  help="our sampler: static (one lockstep batch; the figures in BUILD_NOTES.md "
                       "before the rollout engine) or paged (the rollout engine, the default of "
                       "`generate`); the decode-only column is the static sampler's either way")
  ap.add_argument("--torch_device", default="cpu", help="cpu or cuda (transformers side)")
  ap.add_argument("--cpu_devices", type=int, default=0,
                  help="XLA:CPU devices of this process: 0 = one per core. XLA:CPU runs a small op "
                       "on one thread, so splitting the rows over per-core devices (a data mesh) is "
                       "how a small model's decode uses every core")
  ap.add_argument("--splits", default="",
                  help="comma list of device counts to split our rows over (best kept, like "
                       "--torch_threads); default: 1 and all devices. Counts that do not divide the "
                       "batch are skipped")
  ap.add_argument("--torch_threads", default="",
                  help="comma list of torch thread counts to try (best kept); default: all cores. "
                       "On a loaded machine torch's OpenMP spin-waits make 1 thread much faster.")
  args = ap.parse_args(argv)
  presets = args.presets.split(",")
  batches = [int(b) for b in args.batches.split(",")]
  if args.quick:
    presets, batches, args.prompt_len, args.new_tokens = ["tiny"], [1, 8], 32, 32
  use_torch = not args.no_torch
  if use_torch:
    try:
      import torch  # noqa: F401
      import transformers  # noqa: F401
    except ImportError:
      print("torch / transformers not importable: skipping the transformers side")
      use_torch = False
  torch_threads = ([int(t) for t in args.torch_threads.split(",")] if args.torch_threads
                   else [sharding.cpu_cores()])
  sharding.use_cpu_devices(args.cpu_devices)
  dev = jax.devices()[0]
  n_dev = len(jax.devices())
  splits = sorted({int(x) for x in args.splits.split(",")} if args.splits else {1, n_dev})
  if max(splits) > n_dev or min(splits) < 1:
    raise SystemExit(f"--splits={args.splits}: this process has {n_dev} device(s)")
  print(f"jax {jax.__version__} on {dev.platform} ({getattr(dev, 'device_kind', '?')}), "
        f"{sharding.cpu_cores()} CPU cores, {n_dev} device(s); prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, greedy, dtype {args.dtype}, {args.engine} sampler")
  header = (f"{'preset':<8}{'batch':>6}{'devs':>5}{'ours tok/s':>12}{'decode tok/s':>14}"
            f"{'compile s':>11}{'GFLOP/s':>9}{'hf tok/s':>14}{'hf decode':>11}{'ratio':>8}"
            f"{'ceiling':>9}{'roofline':>10}")
  print(header)
  rows = []
  for preset in presets:
    cfg = get_config(preset, dtype=args.dtype, param_dtype=args.dtype,
                     max_seq_len=max(args.prompt_len + args.new_tokens, 512))
    for b in batches:
      ours = None
      for split in [s for s in splits if b % s == 0 and (s == 1 or b > 1)] or [1]:
        mesh = (sharding.make_mesh(data=split, fsdp=1, devices=jax.devices()[:split])
                if split > 1 else None)
        r = bench_ours(cfg, b, args.prompt_len, args.new_tokens, args.repeats, mesh,
                       engine=args.engine)
        r["split"] = split
        ours = r if ours is None or r["tok_s"] > ours["tok_s"] else ours
      hf = None
      for threads in (torch_threads if use_torch else []):
        r = bench_torch(cfg.replace(dtype="float32", param_dtype="float32"), b, args.prompt_len,
                        args.new_tokens, args.repeats, threads, args.torch_device)
        hf = r if hf is None or r["tok_s"] > hf["tok_s"] else hf
      roof = "-"
      if dev.platform != "cpu" and b == 1 and ours["decode_s"]:
        _, frac = roofline(cfg, b, args.prompt_len, args.new_tokens, ours["decode_s"])
        roof = f"{frac:.1%}" if frac is not None else "?"
      dec_tok_s = (f"{b * args.new_tokens / ours['decode_s']:.0f}" if ours["decode_s"] else "-")
      hf_s = f"{hf['tok_s']:.0f} ({hf['threads']}t)" if hf else "-"
      hf_dec = f"{hf['decode_tok_s']:.0f}" if hf else "-"
      ratio = f"{ours['tok_s'] / hf['tok_s']:.2f}x" if hf else "-"
      flops = model_flops(cfg, b, args.prompt_len, args.new_tokens)
      gflops = flops / ours["total_s"] / 1e9
      # Where the call is compute-bound (at least half this machine's float32 matmul rate at the
      # model's shapes), the best ratio a call doing these FLOPs at that rate could get.
      ceiling = "-"
      if hf and dev.platform == "cpu" and args.dtype == "float32":
        peak = gemm_flops_per_s(cfg, b)
        if gflops * 1e9 >= peak / 2:
          ceiling = f"{hf['total_s'] / (flops / peak):.2f}x"
      line = (f"{preset:<8}{b:>6}{ours['split']:>5}{ours['tok_s']:>12.0f}{dec_tok_s:>14}"
              f"{ours['compile_s']:>11.1f}{gflops:>9.1f}{hf_s:>14}{hf_dec:>11}{ratio:>8}"
              f"{ceiling:>9}{roof:>10}")
      print(line, flush=True)
      rows.append(line)
  return rows


if __name__ == "__main__":
  main()
