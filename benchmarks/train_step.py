"""Train-step throughput and MFU against Hugging Face `transformers` (torch), and the GRPO
step's rollout / learn split.

  python -m benchmarks.train_step [--quick] [--parts=sft,grpo] [--preset=qwen2_5_0_5b]
      [--layers=2] [--rows=2] [--seq=256] [--dtypes=float32,bfloat16] [--remat=off]
      [--steps=2] [--no_torch] [--torch_threads=1,2] [--torch_device=cpu] [--decode=auto]
      [--grpo_steps=5] [--grpo_warmup=1] [--grpo_layers=4] [--grpo_new_tokens=128]
      [--tunix_python=PATH|none] [--verbose]
  # the full 24-layer shape on a GPU, torch on the GPU too:
  python -m benchmarks.train_step --layers=0 --rows=8 --seq=2048 --torch_device=cuda

SFT part: one jitted train step (forward + backward + clip + AdamW) of `sft_loss` through
`make_train_step`, random weights (float32 master weights; bfloat16 is
`mixed_precision(cfg)`), `rows` x `seq` random tokens, loss on every token that has a
predecessor. Peer: the same shape in transformers (`Qwen2ForCausalLM` / `LlamaForCausalLM` by
the preset's arch, random init), labels = input ids, clip 1.0 + `torch.optim.AdamW`, bfloat16
by autocast on float32 weights, gradient checkpointing where remat is on; best of the torch
thread counts. Each side: one warm-up (compile) step, then the best of `steps` timed steps.

  ours tok/s / hf tok/s  rows x seq / (seconds per step); ratio = ours / hf (> 1: we are faster)
  GFLOP/step             model FLOPs of one step, `train_flops` (no remat recompute counted)
  GFLOP/s, MFU           GFLOP/step / our step time, and that over the peak in the header: on
                         CPU this machine's measured float32 matmul rate (`gemm_flops_per_s`
                         of benchmarks/sampler.py), on GPU / TPU the chip's dense bf16 peak
On GPU / TPU (or --decode=on) the batch-1 decode of the same shape in bfloat16 is timed with
the sampler benchmark's machinery and compared with the HBM roofline.

GRPO part: the library's GRPO halves (`make_collect` / `make_learn` of reasoner/stages/grpo.py,
as `run_grpo` wires them) on a Qwen2-style model of ~4.2M params (`grpo_model_config`), 4
prompts x 4 samples x 128 new tokens, beta 0.04 (so a reference log-prob pass), one update,
no dynamic sampling / replay / entropy term. Median seconds per step after the warm-up steps:
rollout (`time/rollout_s`), learn (`time/learn_s`), and within learn the reference log-prob
pass (timed around the library's own eval fn) and the rest (the update), with their model
FLOP rates over the padded rows (`train_flops`; a third of it for the forward-only pass).
Peer: Tunix's GRPO step on the same shape in the same run (`benchmarks/tunix_grpo.py`, run in a
subprocess by `--tunix_python`, or by this interpreter if it has Tunix), part by part; the
speed ratio is Tunix's seconds over ours (> 1: we are faster). Tunix is no dependency of this
project; without it the issue's quoted figures are printed instead.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from unittest import mock

import jax
import numpy as np

from benchmarks.common import load_note, task_tokenizer
from benchmarks.sampler import bench_ours as bench_decode, gemm_flops_per_s, roofline
from reasoner import sharding
from reasoner.losses import sft_loss
from reasoner.model import ModelConfig, get_config, init_params
from reasoner.train import (OptimConfig, init_train_state, make_optimizer, make_train_step,
                            mixed_precision)

# Dense bf16 peak FLOP/s by `device_kind` substring (first match wins).
PEAK_FLOPS = (("H200", 989e12), ("H100", 989e12), ("v6e", 918e12), ("v6 lite", 918e12),
              ("v5p", 459e12), ("v5e", 197e12), ("v5 lite", 197e12), ("v4", 275e12))
# The figures for the GRPO shape (shown when Tunix is not run beside ours).
QUOTED_GRPO = "competitor 1.64 s/step; ours 1.74 s/step of which 1.24 s learn"
TUNIX_HINT = ("python -m venv --system-site-packages V && V/bin/pip install google-tunix==0.1.7, "
              "then --tunix_python=V/bin/python")
GEMM_ROWS = 256  # rows of the CPU peak's matmul (compute-bound at these widths)


def peak_flops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name, flops in PEAK_FLOPS:
    if name.lower() in kind.lower():
      return flops
  return None


def matmul_params(cfg: ModelConfig) -> int:
  """Weights that take part in a matmul per token: the layers' projections and the output
  head (the tied embedding counts once, as the head; its gather is no matmul)."""
  d, f, h, k, hd = cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  per_layer = d * hd * (h + 2 * k) + h * hd * d + 3 * d * f
  return cfg.n_layers * per_layer + cfg.vocab_size * d


def train_flops(cfg: ModelConfig, rows: int, seq: int) -> float:
  """Model FLOPs of one train step on [rows, seq]: 6 x matmul params x tokens (forward 2,
  backward 4) plus causal attention, 3 x (4 x layers x heads x head_dim) per (query, key) pair
  (scores and weighted values; token i sees i + 1 keys)."""
  pairs = seq * (seq + 1) / 2
  attn = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * pairs
  return rows * (6 * matmul_params(cfg) * seq + attn)


def sft_batch(cfg: ModelConfig, rows: int, seq: int) -> dict:
  """Random tokens [rows, seq] as an SFT batch; every token but the first is a loss token."""
  tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (rows, seq)).astype(np.int32)
  mask = np.ones((rows, seq), np.float32)
  mask[:, 0] = 0  # nothing predicts it (transformers' labels skip it too)
  return {"tokens": tokens, "positions": np.broadcast_to(np.arange(seq, dtype=np.int32),
                                                         (rows, seq)).copy(),
          "segment_ids": np.ones((rows, seq), np.int32), "loss_mask": mask}


OPTIM = OptimConfig(learning_rate=1e-5, schedule="constant", weight_decay=0.0, grad_clip=1.0)


def _block(tree):
  return jax.block_until_ready(tree)


def bench_ours_train(cfg: ModelConfig, rows: int, seq: int, steps: int) -> dict:
  """Our jitted SFT train step: {'step_s' (best of `steps`), 'compile_s', 'loss'}."""
  optimizer = make_optimizer(OPTIM)
  state = init_train_state(init_params(cfg, jax.random.PRNGKey(0)), optimizer)
  step = make_train_step(functools.partial(sft_loss, model_cfg=cfg), optimizer)
  batch = jax.device_put(sft_batch(cfg, rows, seq))
  rng = jax.random.PRNGKey(1)
  t0 = time.perf_counter()
  state, metrics = _block(step(state, batch, rng))
  compile_s = time.perf_counter() - t0
  loss = float(metrics["loss"])
  best = float("inf")
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = _block(step(state, batch, rng))
    best = min(best, time.perf_counter() - t0)
  return {"step_s": best, "compile_s": compile_s, "loss": loss}


def bench_torch_train(cfg: ModelConfig, rows: int, seq: int, steps: int, threads: list[int],
                      dtype: str, remat: bool, device: str = "cpu") -> dict:
  """transformers' model of the same shape: {'step_s' (best over threads x steps), 'threads',
  'loss'}; bfloat16 = autocast over float32 weights."""
  import torch
  import transformers
  from reasoner.checkpoint.hf_io import config_to_hf
  torch.manual_seed(0)
  hf = transformers.AutoConfig.for_model(**config_to_hf(cfg))
  model = transformers.AutoModelForCausalLM.from_config(hf).to(device).train()
  if remat:  # renamed in transformers 5
    (getattr(model, "activation_checkpointing_enable", None)
     or model.gradient_checkpointing_enable)()
  model.config.use_cache = False
  opt = torch.optim.AdamW(model.parameters(), lr=OPTIM.learning_rate, betas=(OPTIM.b1, OPTIM.b2),
                          eps=OPTIM.eps, weight_decay=0.0)
  ids = torch.from_numpy(sft_batch(cfg, rows, seq)["tokens"].astype(np.int64)).to(device)
  kind = torch.device(device).type

  def step():
    with torch.autocast(kind, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
      loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach().item()  # waits for the device

  first_loss = None
  best = {"step_s": float("inf")}
  for n in threads:
    torch.set_num_threads(n)
    loss = step()  # warm-up
    first_loss = loss if first_loss is None else first_loss
    for _ in range(steps):
      t0 = time.perf_counter()
      step()
      dt = time.perf_counter() - t0
      if dt < best["step_s"]:
        best = {"step_s": dt, "threads": n}
  return {**best, "loss": first_loss}


def run_sft(args, dev) -> list[str]:
  base = get_config(args.preset, max_seq_len=max(args.seq, 512))
  if args.layers:
    base = base.replace(n_layers=args.layers)
  on_cpu = dev.platform == "cpu"
  if on_cpu:
    peak = gemm_flops_per_s(base, GEMM_ROWS)
    peak_note = (f"peak = measured float32 matmul rate of this CPU, {peak / 1e9:.1f} GFLOP/s "
                 f"([{GEMM_ROWS}, {base.d_model}] x [{base.d_model}, {base.d_ff}])")
  else:
    peak = peak_flops(dev)
    peak_note = (f"peak = {dev.device_kind} dense bf16, {peak / 1e12:.0f} TFLOP/s" if peak
                 else f"peak of {dev.device_kind} unknown: no MFU")
  flops = train_flops(base, args.rows, args.seq)
  print(f"SFT train step: {args.preset}, {base.n_layers} layers, {args.rows} rows x {args.seq} "
        f"tokens, {base.n_params / 1e6:.1f}M params ({matmul_params(base) / 1e6:.1f}M in "
        f"matmuls), AdamW; best of {args.steps} steps after a warm-up; {peak_note}")
  print(f"{'part':<5}{'dtype':<10}{'remat':<6}{'ours tok/s':>11}{'s/step':>8}{'compile s':>10}"
        f"{'hf tok/s':>13}{'ratio':>7}{'GFLOP/step':>11}{'GFLOP/s':>9}{'MFU':>7}"
        f"{'loss ours/hf':>14}")
  tokens = args.rows * args.seq
  lines = []
  for dtype in args.dtypes.split(","):
    for remat in args.remat.split(","):
      cfg = base.replace(remat=remat == "on")
      cfg = mixed_precision(cfg, dtype) if dtype != "float32" else cfg
      ours = bench_ours_train(cfg, args.rows, args.seq, args.steps)
      hf = (bench_torch_train(cfg, args.rows, args.seq, args.steps, args.threads, dtype,
                              remat == "on", args.torch_device) if args.use_torch else None)
      achieved = flops / ours["step_s"]
      hf_s = f"{tokens / hf['step_s']:.0f} ({hf['threads']}t)" if hf else "-"
      ratio = f"{hf['step_s'] / ours['step_s']:.2f}x" if hf else "-"
      mfu = f"{achieved / peak:.1%}" if peak else "-"
      loss = f"{ours['loss']:.2f}/" + (f"{hf['loss']:.2f}" if hf else "-")
      line = (f"{'sft':<5}{dtype:<10}{remat:<6}{tokens / ours['step_s']:>11.0f}"
              f"{ours['step_s']:>8.2f}{ours['compile_s']:>10.1f}{hf_s:>13}{ratio:>7}"
              f"{flops / 1e9:>11.1f}{achieved / 1e9:>9.1f}{mfu:>7}{loss:>14}")
      print(line, flush=True)
      lines.append(line)
  if args.decode == "on" or (args.decode == "auto" and not on_cpu):
    lines.append(run_decode(base, args.repeats_decode))
  return lines


def run_decode(base: ModelConfig, repeats: int, prompt_len: int = 128,
               new_tokens: int = 256) -> str:
  """Batch-1 bfloat16 decode of `base`'s shape: tok/s and the HBM roofline fraction."""
  cfg = base.replace(dtype="bfloat16", param_dtype="bfloat16",
                     max_seq_len=max(base.max_seq_len, prompt_len + new_tokens))
  r = bench_decode(cfg, 1, prompt_len, new_tokens, repeats)
  achieved, frac = roofline(cfg, 1, prompt_len, new_tokens, r["decode_s"])
  line = (f"decode batch 1, bfloat16, {prompt_len} + {new_tokens} tokens: "
          f"{new_tokens / r['decode_s']:.0f} tok/s, {achieved / 1e9:.1f} GB/s read = "
          + (f"{frac:.1%} of the HBM peak" if frac is not None else "? of the peak (unknown device)"))
  print(line, flush=True)
  return line


def grpo_model_config(n_layers: int = 4) -> ModelConfig:
  """The GRPO comparison's Qwen2-style shape: vocab 4096, d 256, 4 layers, 4 query / 2 KV heads
  of 64, d_ff 768, QKV bias, tied embeddings: 4.20M params at 4 layers."""
  return ModelConfig(arch="qwen2", vocab_size=4096, d_model=256, n_layers=n_layers, n_heads=4,
                     n_kv_heads=2, head_dim=64, d_ff=768, max_seq_len=512, rope_theta=1e6,
                     qkv_bias=True, tie_embeddings=True)


def run_grpo_split(args) -> list[str]:
  from configs.pipeline import tiny
  from reasoner.losses.grpo import grpo_loss
  from reasoner.io.metrics_log import MetricsWriter
  from reasoner.stages import grpo
  from reasoner.stages.context import StageContext
  from reasoner.train import make_eval_fn

  cfg = tiny()
  cfg.grpo.update(dict(prompts_per_step=4, group_size=4, max_new_tokens=args.grpo_new_tokens,
                       epochs=1, minibatches=1, dynamic_sampling=False, replay_weight=0.0))
  cfg.grpo.loss.update(dict(beta=0.04, entropy_coef=0.0))
  model_cfg = grpo_model_config(args.grpo_layers)
  tokenizer = task_tokenizer(cfg)  # 512 pieces; ids above it are sampled but decode to nothing
  workdir = tempfile.mkdtemp(prefix="bench_train_step_")
  mesh = sharding.make_mesh(1, -1, 1, devices=jax.devices()[:1])
  ctx = StageContext(cfg, workdir, mesh, model_cfg, tokenizer,
                     MetricsWriter(workdir, tensorboard=False))
  params = sharding.shard_params(init_params(model_cfg, jax.random.PRNGKey(0)), model_cfg, mesh)

  ref_s = []

  def timed_eval_fn(fn, mesh=None, **kw):  # the learn half's log-prob pass, timed where it runs
    inner = make_eval_fn(fn, mesh, **kw)

    def run(p, batch):
      t0 = time.perf_counter()
      out = jax.block_until_ready(inner(p, batch))
      ref_s.append(time.perf_counter() - t0)
      return out
    return run

  # As run_grpo wires them.
  loss_cfg = grpo.grpo_config(cfg.grpo)
  optimizer = make_optimizer(cfg.grpo.optim)
  state = init_train_state(params, optimizer, mesh=mesh, param_shardings=ctx.param_shardings)
  loss_fn = functools.partial(grpo_loss, model_cfg=model_cfg, config=loss_cfg)
  collect = grpo.make_collect(ctx)
  with mock.patch.object(grpo, "make_eval_fn", timed_eval_fn):
    learn = grpo.make_learn(ctx, optimizer, loss_fn, ref_params=params)

  rows = []
  rng = jax.random.PRNGKey(1)
  for step in range(args.grpo_warmup + args.grpo_steps):
    key = jax.random.fold_in(rng, step)
    t0 = time.perf_counter()
    n_ref = len(ref_s)
    gb = collect(state.params, step, key)
    state, m = learn(state, gb, step, key)
    wall = time.perf_counter() - t0
    assert len(ref_s) == n_ref + 1, "expected one log-prob pass (the reference) per learn"
    update_flops = train_flops(model_cfg, *gb.rows["tokens"].shape)  # the padded rows
    rows.append({"rollout": m["time/rollout_s"], "learn": m["time/learn_s"], "ref": ref_s[-1],
                 "update": m["time/learn_s"] - ref_s[-1], "step": wall,
                 "length": m["response_length"], "width": gb.rows["tokens"].shape[1],
                 "ref_flops": update_flops / 3, "update_flops": update_flops})
  if args.verbose:
    for i, r in enumerate(rows):
      print(f"  step {i}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
  rows = rows[args.grpo_warmup:]
  med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
  print(f"GRPO step: Qwen2-style {model_cfg.n_params / 1e6:.2f}M params (vocab "
        f"{model_cfg.vocab_size}, d {model_cfg.d_model}, {model_cfg.n_layers} layers, "
        f"{model_cfg.n_heads}/{model_cfg.n_kv_heads} heads of {model_cfg.head_dim}, d_ff "
        f"{model_cfg.d_ff}), 4 prompts x 4 samples x {args.grpo_new_tokens} new tokens (mean "
        f"{med['length']:.0f} sampled; rows {med['width']:.0f} wide), beta 0.04, 1 update; "
        f"median of {args.grpo_steps} steps after {args.grpo_warmup} warm-up; GFLOP/s = model "
        f"FLOPs of the padded rows (forward; forward + backward) / time")
  print(f"{'part':<5}{'phase':<16}{'s/step':>8}{'share':>7}{'GFLOP/s':>9}")
  lines = []
  for name, key in (("rollout", "rollout"), ("learn", "learn"), ("  ref logprobs", "ref"),
                    ("  update", "update"), ("step", "step")):
    rate = (f"{med[key + '_flops'] / med[key] / 1e9:.1f}" if key + "_flops" in med else "-")
    line = f"{'grpo':<5}{name:<16}{med[key]:>8.3f}{med[key] / med['step']:>7.0%}{rate:>9}"
    print(line)
    lines.append(line)
  peer = run_tunix(args) if args.tunix_python != "none" else None
  if isinstance(peer, dict):
    lines += tunix_rows(peer, med)
  else:
    for line in ([peer] if peer else []) + [f"quoted (issue, not measured here): {QUOTED_GRPO}"]:
      print(line, flush=True)
      lines.append(line)
  return lines


def tunix_python(flag: str) -> str | None:
  """The interpreter to run benchmarks/tunix_grpo.py with: --tunix_python, else this one if it
  has Tunix installed, else None."""
  if flag:
    return flag
  import importlib.util
  return sys.executable if importlib.util.find_spec("tunix") is not None else None


def run_tunix(args) -> dict | str:
  """Tunix's GRPO step on the same shape, in a subprocess (benchmarks/tunix_grpo.py, often in a
  virtualenv of its own); its TUNIX_GRPO json, or a line saying why there is none."""
  python = tunix_python(args.tunix_python)
  if python is None:
    return f"tunix: not installed, not run ({TUNIX_HINT})"
  cmd = [python, "-m", "benchmarks.tunix_grpo", "--json", f"--steps={args.grpo_steps}",
         f"--warmup={args.grpo_warmup}", f"--layers={args.grpo_layers}",
         f"--new_tokens={args.grpo_new_tokens}"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": jax.default_backend()}
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env,
                          timeout=args.tunix_timeout)
  except (OSError, subprocess.TimeoutExpired) as e:
    return f"tunix: {' '.join(cmd)} did not finish: {e}"
  found = [l for l in proc.stdout.splitlines() if l.startswith("TUNIX_GRPO ")]
  if proc.returncode or not found:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return f"tunix: {' '.join(cmd)} exited {proc.returncode}: " + " | ".join(tail)
  return json.loads(found[-1][len("TUNIX_GRPO "):])


def tunix_rows(peer: dict, med: dict) -> list[str]:
  """Tunix's parts beside ours: seconds per step and ours / theirs as a speed ratio."""
  head = (f"tunix {peer['tunix_version']} (same run, benchmarks/tunix_grpo.py): "
          f"{peer['params'] / 1e6:.2f}M params, {peer['rows_per_step']} rows, mean "
          f"{peer['mean_new_tokens']:.0f} new tokens, prompt width {peer['prompt_width']}; "
          f"median of {peer['steps']} steps after {peer['warmup']} warm-up")
  print(head)
  print(f"{'part':<6}{'phase':<16}{'s/step':>8}{'ours':>8}{'speed ratio':>13}")
  lines = [head]
  for name, key, ours in (("rollout", "rollout_s", "rollout"), ("learn", None, "learn"),
                          ("  ref logprobs", "ref_logprobs_s", "ref"),
                          ("  update", "update_s", "update"), ("step", "step_s", "step")):
    theirs = (peer[key] if key else peer["ref_logprobs_s"] + peer["old_logprobs_s"]
              + peer["update_s"])
    line = (f"{'tunix':<6}{name:<16}{theirs:>8.3f}{med[ours]:>8.3f}"
            f"{theirs / med[ours]:>12.2f}x")
    print(line, flush=True)
    lines.append(line)
  return lines


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: tiny preset 2 layers, 2 x 64 tokens; GRPO 2 layers, 16 tokens")
  ap.add_argument("--parts", default="sft,grpo", help="comma list of sft, grpo")
  ap.add_argument("--preset", default="qwen2_5_0_5b", help="model preset of the SFT part")
  ap.add_argument("--layers", type=int, default=2, help="cut the preset to this depth (0: keep)")
  ap.add_argument("--rows", type=int, default=2)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes (float32 weights)")
  ap.add_argument("--remat", default="off", help="comma list of off, on")
  ap.add_argument("--steps", type=int, default=2, help="timed train steps per side (best kept)")
  ap.add_argument("--no_torch", action="store_true", help="skip the transformers side")
  ap.add_argument("--torch_device", default="cpu", help="cpu or cuda (transformers side)")
  ap.add_argument("--torch_threads", default="",
                  help="comma list of torch thread counts to try (best kept); default 1..cores")
  ap.add_argument("--decode", default="auto", choices=("auto", "on", "off"),
                  help="batch-1 decode roofline line: auto = on GPU / TPU only")
  ap.add_argument("--repeats_decode", type=int, default=2)
  ap.add_argument("--grpo_steps", type=int, default=5, help="timed GRPO steps (median)")
  ap.add_argument("--grpo_warmup", type=int, default=1, help="leading GRPO steps left out")
  ap.add_argument("--grpo_layers", type=int, default=4)
  ap.add_argument("--grpo_new_tokens", type=int, default=128)
  ap.add_argument("--tunix_python", default="",
                  help="python with google-tunix installed, to run Tunix's GRPO step beside ours "
                       "(default: this one if it has Tunix; 'none': skip)")
  ap.add_argument("--tunix_timeout", type=int, default=900, help="seconds for the Tunix run")
  ap.add_argument("--verbose", action="store_true", help="print every GRPO step's times")
  args = ap.parse_args(argv)
  if args.quick:
    args.preset, args.layers, args.rows, args.seq, args.steps = "tiny", 2, 2, 64, 1
    args.grpo_steps, args.grpo_warmup, args.grpo_layers, args.grpo_new_tokens = 2, 1, 2, 16
  parts = [p for p in args.parts.split(",") if p]
  if set(parts) - {"sft", "grpo"} or set(args.remat.split(",")) - {"off", "on"}:
    raise SystemExit("--parts takes sft,grpo and --remat off,on")
  args.use_torch = not args.no_torch
  if args.use_torch:
    try:
      import torch  # noqa: F401
      import transformers  # noqa: F401
    except ImportError:
      print("torch / transformers not importable: skipping the transformers side")
      args.use_torch = False
  args.threads = ([int(t) for t in args.torch_threads.split(",")] if args.torch_threads
                  else list(range(1, sharding.cpu_cores() + 1)))
  warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
  dev = jax.devices()[0]
  print(f"jax {jax.__version__} on {dev.platform} ({getattr(dev, 'device_kind', '?')}), "
        f"{sharding.cpu_cores()} CPU cores, {load_note()}")
  lines = []
  if "sft" in parts:
    lines += run_sft(args, dev)
  if "grpo" in parts:
    lines += run_grpo_split(args)
  return lines


if __name__ == "__main__":
  main()
