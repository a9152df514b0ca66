"""Will every stage of a pipeline config fit its hardware? Compiles each program, prints its memory.

  python -m launch.plan --config=configs/pipeline.py:qwen2_5_0_5b_gsm8k
  python -m launch.plan --config=configs/pipeline.py:qwen2_5_7b_gsm8k --programs=grpo,sample
  python -m launch.plan --config=configs/pipeline.py:qwen2_5_0_5b_gsm8k --programs=grpo \
      --grpo_rows=1 --grpo_tokens=16384
  python -m launch.plan --config=configs/pipeline.py:tiny --config.hardware.budget_gib=0.1

Nothing is allocated: programs are built from abstract shapes, compiled for config.mesh over
config.hardware.devices devices (simulated as CPU devices by default) and measured with XLA's
memory analysis (reasoner/pipeline/plan.py). Prints one row per program and a verdict.
Exit status: 0 everything fits, 1 some program does not fit, 2 bad flags or config.
"""

from __future__ import annotations

import re
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pipeline config file (path:preset).",
                                          lock_config=True)
_PROGRAMS = flags.DEFINE_string("programs", "all", "Comma-separated subset of sft, grpo, "
                                "grpo_logprobs, distill, dpo, sample (or 'all').")
_DEVICES = flags.DEFINE_integer("devices", None, "Device count, >= 1 (default "
                                 "config.hardware.devices).")
_GRPO_ROWS = flags.DEFINE_integer("grpo_rows", None, "Rows of the GRPO update's minibatch, >= 1 "
                                  "(default prompts_per_step x group_size / minibatches).")
_GRPO_TOKENS = flags.DEFINE_integer("grpo_tokens", None, "Row width of the GRPO programs, >= 1 "
                                    "(default max_prompt_tokens + max_new_tokens rounded up to 32).")
_RESIDENT = flags.DEFINE_bool("resident", True, "Count the buffers a stage keeps alive beside a "
                              "program (its starting params, optimiser state) toward the budget.")
_PLATFORM = flags.DEFINE_string("platform", "cpu", "JAX platform to compile for; 'cpu' simulates "
                                "the device count. '' = JAX's default (plan on the real chips).")
flags.mark_flag_as_required("config")


def _fail(msg: str):
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  """absl's parsing, with a bad preset, config typo or flag value as one line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: --config.a.b names no field
    msg = str(e)
    found = re.search(r"([A-Za-z_][A-Za-z0-9_]*)", msg)
    name = found.group(1) if found else msg
    hits = [a.split("=")[0] for a in argv if re.match(rf"--config\.(.+\.)?{re.escape(name)}(\.|=|$)", a)]
    guess = re.search(r'Did you mean "([^"]+)"', msg)
    _fail(f"{hits[0] if hits else name}: the config has no field {name!r}"
          + (f" (did you mean {guess.group(1)!r}?)" if guess else ""))
  except (flags.Error, ValueError, TypeError, OSError) as e:
    _fail(_one_line(str(e)) or type(e).__name__)


def _one_line(msg: str) -> str:
  """A multi-line parse error (ml_collections embeds the config file's traceback) as
  'what was parsed: the final error line'."""
  lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
  if len(lines) <= 1:
    return lines[0] if lines else ""
  head = lines[0].split(": Error")[0].rstrip(":")
  return f"{head}: {lines[-1]}"


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}")
  try:
    config = _CONFIG.value
    config.get("hardware")
  except (OSError, ValueError) as e:  # ml_collections reports a missing file on first access
    _fail(_one_line(str(e)))
  if "hardware" not in config:
    _fail("the config has no `hardware` block (name, devices, memory_gib, budget_gib)")
  for name, flag in (("devices", _DEVICES), ("grpo_rows", _GRPO_ROWS), ("grpo_tokens", _GRPO_TOKENS)):
    if flag.value is not None and flag.value < 1:
      _fail(f"--{name} must be >= 1, got {flag.value}")
  if _DEVICES.value is not None:
    config.hardware.devices = _DEVICES.value

  devices = config.hardware.get("devices", None)
  n = devices if isinstance(devices, int) and devices >= 1 else 1  # check_config names a bad one
  import jax
  if _PLATFORM.value:
    jax.config.update("jax_platforms", _PLATFORM.value)
  if _PLATFORM.value == "cpu":
    jax.config.update("jax_num_cpu_devices", n)  # before anything initialises the backends
  from reasoner.pipeline import plan as plan_lib
  try:  # the runner's own checks (and the hardware block's) before anything is compiled
    plan_lib.check_config(config)
  except ValueError as e:
    _fail(str(e))
  try:
    jax.devices()
  except RuntimeError as e:  # no such platform, or none of its devices here
    _fail(f"--platform={_PLATFORM.value!r}: {_one_line(str(e))}")

  raw = _PROGRAMS.value.strip()
  programs = None if raw in ("", "all") else [p.strip() for p in raw.split(",") if p.strip()]
  hw = config.hardware
  t0 = time.perf_counter()
  try:
    try:
      m = plan_lib.planned_model_config(config)
    except ValueError as e:
      raise ValueError(f"config.model: {e}") from e
    print(f"[plan] {config.preset}: model {config.model.get('preset', '?')} ({m.dtype} compute on "
          f"{m.param_dtype} weights, remat={m.remat}), mesh data={config.mesh.data} "
          f"fsdp={config.mesh.fsdp} tensor={config.mesh.tensor}, {n} "
          f"{_PLATFORM.value or 'default'} devices standing in for {hw.name}", flush=True)
    plans = plan_lib.plan(config, programs, grpo_rows=_GRPO_ROWS.value,
                          grpo_tokens=_GRPO_TOKENS.value, log=lambda m: print(m, flush=True))
  except (ValueError, KeyError) as e:
    _fail(str(e))
  print()
  print(plan_lib.format_table(plans, config, _RESIDENT.value))
  print(f"[plan] planned in {time.perf_counter() - t0:.0f} s")
  print(plan_lib.verdict(plans, config, _RESIDENT.value), flush=True)
  budget = plan_lib.budget_bytes(config)
  memory = plan_lib.memory_bytes(config)
  sys.exit(0 if all(plan_lib.fits(p, budget, _RESIDENT.value, memory) for p in plans) else 1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
