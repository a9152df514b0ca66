"""Synchronous vs asynchronous (actor-learner) GRPO on the tiny preset: wall time per step and
how busy each side is.

  python -m benchmarks.async_rl [--steps=14] [--warmup=2] [--staleness=1,2] [--repeats=1]
      [--devices=1] [--actor_devices=0] [--model_dir=DIR] [--quick]
  # The actor on a device of its own (CPU: split the host into virtual devices):
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m benchmarks.async_rl --actor_devices=1

Runs the GRPO stage `steps` steps synchronously, then once per max_staleness asynchronously
with both threads on the same `devices` devices, and, with --actor_devices=N, once more per
max_staleness with the learner on those devices and the actor on N further ones; all from the
same params (the tiny preset's shapes: 16 prompts x 8 samples, 64 new tokens; random
init unless --model_dir names a model directory such as runs/tiny/stages/sft/final). Over the
steps after `warmup` (compiles excluded; for async also before the last max_staleness steps,
where the actor has finished) it reports, as medians over `repeats` interleaved runs:

  s/step      wall time per step
  learner     fraction of wall time the learner trains (recompute log-probs + updates), and
              waits (synchronous: while rollouts are generated; async: blocked on the queue)
  actor       fraction of wall time generating + scoring rollouts, and blocked (synchronous:
              while the learner trains; async: on its policy version / a full queue)
  cpu         process CPU time / (wall x cores): how much of the machine the run used

Dynamic sampling is off so every step trains on the full batch (a random model's groups would
all be dropped otherwise); the work per step is the same in both modes.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import jax
import numpy as np

from benchmarks.common import load_note, task_tokenizer
from configs.pipeline import tiny
from reasoner import sharding
from reasoner.io.metrics_log import MetricsWriter
from reasoner.stages.async_grpo import run_async_grpo
from reasoner.stages.context import StageContext
from reasoner.stages.grpo import run_grpo


class _ClockedWriter(MetricsWriter):
  """Keeps every step's metrics with the wall clock and process CPU time at its end."""

  def __init__(self, workdir: str):
    super().__init__(workdir, tensorboard=False)
    self.rows: list[dict] = []

  def write(self, stage, step, metrics):
    usage = resource.getrusage(resource.RUSAGE_SELF)
    row = super().write(stage, step, metrics)
    self.rows.append(dict(row, _wall=time.perf_counter(), _cpu=usage.ru_utime + usage.ru_stime))
    return row


def _setup(args):
  if args.model_dir:
    from reasoner.checkpoint import load_model
    params, model_cfg, tokenizer, _ = load_model(args.model_dir)
    return params, model_cfg, tokenizer
  from reasoner.model import init_params
  from reasoner.pipeline.run import build_model_config
  cfg = tiny()
  tokenizer = task_tokenizer(cfg)
  model_cfg = build_model_config(cfg, tokenizer)
  return init_params(model_cfg, jax.random.PRNGKey(0)), model_cfg, tokenizer


def run_mode(args, params, model_cfg, tokenizer, staleness: int | None,
             actor_devices: int = 0) -> dict:
  cfg = tiny()
  cfg.grpo.steps = args.steps
  cfg.grpo.dynamic_sampling = False
  if args.quick:
    cfg.grpo.update(dict(prompts_per_step=4, group_size=4, max_new_tokens=16))
  cfg.grpo.async_rl.update(dict(enabled=staleness is not None, max_staleness=staleness or 0,
                                actor_devices=actor_devices))
  cfg.log_every = 1
  cfg.checkpoint_every = 10 ** 6
  workdir = tempfile.mkdtemp(prefix="bench_async_")
  writer = _ClockedWriter(workdir)
  mesh = sharding.make_mesh(1, -1, 1, devices=jax.devices()[:args.devices + actor_devices])
  ctx = StageContext(cfg, workdir, mesh, model_cfg, tokenizer, writer)
  placed = sharding.shard_params(params, model_cfg, mesh)
  t0 = time.perf_counter()
  (run_async_grpo if staleness is not None else run_grpo)(ctx, placed, jax.random.PRNGKey(1))
  total = time.perf_counter() - t0
  # The last max_staleness steps are left out too: the actor has finished and sits idle there.
  rows = writer.rows[:len(writer.rows) - (staleness or 0)]
  first, window = rows[args.warmup - 1], rows[args.warmup:]
  wall = window[-1]["_wall"] - first["_wall"]
  cpu = window[-1]["_cpu"] - first["_cpu"]
  learn = sum(r["time/learn_s"] for r in window)
  rollout = sum(r["time/rollout_s"] for r in window)
  if staleness is None:  # one thread: each side idles while the other works
    learner_wait, actor_wait = rollout, learn
  else:  # the actor's clock is cumulative: its busy / blocked time inside the window
    learner_wait = sum(r["time/learner_wait_s"] for r in window)
    rollout = window[-1]["time/actor_busy_total_s"] - first["time/actor_busy_total_s"]
    actor_wait = window[-1]["time/actor_blocked_total_s"] - first["time/actor_blocked_total_s"]
  mode = "sync" if staleness is None else f"async k={staleness}" + (" split" if actor_devices else "")
  return {"mode": mode,
          "s_step": wall / len(window), "total_s": total,
          "learner_busy": learn / wall, "learner_wait": learner_wait / wall,
          "actor_busy": rollout / wall, "actor_wait": actor_wait / wall,
          "cpu": cpu / (wall * sharding.cpu_cores()),
          "learn_s": learn / len(window),
          "rollout_s": sum(r["time/rollout_s"] for r in window) / len(window),
          "reward": float(np.mean([r["reward"] for r in window]))}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--steps", type=int, default=14)
  ap.add_argument("--warmup", type=int, default=2, help="leading steps left out (compiles)")
  ap.add_argument("--staleness", default="1,2", help="comma list of max_staleness to run")
  ap.add_argument("--model_dir", default="", help="a model directory (default: random tiny init)")
  ap.add_argument("--devices", type=int, default=1, help="devices of the (learner's) mesh")
  ap.add_argument("--actor_devices", type=int, default=0,
                  help="also run async with the actor on this many further devices")
  ap.add_argument("--repeats", type=int, default=1,
                  help="run the modes this many times, interleaved; medians are reported")
  ap.add_argument("--quick", action="store_true", help="4 prompts x 4 samples, 16 tokens")
  args = ap.parse_args(argv)
  ks = [int(k) for k in args.staleness.split(",") if k]
  modes = [(None, 0)] + [(k, 0) for k in ks] + [(k, args.actor_devices) for k in ks
                                                if args.actor_devices]
  if not 1 <= args.warmup < args.steps - max(ks, default=0):
    raise SystemExit("need 1 <= warmup < steps - max staleness")
  if args.devices + args.actor_devices > len(jax.devices()):
    raise SystemExit(f"--devices + --actor_devices > the {len(jax.devices())} devices; on CPU "
                     "set XLA_FLAGS=--xla_force_host_platform_device_count=N")
  params, model_cfg, tokenizer = _setup(args)
  dev = jax.devices()[0]
  load = load_note()
  print(f"jax {jax.__version__} on {dev.platform} ({len(jax.devices())} device(s)), "
        f"{sharding.cpu_cores()} CPU cores, {load}; {args.steps} steps, "
        f"first {args.warmup} left out")
  runs = [[] for _ in modes]
  for _ in range(args.repeats):
    for i, (k, actor_devices) in enumerate(modes):
      runs[i].append(run_mode(args, params, model_cfg, tokenizer, k, actor_devices))
  results = [{key: (rs[0][key] if key == "mode" else float(np.median([r[key] for r in rs])))
              for key in rs[0]} for rs in runs]
  base = results[0]["s_step"]
  print(f"{'mode':<17}{'s/step':>8}{'speedup':>9}{'learner busy/wait':>19}"
        f"{'actor busy/wait':>17}{'cpu':>6}{'learn s':>9}{'rollout s':>11}")
  for r in results:
    print(f"{r['mode']:<17}{r['s_step']:>8.3f}{base / r['s_step']:>8.2f}x"
          f"{r['learner_busy']:>11.0%} /{r['learner_wait']:>4.0%}"
          f"{r['actor_busy']:>9.0%} /{r['actor_wait']:>4.0%}{r['cpu']:>6.0%}"
          f"{r['learn_s']:>9.3f}{r['rollout_s']:>11.3f}", flush=True)
  return results


if __name__ == "__main__":
  main()
