"""The sampler benchmark's FLOP count against a count from the parameter shapes, and a smoke run
of the benchmark with the rows split over per-core CPU devices."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
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


@pytest.mark.parametrize("engine", ["static", "paged"])
def test_sampler_benchmark_quick_run_splits_rows_over_cpu_devices(engine):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  proc = subprocess.run([sys.executable, "-m", "benchmarks.sampler", "--quick", "--no_torch",
                         "--cpu_devices=2", "--splits=2", f"--engine={engine}"],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert "2 device(s)" in lines[0] and f"{engine} sampler" in lines[0]
  rows = {tuple(l.split()[:3]) for l in lines[2:]}
  # Batch 1 cannot be split and runs on one device; batch 8 is split over both.
  assert rows == {("tiny", "1", "1"), ("tiny", "8", "2")}, proc.stdout
  # The decode-alone column times the static sampler's programs: not shown for the engine.
  assert all((l.split()[4] == "-") == (engine == "paged") for l in lines[2:]), proc.stdout


@pytest.mark.parametrize("preset,layers", [("tiny", 0), ("qwen2_5_0_5b", 2), ("qwen2_5_7b", 1)])
def test_train_flops_matches_a_count_from_the_parameter_shapes(preset, layers):
  from benchmarks.train_step import train_flops
  cfg = get_config(preset)
  if layers:
    cfg = cfg.replace(n_layers=layers)
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  matrices = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
  in_matmuls = sum(shapes["layers"][k].size for k in matrices)  # size covers all layers
  in_matmuls += shapes["embed"].size if cfg.tie_embeddings else shapes["lm_head"].size
  rows, seq = 3, 7
  flops = 0
  for i in range(seq):  # token i: forward 2 + backward 4 per weight, attends to keys 0..i
    flops += 6 * in_matmuls + 3 * 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * (i + 1)
  assert train_flops(cfg, rows, seq) == pytest.approx(rows * flops)


def test_grpo_benchmark_shape_has_about_4_2m_params():
  from benchmarks.train_step import grpo_model_config
  cfg = grpo_model_config()
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
  n = sum(x.size for x in jax.tree.leaves(shapes))
  assert n == cfg.n_params and abs(n - 4.2e6) < 0.05e6
  assert cfg.arch == "qwen2" and cfg.qkv_bias and cfg.tie_embeddings


def test_train_step_benchmark_quick_run_prints_every_row():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  proc = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--quick", "--no_torch"],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  sft = [l.split() for l in lines if l.startswith("sft ")]
  assert [tuple(r[:3]) for r in sft] == [("sft", "float32", "off"), ("sft", "bfloat16", "off")]
  assert all(float(r[3]) > 0 and r[6] == "-" for r in sft), proc.stdout  # tok/s; no hf side
  grpo = {l[5:21].strip(): float(l[21:].split()[0]) for l in lines if l.startswith("grpo ")}
  assert list(grpo) == ["rollout", "learn", "ref logprobs", "update", "step"], proc.stdout
  # Medians of the 2 timed steps are means, so the parts add up.
  assert grpo["ref logprobs"] + grpo["update"] == pytest.approx(grpo["learn"], abs=2e-3)
  assert any(l.startswith("quoted (issue, not measured here)") for l in lines)
  # Tunix is no dependency: without it the peer is named as not run, with how to get it.
  assert any(l.startswith("tunix: not installed, not run (") and "--tunix_python" in l
             for l in lines), proc.stdout


def test_tunix_peer_failure_is_reported_not_raised():
  import argparse
  from benchmarks.train_step import run_tunix
  args = argparse.Namespace(tunix_python=sys.executable, grpo_steps=1, grpo_warmup=0,
                            grpo_layers=1, grpo_new_tokens=4, tunix_timeout=120)
  import importlib.util
  if importlib.util.find_spec("tunix") is not None:
    pytest.skip("Tunix is installed in this interpreter")
  got = run_tunix(args)  # this interpreter has no tunix: the peer script cannot import it
  assert isinstance(got, str) and "exited 1" in got and "tunix" in got.split("exited")[1], got


def test_code_reward_benchmark_quick_run_scores_the_mix():
  from reasoner.rewards import isolation
  if not isolation.bwrap_status()[0]:
    pytest.skip("bubblewrap unavailable here: " + isolation.bwrap_status()[1])
  proc = subprocess.run([sys.executable, "-m", "benchmarks.code_reward", "--quick"],
                        capture_output=True, text=True, cwd=ROOT, timeout=300,
                        env={**os.environ, "PYTHONPATH": ROOT})
  assert proc.returncode == 0, proc.stderr  # it exits non-zero if a program is scored wrongly
  lines = proc.stdout.splitlines()
  assert "16 programs (8 correct, 4 wrong, 2 crash, 2 loop)" in lines[0]
  workers, seconds, rate, _ = lines[2].split()
  assert int(workers) >= 1 and float(rate) == pytest.approx(16 / float(seconds), rel=0.02)


def test_rollout_benchmark_workload_is_long_tailed():
  from benchmarks.rollout_engine import check_long_tail, long_tail_lengths
  lengths = long_tail_lengths(256, 128, 1.0, cap=2048)
  shape = check_long_tail(lengths, 128)
  assert shape["median"] == 128 and shape["p99"] >= 8 * 128 and lengths.max() <= 2048
  np.testing.assert_array_equal(lengths, long_tail_lengths(256, 128, 1.0, cap=2048))
  with pytest.raises(AssertionError, match="p99"):  # a light tail is refused
    check_long_tail(long_tail_lengths(256, 128, 0.5, cap=2048), 128)


def test_attention_benchmark_checks_every_runnable_impl_against_float32(capsys):
  from benchmarks import attention as bench
  rows = bench.main(["--quick", "--lengths=192", "--steps=1"])
  ran = {r["impl"]: r for r in rows if "skipped" in r or "ms" in r}
  assert set(ran) == set(bench.IMPLS)
  for impl in ("dense", "blockwise"):  # run everywhere, bfloat16 against the float32 dense
    r = ran[impl]
    assert r["finite"] and r["ms"] > 0 and r["temps"] is not None
    assert 0 < r["err"] < 3e-2 and 0 < r["grad_err"] < 3e-2  # bfloat16 rounding, not zero
  skipped = {i for i, r in ran.items() if "skipped" in r}
  assert skipped == {"cudnn", "splash"} - {jax.default_backend() == "gpu" and "cudnn",
                                          jax.default_backend() == "tpu" and "splash"}
  assert "needs" in capsys.readouterr().out  # the reason is printed, not a silent gap
  # The FLOP count covers each row's real (query, key) pairs only: row 1 is 168 tokens long.
  seg = bench.inputs(2, 192, 4, 2, 64, jnp.float32)[3]
  assert bench.causal_flops(2, 192, 4, 64, seg) == 12 * 4 * 64 * (192 * 193 + 168 * 169) / 2
  seg = bench.inputs(2, 192, 4, 2, 64, jnp.float32, packed=True)[3]  # 96, 48, 24 per row
  assert bench.causal_flops(2, 192, 4, 64, seg) == 2 * 12 * 4 * 64 * (
      96 * 97 + 48 * 49 + 24 * 25) / 2
  packed = bench.main(["--quick", "--lengths=192", "--steps=1", "--packed"])
  for r in (r for r in packed if r["impl"] in ("dense", "blockwise")):
    assert r["finite"] and 0 < r["err"] < 3e-2 and 0 < r["grad_err"] < 3e-2
  with pytest.raises(SystemExit, match="--impls takes"):
    bench.main(["--impls=flash"])
