"""The sampler benchmark's FLOP count against a count from the parameter shapes, and a smoke run
of the benchmark with the rows split over per-core CPU devices."""

import os
import subprocess
import sys

import jax
import pytest

from benchmarks.sampler import model_flops
from reasoner.model import get_config, init_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("preset", ["tiny", "qwen2_5_0_5b"])
def test_model_flops_matches_a_count_from_the_parameter_shapes(preset):
  cfg = get_config(preset)
  if preset != "tiny":
    cfg = cfg.replace(n_layers=2)
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  matrices = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
  per_token = sum(2 * shapes["layers"][k].size for k in matrices)  # size covers all layers
  head = 2 * shapes["embed"].size
  batch, prompt, new = 3, 7, 5
  flops = 0
  for i in range(prompt + new):  # token i attends to slots 0..i
    flops += per_token + 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * (i + 1)
    if i >= prompt - 1:  # logits of the last prompt token and of each new token
      flops += head
  assert model_flops(cfg, batch, prompt, new) == pytest.approx(batch * flops)


def test_sampler_benchmark_quick_run_splits_rows_over_cpu_devices():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  proc = subprocess.run([sys.executable, "-m", "benchmarks.sampler", "--quick", "--no_torch",
                         "--cpu_devices=2", "--splits=2"], capture_output=True, text=True,
                        cwd=ROOT, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert "2 device(s)" in lines[0]
  rows = {tuple(l.split()[:3]) for l in lines[2:]}
  # Batch 1 cannot be split and runs on one device; batch 8 is split over both.
  assert rows == {("tiny", "1", "1"), ("tiny", "8", "2")}, proc.stdout
