"""Runs the reasoning pipeline (or some of its stages).

  python -m launch.main --config=configs/pipeline.py:tiny --workdir=runs/tiny
  python -m launch.main --config=configs/pipeline.py:tiny --workdir=runs/tiny --config.stages=grpo
  python -m launch.main --config=configs/pipeline.py:qwen2_5_0_5b_gsm8k --workdir=gs://... \
      --config.init=/path/to/Qwen2.5-0.5B-Instruct

Rerunning the same command after a crash or a kill resumes where it stopped. On several hosts
(a TPU pod slice, or `--coordinator_address` for GPUs) every host runs the same command.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pipeline config file (path:preset).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the report.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-host runs (TPU pods detect it).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (auto on TPU pods).")
flags.mark_flags_as_required(["config", "workdir"])


def init_distributed():
  """Initialises jax.distributed when asked to or when flags describe several processes."""
  import jax
  if _COORDINATOR.value or _MULTIHOST.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.check_inputs(_CONFIG, _WORKDIR.value)
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines out of the progress
  init_distributed()
  from reasoner.pipeline.run import run_pipeline
  try:
    run_pipeline(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
