"""Files the pipeline writes beside its checkpoints: JSON written whole or not at all.

Every JSON result (eval.json, report.json, held-out pairs, PRM metadata, ...) goes through
`write_json`: the text goes to `PATH.tmp` first and is renamed over PATH, so a reader (or a rerun
after a kill) sees the old file or the new one, never half of one. Paths go through
`etils.epath`, so the same calls work on local folders and on cloud buckets.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from etils import epath


def write_text(path, text: str) -> None:
  """Writes `text` to `path` atomically (see `write_bytes`)."""
  write_bytes(path, text.encode("utf-8"))


def write_bytes(path, data: bytes) -> None:
  """Writes `data` to `path` atomically (a temporary file renamed over it); makes the parent."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_bytes(data)
  tmp.replace(path)


def write_json(path, value: Any, *, indent: int | None = 2,
               default: Callable[[Any], Any] | None = None) -> None:
  """Writes `value` as JSON to `path` atomically (see `write_text`)."""
  write_text(path, json.dumps(value, indent=indent, default=default))


def read_json(path) -> Any:
  return json.loads(epath.Path(path).read_text())


def exists(path) -> bool:
  return epath.Path(path).exists()


def is_local(path) -> bool:
  """Whether `path` is on this machine's filesystem (not a gs:// or other URL)."""
  return "://" not in str(path)


def join(path, *parts: str) -> str:
  """`path / parts` as a string, for local paths and URLs alike."""
  return str(epath.Path(path).joinpath(*parts))


def makedirs(path) -> str:
  """Creates `path` and its parents (no error when it exists); returns it."""
  epath.Path(path).mkdir(parents=True, exist_ok=True)
  return str(path)
