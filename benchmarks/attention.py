"""Training attention on the device it runs on: each implementation that can run here, checked
against a float32 reference (values and q / k / v gradients) and timed forward + backward.

  python -m benchmarks.attention [--quick] [--lengths=1024,4096,8192] [--batch=2] [--heads=14]
      [--kv_heads=2] [--head_dim=64] [--dtype=bfloat16] [--steps=5] [--check_max=4096]
      [--impls=dense,blockwise,cudnn,splash] [--packed]

Inputs: `batch` rows of `length` tokens, row 0 one whole sequence, every other row left-padded
by length / 8 (the GRPO / prefill shape), `packed=False` so the cudnn path may run; with
--packed, SFT's shape instead: each row packs 3 sequences of lengths 1/2, 1/4 and 1/8 of the row,
then padding, and the calls say packed=True (cudnn then runs its mask-bias call); the
Qwen2.5-0.5B head layout by default (14 query / 2 KV heads of 64). Implementations: `dense` and `blockwise`
everywhere, `cudnn` on an NVIDIA GPU (compute capability >= 8.0, bf16 / fp16), `splash` on a
TPU; an implementation that cannot run here is listed with the reason.

Columns:
  max err / grad err   |ours - reference| on the non-padding query rows (output), and the
                       largest |dq|, |dk|, |dv| difference over the largest reference entry;
                       the reference is `dense` on the inputs cast to float32 (lengths up to
                       --check_max; beyond it "-")
  ms                   median of `steps` timed calls of the jitted forward + backward
  TFLOP/s              causal attention FLOPs of forward + backward (3 x 4 h d per query-key
                       pair with the key at or before the query) over the time
  temps MiB            XLA's compiled temporaries of the forward + backward program
  vs dense             dense ms / this ms (> 1: faster than the dense path, same run)
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from reasoner.model import attention as A

IMPLS = ("dense", "blockwise", "cudnn", "splash")


def inputs(batch: int, t: int, h: int, kv: int, d: int, dtype, seed: int = 0,
           packed: bool = False):
  """q [b, t, h, d], k, v [b, t, kv, d] (normal), segment ids [b, t]: row 0 whole, the other
  rows left-padded by t // 8; packed: every row segments 1, 2, 3 of t/2, t/4, t/8 tokens, then
  padding."""
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(batch, t, n, d)), dtype) for n in (h, kv, kv))
  seg = np.ones((batch, t), np.int32)
  if packed:
    seg[:] = 0
    seg[:, :t // 2], seg[:, t // 2:3 * t // 4], seg[:, 3 * t // 4:7 * t // 8] = 1, 2, 3
  else:
    seg[1:, :t // 8] = 0
  return q, k, v, jnp.asarray(seg)


def loss_fn(impl: str, seg, packed: bool = False):
  """A scalar of the output's non-padding rows with fixed weights, so every row and head has a
  gradient (the forward + backward timed and checked)."""
  keep = (seg != 0).astype(jnp.float32)[:, :, None, None]

  def loss(q, k, v):
    out = A.attention(q, k, v, seg, seg, impl=impl, packed=packed).astype(jnp.float32)
    w = jnp.cos(jnp.arange(out.shape[-1], dtype=jnp.float32))
    return (out * w * keep).sum(), out
  return loss


def fwd_bwd(impl: str, seg, packed: bool = False):
  """jit(q, k, v -> (output, (dq, dk, dv)))."""
  grad = jax.value_and_grad(loss_fn(impl, seg, packed), argnums=(0, 1, 2), has_aux=True)
  return jax.jit(lambda q, k, v: (lambda r: (r[0][1], r[1]))(grad(q, k, v)))


def why_not(impl: str, q, k, packed: bool = False) -> str | None:
  """None when `impl` can run these shapes here, else the reason."""
  if impl in ("dense", "blockwise"):
    return None
  try:
    A.select_impl(q, k, impl=impl, packed=packed)
  except ValueError as e:
    return str(e)
  return None


def causal_flops(batch: int, t: int, h: int, d: int, seg) -> float:
  """Forward + backward FLOPs over the real (query, key) pairs: each sequence (a run of one
  non-zero segment id) of n tokens has n (n + 1) / 2 of them; 4 h d FLOPs each forward
  (scores, weighted values), 3x with the backward."""
  seg = np.asarray(seg)
  n = np.array([(row == s).sum() for row in seg for s in np.unique(row[row != 0])], np.float64)
  return float(3 * 4 * h * d * (n * (n + 1) / 2).sum())


def errors(out, grads, ref_out, ref_grads, seg) -> tuple[float, float]:
  keep = np.asarray(seg != 0)
  out_err = float(np.abs(np.asarray(out, np.float32)[keep]
                         - np.asarray(ref_out, np.float32)[keep]).max())
  grad_err = 0.0
  for g, r in zip(grads, ref_grads):
    r = np.asarray(r, np.float32)
    grad_err = max(grad_err, float(np.abs(np.asarray(g, np.float32) - r).max()
                                   / max(np.abs(r).max(), 1e-30)))
  return out_err, grad_err


def temps_mib(fn, *args) -> float | None:
  try:
    mem = fn.lower(*args).compile().memory_analysis()
    return mem.temp_size_in_bytes / 2**20 if mem is not None else None
  except Exception:  # noqa: BLE001 (some backends report no memory analysis)
    return None


def timed(fn, args, steps: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def run_length(args, t: int, impls: list[str]) -> list[dict]:
  dtype = jnp.dtype(args.dtype)
  q, k, v, seg = inputs(args.batch, t, args.heads, args.kv_heads, args.head_dim, dtype,
                        packed=args.packed)
  ref = None
  if t <= args.check_max:
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref = jax.block_until_ready(fwd_bwd("dense", seg, args.packed)(*f32))
  flops = causal_flops(args.batch, t, args.heads, args.head_dim, seg)
  rows = []
  for impl in impls:
    reason = why_not(impl, q, k, args.packed)
    if reason is not None:
      rows.append({"impl": impl, "t": t, "skipped": reason})
      continue
    fn = fwd_bwd(impl, seg, args.packed)
    out, grads = jax.block_until_ready(fn(q, k, v))
    finite = all(bool(jnp.isfinite(x.astype(jnp.float32)).all()) for x in (out, *grads))
    err = errors(out, grads, *ref, seg) if ref is not None else (None, None)
    seconds = timed(fn, (q, k, v), args.steps)
    rows.append({"impl": impl, "t": t, "ms": 1e3 * seconds, "tflops": flops / seconds / 1e12,
                 "temps": temps_mib(fn, q, k, v), "err": err[0], "grad_err": err[1],
                 "finite": finite})
  return rows


def fmt(x, spec: str) -> str:
  return "-" if x is None else format(x, spec)


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="smoke run: lengths 128,256, 4/2 heads")
  ap.add_argument("--lengths", default="1024,4096,8192")
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--heads", type=int, default=14)
  ap.add_argument("--kv_heads", type=int, default=2)
  ap.add_argument("--head_dim", type=int, default=64)
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--check_max", type=int, default=4096,
                  help="longest length checked against the float32 dense reference")
  ap.add_argument("--impls", default=",".join(IMPLS))
  ap.add_argument("--packed", action="store_true",
                  help="packed rows (3 sequences each, packed=True): SFT's shape")
  args = ap.parse_args(argv)
  if args.quick:
    args.lengths, args.heads, args.kv_heads, args.steps = "128,256", 4, 2, 2
  impls = [i for i in args.impls.split(",") if i]
  if set(impls) - set(IMPLS):
    raise SystemExit(f"--impls takes {','.join(IMPLS)}; got {args.impls}")
  dev = jax.devices()[0]
  rows_note = ("packed rows: 3 sequences of t/2, t/4, t/8" if args.packed
               else "rows 1.. left-padded by t/8")
  print(f"jax {jax.__version__} on {dev.platform} ({getattr(dev, 'device_kind', '?')}); "
        f"{args.batch} rows ({rows_note}), {args.heads}/{args.kv_heads} heads of "
        f"{args.head_dim}, {args.dtype}, forward + backward, median of {args.steps}")
  print(f"{'impl':<11}{'t':>6}{'ms':>10}{'TFLOP/s':>9}{'temps MiB':>11}{'max err':>10}"
        f"{'grad err':>10}{'vs dense':>9}")
  rows = []
  for t in (int(x) for x in args.lengths.split(",")):
    got = run_length(args, t, impls)
    dense = next((r["ms"] for r in got if r["impl"] == "dense" and "ms" in r), None)
    for r in got:
      if "skipped" in r:
        print(f"{r['impl']:<11}{t:>6}  not run: {r['skipped']}")
        continue
      r["vs_dense"] = dense / r["ms"] if dense else None
      flag = "" if r["finite"] else "  NON-FINITE"
      print(f"{r['impl']:<11}{t:>6}{r['ms']:>10.2f}{fmt(r['tflops'], '.2f'):>9}"
            f"{fmt(r['temps'], '.0f'):>11}{fmt(r['err'], '.1e'):>10}{fmt(r['grad_err'], '.1e'):>10}"
            f"{fmt(r['vs_dense'], '.2f'):>9}{flag}", flush=True)
    rows += got
  return rows


if __name__ == "__main__":
  main()
