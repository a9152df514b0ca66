"""Per-device memory of a GRPO train step, from XLA's memory analysis of the compiled step on
abstract shapes (no weights are materialised).

  python -m benchmarks.lora_memory [--model=qwen2_5_7b] [--rank=16] [--devices=4] [--rows=8]
      [--seq=1024] [--full]

Runs itself in a subprocess with `devices` forced host (CPU) devices, mesh (data 1, fsdp N,
tensor 1). The step: grpo_loss (beta > 0: reference log-probs in the batch, one update: no old
log-probs), bf16 compute (`mixed_precision`), remat on, AdamW. LoRA: float32 adapters trained,
the base frozen in bfloat16; --full: every weight trained in float32 instead. CPU buffer
assignment differs from TPU / GPU in detail; the figures are the arguments (state + batch) and
XLA's temp allocation for the step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def measure(model: str, rank: int, rows: int, seq: int, full: bool) -> dict:
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P

  from reasoner import sharding
  from reasoner.losses.grpo import GRPOConfig, grpo_loss
  from reasoner.model import decoder, get_config, lora
  from reasoner.train import make_optimizer
  from reasoner.train.state import TrainState, mixed_precision, train_state_shardings
  from reasoner.train.step import _frozen_apart, _step_fn, batch_shardings

  n = len(jax.devices())
  mesh = sharding.make_mesh(1, n, 1)
  cfg = get_config(model, remat=True, lora_rank=0 if full else rank, lora_alpha=2.0 * rank)
  cfg = mixed_precision(cfg)  # bf16 compute; the forward casts every weight to it
  base_dt = jnp.float32 if full else jnp.bfloat16
  sds = lambda shape, dt, sh: jax.ShapeDtypeStruct(shape, dt, sharding=sh)
  is_shape = lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x)
  base_sh = sharding.param_shardings(cfg, mesh)
  base = jax.tree.map(lambda s, sh: sds(s, base_dt, sh), decoder.param_shapes(cfg), base_sh,
                      is_leaf=is_shape)
  opt = make_optimizer(dict(learning_rate=1e-5, schedule="constant", weight_decay=0.0))
  if full:
    trained, trained_sh, frozen, frozen_sh = base, base_sh, None, None
  else:
    trained_sh = sharding.lora_shardings(cfg, mesh)
    trained = jax.tree.map(lambda s, sh: sds(s, jnp.float32, sh), lora.lora_shapes(cfg),
                           trained_sh, is_leaf=is_shape)
    frozen, frozen_sh = base, base_sh
  state_sh = train_state_shardings(opt, trained, trained_sh, mesh)
  opt_state = jax.tree.map(lambda x, sh: sds(x.shape, x.dtype, sh),
                           jax.eval_shape(opt.init, trained), state_sh.opt_state)
  rep = NamedSharding(mesh, P())
  state = TrainState(step=sds((), jnp.int32, rep), params=trained, opt_state=opt_state)
  host = {"tokens": np.zeros((rows, seq), np.int32), "positions": np.zeros((rows, seq), np.int32),
          "segment_ids": np.zeros((rows, seq), np.int32),
          "loss_mask": np.zeros((rows, seq), np.float32),
          "advantages": np.zeros((rows,), np.float32),
          "ref_logprobs": np.zeros((rows, seq), np.float32)}
  bsh = batch_shardings(host, mesh)
  batch = jax.tree.map(lambda x, sh: sds(x.shape, x.dtype, sh), host, bsh)
  loss = functools.partial(grpo_loss, model_cfg=cfg, config=GRPOConfig(beta=0.001))
  fn = _frozen_apart(_step_fn(loss, opt))
  jitted = jax.jit(fn, in_shardings=(state_sh, frozen_sh, bsh, rep), out_shardings=(state_sh, rep),
                   donate_argnums=(0,))
  rng = sds((2,), jnp.uint32, rep)
  with jax.set_mesh(mesh):
    compiled = jitted.lower(state, frozen, batch, rng).compile()
  m = compiled.memory_analysis()
  nbytes = lambda tree: sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
                            for x in jax.tree.leaves(tree))
  gib = 2.0**30
  out = {
      "model": model, "mode": "full" if full else f"lora r{rank}", "devices": n,
      "rows_x_seq": f"{rows}x{seq}",
      "trained_params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trained)),
      "global_GiB": {"frozen": nbytes(frozen) / gib, "trained": nbytes(trained) / gib,
                     "opt_state": nbytes(opt_state) / gib},
      "per_device_GiB": {"arguments": m.argument_size_in_bytes / gib,
                         "temp": m.temp_size_in_bytes / gib,
                         "output": m.output_size_in_bytes / gib,
                         "alias": m.alias_size_in_bytes / gib,
                         "generated_code": m.generated_code_size_in_bytes / gib},
  }
  d = out["per_device_GiB"]
  out["per_device_GiB"]["arguments_plus_temp"] = d["arguments"] + d["temp"]
  # Outputs not aliased with donated inputs need room of their own.
  out["per_device_GiB"]["peak_estimate"] = d["arguments"] + d["temp"] + d["output"] - d["alias"]
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="qwen2_5_7b")
  ap.add_argument("--rank", type=int, default=16)
  ap.add_argument("--devices", type=int, default=4)
  ap.add_argument("--rows", type=int, default=8)
  ap.add_argument("--seq", type=int, default=1024)
  ap.add_argument("--full", action="store_true")
  ap.add_argument("--child", action="store_true")
  a = ap.parse_args()
  if not a.child:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={a.devices}",
           "JAX_PLATFORMS": "cpu"}
    sys.exit(subprocess.call([sys.executable, "-m", "benchmarks.lora_memory", "--child",
                              *sys.argv[1:]], env=env))
  print(json.dumps(measure(a.model, a.rank, a.rows, a.seq, a.full), indent=2))


if __name__ == "__main__":
  main()
