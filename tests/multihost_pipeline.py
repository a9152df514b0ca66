"""A short pipeline (pre-training and SFT) as one of N processes sharing one workdir.

Run by tests/test_multihost.py: `python tests/multihost_pipeline.py PROCESS_ID N PORT WORKDIR`.
Each process has 2 CPU devices; together they form one mesh. Prints `RESULT {json}` with a
checksum of the final SFT params as this process holds them.
"""

import json

from multihost_common import join  # first: sets up jax for this process

import jax  # noqa: E402


def main(process_id: int, n: int, workdir: str):
  import numpy as np

  from configs.pipeline import tiny_smoke
  from reasoner import sharding
  from reasoner.pipeline import run_pipeline
  from reasoner.stages import StageContext, load_stage_model

  config = tiny_smoke()
  config.stages = "pretrain,sft"
  config.pretrain.update(dict(steps=4, n_documents=200))
  config.sft.update(dict(steps=4, n_examples=64))
  config.eval.update(dict(n_problems=8, k=2, max_new_tokens=16))
  config.log_every, config.checkpoint_every = 2, 2
  config.mesh.update(dict(data=2 * n, fsdp=1, tensor=1))
  report = run_pipeline(config, workdir)
  ctx = StageContext(config, workdir, sharding.make_mesh(2 * n, 1, 1), None, None, None)
  params, _ = load_stage_model(ctx, "sft")
  checksum = sum(float(np.abs(sharding.to_host(x)).astype(np.float64).sum())
                 for x in jax.tree.leaves(params))
  print("RESULT " + json.dumps({"process": process_id, "devices": jax.device_count(),
                                 "checksum": checksum, "sft_pass1": report["sft"]["pass@1"]}),
        flush=True)


if __name__ == "__main__":
  main(*join())
