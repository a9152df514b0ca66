"""One GRPO step (rollouts, rewards, advantages, update, checkpoint) as one of N processes.

Run by tests/test_multihost.py: `python tests/multihost_grpo_step.py PROCESS_ID N PORT WORKDIR`.
Each process has 2 CPU devices; together they form one (data, fsdp, tensor) mesh.
"""

import json
import os

from multihost_common import join  # first: sets up jax for this process

import jax  # noqa: E402


def main(process_id: int, n: int, workdir: str):
  import numpy as np

  from configs.pipeline import tiny
  from reasoner import sharding
  from reasoner.model import ModelConfig
  from reasoner.io import MetricsWriter, barrier
  from reasoner.stages.context import StageContext
  from reasoner.stages.grpo import run_grpo
  from reasoner.tokenizer import train_sentencepiece
  from reasoner.data.tasks import mixture

  cfg = tiny()
  cfg.grpo.steps = 1
  cfg.grpo.prompts_per_step = 4
  cfg.grpo.group_size = 4
  cfg.grpo.max_new_tokens = 16
  cfg.grpo.loss.beta = 0.04
  # Length-dependent rewards so even a random model gets non-zero advantages.
  cfg.grpo.dynamic_sampling = False
  cfg.grpo.reward.l_cost = 1.0
  cfg.grpo.reward.cost_per_token = 0.01
  # A random model rarely stops early, so all lengths (and rewards) may tie; weight decay makes
  # the update non-zero regardless, so the processes' agreement on it is a real check.
  cfg.grpo.optim.weight_decay = 0.1
  cfg.log_every = 1
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, -1, 1
  texts = [p.prompt + " " + p.solution for p in mixture(["arithmetic"], "train", 300, 0, 1)]
  tok = train_sentencepiece(texts, os.path.join(workdir, f"tok{process_id}"), vocab_size=384)
  model_cfg = ModelConfig(vocab_size=384, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                          head_dim=8, d_ff=64, max_seq_len=128)
  mesh = sharding.make_mesh(2, -1, 1)
  params = sharding.sharded_init(model_cfg, jax.random.PRNGKey(0), mesh)
  # One metrics file: process 0 writes it, every process reads it after the barrier.
  ctx = StageContext(cfg, workdir, mesh, model_cfg, tok, MetricsWriter(os.path.join(workdir, "m")))
  new = run_grpo(ctx, params, jax.random.PRNGKey(1))
  barrier("metrics written")
  delta = sum(float(np.abs(sharding.to_host(a) - sharding.to_host(b)).sum())
              for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)))
  rows = ctx.writer.read("grpo")
  print("RESULT " + json.dumps({"process": process_id, "devices": jax.device_count(),
                                 "param_delta": delta, "reward": rows[-1]["reward"],
                                 "loss": rows[-1].get("loss")}), flush=True)


if __name__ == "__main__":
  main(*join())
