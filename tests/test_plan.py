"""The memory planner: every program of the tiny preset, XLA's accounting against bytes counted by
hand, and the launcher on every real preset (CI: "a CI test runs the planner on every real
preset")."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs.pipeline import PIPELINE_PRESETS, get_config
from reasoner.pipeline import plan as plan_lib
from reasoner.sharding import make_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_NAMES = ("sft", "grpo", "grpo_logprobs", "distill", "dpo", "sample/prefill", "sample/decode")


def _launch(*args, timeout=900):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  return subprocess.run([sys.executable, "-m", "launch.plan", *args], capture_output=True,
                        text=True, cwd=ROOT, env=env, timeout=timeout)


def _table(stdout: str) -> dict:
  """program -> (peak GiB, fits) from the launcher's table."""
  rows = {}
  for line in stdout.splitlines():
    m = re.match(r"^(\S+)\s+\d+ x \d+\s+\d+\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+"
                 r"([\d.]+)\s+([\d.]+)\s+(yes|NO)$", line)
    if m:
      rows[m.group(1)] = (float(m.group(4)), m.group(8) == "yes")
  return rows


def test_tiny_preset_plans_every_program_with_consistent_numbers():
  config = get_config("tiny")
  plans = plan_lib.plan(config)  # a 1-device mesh from the first of the test's 8 CPU devices
  assert tuple(p.name for p in plans) == ROW_NAMES
  for p in plans:
    assert p.argument_bytes > 0 and p.output_bytes > 0 and p.peak_bytes > 0, p
    assert p.peak_bytes >= p.argument_bytes, p
    assert p.rows > 0 and p.tokens > 0
  by = {p.name: p for p in plans}
  # Donated train states are written in place: the outputs alias at least the params.
  params = plan_lib.per_device_bytes(plan_lib.abstract_params(
      plan_lib.config_model(config), plan_lib.plan_mesh(config)))
  for name in ("sft", "grpo", "distill", "dpo"):
    assert by[name].alias_bytes >= params
  # Every stage keeps its starting params beside its programs; GRPO's rollouts also the Adam state.
  assert by["sft"].resident_bytes == params
  # params + Adam mu and nu (float32) + a few scalars (step counts, hyperparameters)
  assert 3 * params <= by["sample/decode"].resident_bytes < 3 * params + 1024
  g = config.grpo
  assert by["grpo"].rows == g.prompts_per_step * g.group_size // g.minibatches
  assert by["grpo"].tokens == 128  # 64 prompt + 64 new tokens
  # The rollout engine's decode chunk over 192 slots (one per row of the call); its pool (an
  # argument, donated) holds every slot's cache of 64 prompt + 64 new tokens.
  assert by["sample/decode"].rows == g.prompts_per_step * g.group_size == 192
  assert by["sample/decode"].tokens == 128
  from reasoner.sampling import paged
  pool = 192 * 128 * paged.kv_bytes_per_token(plan_lib.config_model(config))
  assert by["sample/decode"].argument_bytes >= pool
  assert by["sample/prefill"].argument_bytes >= pool


def test_grpo_update_arguments_grow_with_the_batch():
  config = get_config("tiny")
  small, large = (plan_lib.plan(config, ["grpo"], grpo_rows=r, grpo_tokens=64)[0] for r in (4, 16))
  assert (small.rows, large.rows) == (4, 16)
  # tokens/positions/segment_ids/loss_mask/old_logprobs [r, 64] x 4 bytes + advantages [r] x 4
  per_row = 5 * 64 * 4 + 4
  assert large.argument_bytes - small.argument_bytes == 12 * per_row
  assert large.temp_bytes > small.temp_bytes


def test_too_few_devices_is_a_clear_error():
  config = get_config("qwen2_5_7b_gsm8k")
  config.hardware.devices = 16
  with pytest.raises(ValueError, match=r"needs 16 JAX devices, this process has 8"):
    plan_lib.plan_mesh(config)
  with pytest.raises(ValueError, match="unknown program"):
    plan_lib.plan(get_config("tiny"), ["sft", "rlhf"])


def test_memory_analysis_matches_bytes_counted_by_hand():
  mesh = make_mesh(data=1, fsdp=4, tensor=2, devices=jax.devices()[:8])
  x = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None)))
  w = jax.ShapeDtypeStruct((32, 48), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "tensor")))
  b = jax.ShapeDtypeStruct((48,), jnp.float32, sharding=NamedSharding(mesh, P()))
  compiled = jax.jit(lambda x, w, b: (x @ w.astype(jnp.float32) + b).sum()).lower(x, w, b).compile()
  mem = plan_lib.memory_of(compiled)
  by_hand = 16 * 32 * 4 + 32 * 24 * 2 + 48 * 4  # x's 16 rows, w's 24 columns, all of b
  assert plan_lib.per_device_bytes((x, w, b)) == by_hand
  assert mem["argument_bytes"] == by_hand
  # A donated argument updated in place: its output aliases it, so peak counts it once.
  donated = jax.jit(lambda x: x * 2.0, donate_argnums=0).lower(x).compile()
  mem = plan_lib.memory_of(donated)
  assert mem["argument_bytes"] == mem["output_bytes"] == mem["alias_bytes"] == 16 * 32 * 4
  peak = plan_lib.ProgramPlan("toy", 64, 32, **mem).peak_bytes
  assert peak == 16 * 32 * 4 + mem["temp_bytes"]


def test_launcher_exits_1_and_names_what_does_not_fit():
  proc = _launch("--config=configs/pipeline.py:tiny", "--programs=sft,sample",
                 "--config.hardware.budget_gib=0.1", timeout=300)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  rows = _table(proc.stdout)
  assert set(rows) == {"sft", "sample/prefill", "sample/decode"}, proc.stdout
  assert not rows["sft"][1] and rows["sample/decode"][1]  # 0.35 GiB vs 0.07 GiB
  assert "[plan] compiling sft" in proc.stdout
  verdict = proc.stdout.strip().splitlines()[-1]
  assert verdict.startswith("verdict: does NOT fit") and verdict.endswith(": sft"), verdict


@pytest.mark.parametrize("args,message", [
    (["--config=configs/pipeline.py:tiny_typo"], "unknown pipeline preset 'tiny_typo'"),
    (["--config=configs/pipeline.py:tiny", "--config.grpo.max_new_tokenz=8"],
     "--config.grpo.max_new_tokenz: the config has no field 'max_new_tokenz'"),
    (["--config=configs/pipeline.py:tiny", "--programs=sft,rlhf"], "unknown program(s) ['rlhf']"),
])
def test_launcher_bad_preset_or_config_typo_is_one_line(args, message):
  proc = _launch(*args, timeout=300)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


@pytest.mark.parametrize("preset", [p for p in PIPELINE_PRESETS if not p.startswith("tiny")])
def test_launcher_runs_on_every_real_preset(preset):
  """Every real preset fits the hardware it names: the launcher prints a row per program, each
  fits, and it exits 0 with the verdict to match (a change that makes a preset's program
  outgrow its chip fails here)."""
  proc = _launch(f"--config=configs/pipeline.py:{preset}")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rows = _table(proc.stdout)
  assert tuple(rows) == ROW_NAMES, proc.stdout
  assert all(peak > 0 for peak, _ in rows.values())
  all_fit = all(ok for _, ok in rows.values())
  assert proc.returncode == (0 if all_fit else 1), proc.stdout
  verdict = proc.stdout.strip().splitlines()[-1]
  assert verdict.startswith("verdict: every" if all_fit else "verdict: does NOT fit"), verdict
  assert f"{get_config(preset).hardware.devices} cpu devices" in proc.stdout
