"""Agentic RL with tools on the tiny model: SFT on calculator demos, GRPO (or PPO), and held-out
accuracy with the tools and without them (every call answered with an error).

  python -m launch.agentic --config=configs/agentic.py:tiny --workdir=runs/agentic
  python -m launch.agentic --config=configs/agentic.py:tiny --workdir=runs/agentic_ppo --config.algo=ppo

Rerunning the same command resumes; finished stages and evaluations are reused.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Agentic config file (path:preset).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for models, metrics and the report.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.check_inputs(_CONFIG, _WORKDIR.value)
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines out of the progress
  from reasoner.agentic.run import run_agentic
  try:
    run_agentic(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:
    cli.fail(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
