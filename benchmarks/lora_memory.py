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
  """The step's state and batch as the planner builds them (`reasoner.pipeline.plan`)."""
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np

  from reasoner import sharding
  from reasoner.losses.grpo import GRPOConfig, grpo_loss
  from reasoner.model import get_config
  from reasoner.pipeline import plan as plan_lib
  from reasoner.train import make_optimizer
  from reasoner.train.state import mixed_precision
  from reasoner.train.step import batch_shardings, jit_step, train_step_fn

  n = len(jax.devices())
  mesh = sharding.make_mesh(1, n, 1)
  cfg = get_config(model, remat=True, lora_rank=0 if full else rank, lora_alpha=2.0 * rank)
  # bf16 compute; the base stored in float32 (full fine-tune) or bfloat16 (frozen under LoRA).
  cfg = mixed_precision(cfg).replace(param_dtype="float32" if full else "bfloat16")
  opt = make_optimizer(dict(learning_rate=1e-5, schedule="constant", weight_decay=0.0))
  state, state_sh = plan_lib.abstract_stage_state(opt, cfg, mesh)
  batch = plan_lib.row_batch(rows, seq, ("tokens", "positions", "segment_ids", "loss_mask",
                                         "ref_logprobs"))
  batch["advantages"] = jax.ShapeDtypeStruct((rows,), jnp.float32)
  batch = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), batch,
                       batch_shardings(batch, mesh))
  loss = functools.partial(grpo_loss, model_cfg=cfg, config=GRPOConfig(beta=0.001))
  step = jit_step(train_step_fn(loss, opt), state_sh, batch, mesh)
  with jax.set_mesh(mesh):
    compiled = step.lower(state.replace(frozen=None), state.frozen, batch,
                          jax.ShapeDtypeStruct((2,), jnp.uint32,
                                               sharding=sharding.replicated(mesh))).compile()
  m = compiled.memory_analysis()
  nbytes = lambda tree: sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
                            for x in jax.tree.leaves(tree))
  gib = 2.0**30
  out = {
      "model": model, "mode": "full" if full else f"lora r{rank}", "devices": n,
      "rows_x_seq": f"{rows}x{seq}",
      "trained_params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
      "global_GiB": {"frozen": nbytes(state.frozen) / gib,
                     "trained": nbytes(state.params) / gib,
                     "opt_state": nbytes(state.opt_state) / gib},
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
