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
# Sampler calls of other stages that GRPO's does not cover (`plan_lib.sampler_calls`).
EXTRA_ROW = re.compile(r"^sample\[(distill|dpo|eval)\]/(prefill|decode)$")


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
  names = tuple(p.name for p in plans)
  assert names[:len(ROW_NAMES)] == ROW_NAMES and all(EXTRA_ROW.match(n) for n in names[7:]), names
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
  # The starting params + Adam mu and nu (float32) + a few scalars (step counts,
  # hyperparameters), and beside the decode chunk the policy it was copied from.
  assert 4 * params <= by["sample/decode"].resident_bytes < 4 * params + 1024
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
  names = tuple(rows)
  assert names[:3] == ("sft", "sample/prefill", "sample/decode"), proc.stdout
  assert all(EXTRA_ROW.match(n) for n in names[3:]), proc.stdout  # distill's 256-row call
  assert not rows["sft"][1] and rows["sample/decode"][1]  # 0.35 GiB vs 0.07 GiB
  assert "[plan] compiling sft" in proc.stdout
  verdict = proc.stdout.strip().splitlines()[-1]
  failing = ", ".join(n for n in names if not rows[n][1])
  assert verdict.startswith("verdict: does NOT fit") and verdict.endswith(f": {failing}"), verdict


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
  assert tuple(rows)[:len(ROW_NAMES)] == ROW_NAMES, proc.stdout
  assert all(EXTRA_ROW.match(name) for name in tuple(rows)[len(ROW_NAMES):]), proc.stdout
  assert all(peak > 0 for peak, _ in rows.values())
  all_fit = all(ok for _, ok in rows.values())
  assert proc.returncode == (0 if all_fit else 1), proc.stdout
  verdict = proc.stdout.strip().splitlines()[-1]
  assert verdict.startswith("verdict: every" if all_fit else "verdict: does NOT fit"), verdict
  assert f"{get_config(preset).hardware.devices} cpu devices" in proc.stdout


def test_sampler_rows_count_the_params_live_beside_each_program():
  """Engine.run prefills on the params it is given and decodes on `prepare_params`' copy, made
  before its loop: the copy is live beside the prefill, the given params beside the decode."""
  from reasoner.sampling import decode_model
  config = get_config("tiny")
  pre, dec = plan_lib.plan(config, ["sample"])[:2]
  mesh = plan_lib.plan_mesh(config)
  model_cfg = plan_lib.planned_model_config(config)
  params = plan_lib.abstract_params(model_cfg, mesh)
  p = plan_lib.per_device_bytes(params)
  d = plan_lib.per_device_bytes(jax.eval_shape(
      lambda x: decode_model.prepare_params(x, model_cfg), params))
  # GRPO keeps its starting params + Adam's two moments (+ scalars) beside the sampler.
  held = dec.resident_bytes - p
  assert 3 * p <= held < 3 * p + 1024
  assert pre.resident_bytes == held + d


def test_sampler_calls_plan_the_other_stages_calls():
  """The distill stage samples 64 problems x 4 (sample_and_verify's chunk), more rows than
  GRPO's call when rollout_rows is small: its call is planned too; eval's smaller ones are not."""
  config = get_config("tiny")
  config.grpo.rollout_rows = 32  # 4 prompts x 8 samples per GRPO call
  mesh = plan_lib.plan_mesh(config)
  calls = plan_lib.sampler_calls(config, plan_lib.planned_model_config(config), mesh)
  got = [(c.stage, c.prompts, c.sampling.n, c.sampling.max_new_tokens) for c in calls]
  assert got[0] == ("grpo", 4, 8, 64)
  assert ("distill", 64, 4, config.distill.max_new_tokens) in got
  assert all(not calls[0].covers(c) for c in calls[1:])
  config.stages = "sft,grpo"  # no distill / dpo: only eval's calls (256 x 1 greedy) remain
  calls = plan_lib.sampler_calls(config, plan_lib.planned_model_config(config), mesh)
  assert [(c.stage, c.rows) for c in calls] == [("grpo", 32), ("eval", 256)]


def test_full_fine_tune_plans_the_weights_the_runner_trains():
  """lora_rank 0 from a Hugging Face folder: the runner imports float32 weights (`import_hf`)
  whatever model.param_dtype says; under LoRA the frozen base is stored in param_dtype."""
  from reasoner.pipeline.run import trained_weights_dtype
  config = get_config("tiny")
  config.init = "/nonexistent/hf_folder"
  config.model.param_dtype = "bfloat16"
  assert trained_weights_dtype(config) == "float32"
  assert plan_lib.planned_model_config(config).param_dtype == "float32"
  mesh = plan_lib.plan_mesh(config)
  params = plan_lib.abstract_params(plan_lib.planned_model_config(config), mesh)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  sft = plan_lib.plan(config, ["sft"])[0]
  assert sft.resident_bytes == plan_lib.per_device_bytes(params)  # float32 starting copy
  config.model.lora_rank = 4
  assert plan_lib.planned_model_config(config).param_dtype == "bfloat16"
  config.init = "pretrain"
  config.model.lora_rank = 0
  assert plan_lib.planned_model_config(config).param_dtype == "bfloat16"  # made by pre-training


@pytest.mark.parametrize("args,message", [
    (["--config.grpo.minibatches=0", "--programs=grpo"], "config.grpo.minibatches must be positive"),
    (["--config.sft.batch_size=0", "--programs=sft"], "config.sft.batch_size must be positive"),
    (["--config.grpo.minibatches=5"], "config.grpo.minibatches must divide"),
    (["--platform=foo"], "--platform='foo': Unable to initialize backend 'foo'"),
    (["--platform=tpu"], "--platform='tpu': Unable to initialize backend 'tpu'"),
    (["--devices=0"], "--devices must be >= 1, got 0"),
    (["--grpo_rows=0"], "--grpo_rows must be >= 1, got 0"),
    (["--config.hardware.devices=0"], "config.hardware.devices must be positive, got 0"),
    (["--config.hardware.budget_gib=-1"], "config.hardware.budget_gib must be positive"),
    (["--config.hardware.budget_gib=0"], "config.hardware.budget_gib must be positive"),
])
def test_launcher_bad_values_are_one_line_and_exit_2(args, message):
  proc = _launch("--config=configs/pipeline.py:tiny", *args, timeout=300)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert "[plan] compiling" not in proc.stdout, proc.stdout
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_plan_rejects_zero_grpo_rows_and_bad_hardware():
  config = get_config("tiny")
  with pytest.raises(ValueError, match="grpo_rows must be a whole number >= 1"):
    plan_lib.plan(config, ["grpo"], grpo_rows=0)
  config.hardware.budget_gib = 0.0
  with pytest.raises(ValueError, match="config.hardware.budget_gib must be positive"):
    plan_lib.plan(config, ["grpo"])
