"""Runs the pipeline for several seeds and reports each model's metrics as mean +- 95% CI.

  python -m launch.study --config=configs/pipeline.py:tiny --workdir=runs/study --seeds=3
  python -m launch.study --config=configs/pipeline.py:tiny --workdir=runs/study --seeds=3 \
      --parallel=3 --config.grpo.steps=100

Every seed also makes the controls (`--controls`, default on): M1 at the temperature with the best
validation pass@1, and M1 trained with GRPO's SFT replay updates alone; the table has a row for
each, and the paired per-seed gains of M2 over M1 and over each control are printed with their
interval and a verdict (gain / within noise / loss).

Seed s runs in WORKDIR/seed_s (a rerun resumes each one, and skips finished ones); `--parallel`
runs that many seeds at once, each in its own process. The summary goes to WORKDIR/study.json
and is printed as a table (reasoner/pipeline/study.py has the statistics).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os

from absl import app, flags
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pipeline config file (path:preset).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the seeds' runs and the summary.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Number of seeds (first_seed, first_seed + 1, ...).")
_FIRST_SEED = flags.DEFINE_integer("first_seed", 0, "The first seed.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Seeds run at once, one process each.")
_CONTROLS = flags.DEFINE_bool("controls", True, "Also run the controls (config.controls): M1 at "
                              "its best validation temperature, and M1 + GRPO's replay updates "
                              "alone; the gains of M2 over each are printed with their interval.")
flags.mark_flags_as_required(["config", "workdir"])


def run_seed(config, workdir: str) -> dict:
  """One seed's pipeline (in a process of its own when run in parallel); returns its report."""
  from reasoner.pipeline.run import run_pipeline  # pylint: disable=import-outside-toplevel
  run_pipeline(config, workdir)
  from reasoner.io import read_json  # pylint: disable=import-outside-toplevel
  return read_json(os.path.join(workdir, "report.json"))


def run_study(config, workdir: str, seeds, parallel: int = 1, log=print,
              controls: bool = True) -> dict:
  """Runs every seed (with the controls unless `controls` is False), writes WORKDIR/study.json,
  returns the summary."""
  from reasoner.io import write_json  # pylint: disable=import-outside-toplevel
  from reasoner.pipeline import study  # pylint: disable=import-outside-toplevel
  from reasoner.pipeline.config_check import validate_config  # pylint: disable=import-outside-toplevel
  validate_config(config)
  jobs = []
  for seed in seeds:
    seed_config = config.copy_and_resolve_references()
    seed_config.seed = int(seed)
    seed_config.controls = bool(controls)
    jobs.append((seed_config, os.path.join(workdir, f"seed_{seed}")))
  if parallel > 1:
    context = multiprocessing.get_context("spawn")  # jax does not survive a fork
    with concurrent.futures.ProcessPoolExecutor(parallel, mp_context=context) as pool:
      reports = list(pool.map(run_seed, *zip(*jobs)))
  else:
    reports = [run_seed(c, w) for c, w in jobs]
  summary, gains = study.aggregate(reports), study.gains(reports)
  write_json(os.path.join(workdir, "study.json"),
             {"seeds": [int(s) for s in seeds], "preset": config.preset, "summary": summary,
              "gains": gains})
  log(study.format_study(summary, len(reports)))
  if gains:
    log("\n" + study.format_gains(gains))
  log(f"\nstudy: {os.path.join(workdir, 'study.json')}")
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _SEEDS.value < 2:
    cli.fail("--seeds must be at least 2 for a confidence interval")
  cli.check_inputs(_CONFIG, _WORKDIR.value)
  seeds = range(_FIRST_SEED.value, _FIRST_SEED.value + _SEEDS.value)
  try:
    run_study(_CONFIG.value, _WORKDIR.value, seeds, max(1, _PARALLEL.value),
              controls=_CONTROLS.value)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
