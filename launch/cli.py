"""What the launchers share: bad input ends with one `error: ...` line and exit status 1."""

from __future__ import annotations

import os
import sys

from absl import flags


def fail(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def parse_flags(argv):
  """absl's flag parsing (pass as app.run's flags_parser), but a bad --config (an unknown
  preset, a config file that raises) ends with one line naming the cause, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: --config.a.b names no field
    name = str(e).strip("\"' ")
    hits = [a.split("=")[0] for a in argv if a.startswith("--config.") and
            a.split("=")[0].split(".")[-1] == name]
    fail(f"{hits[0] if hits else name}: the config has no field {name!r}")
  except flags.Error as e:
    cause = e
    while (cause.__cause__ or cause.__context__) is not None:
      cause = cause.__cause__ or cause.__context__
    fail(str(cause).strip().splitlines()[-1] if cause is not e else str(e).splitlines()[0])


def check_inputs(config_flag, workdir: str):
  """Fails with one line when the config file could not be loaded, or --workdir (or a folder
  above it) exists but is not a folder."""
  try:
    config_flag.value.get("seed")  # a config file that could not be loaded raises on first use
  except OSError as e:
    fail(f"--config: {str(e).strip().splitlines()[-1].strip()}")
  if "://" in workdir:
    return
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    fail(f"--workdir {workdir}: {path} is a file, not a directory")
