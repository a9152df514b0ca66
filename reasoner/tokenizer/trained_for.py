"""Which settings a tokenizer trained into a workdir was trained for (so a rerun never reuses a
tokenizer that another config produced).

    settings = {"vocab_size": 512, "tasks": "...", ...}
    if not reusable(tok_dir, settings, in_use=models_exist):
      discard(tok_dir); tok = train(...); record(tok_dir, settings)

The settings are written beside the tokenizer only after it is saved, so a run that stopped
while training leaves a tokenizer without them, which the next run retrains. Paths go through
`reasoner.io` (local folders and buckets alike).
"""

from __future__ import annotations

import json

from etils import epath

from reasoner.io import exists, join, read_json, write_json

SETTINGS_FILE = "trained_for.json"


def reusable(tok_dir: str, settings: dict, in_use: bool) -> bool:
  """True: `tok_dir` holds a tokenizer trained for `settings` (or one from before settings were
  recorded that models of the workdir already use). False: there is nothing to reuse (`discard`
  the stale one). Raises ValueError when a tokenizer of other settings is in use. Reads only."""
  if not exists(join(tok_dir, "tokenizer.model")):
    return False
  settings = _plain(settings)
  path = join(tok_dir, SETTINGS_FILE)
  try:
    recorded = read_json(path) if exists(path) else None
  except ValueError:
    recorded = {}
  if recorded == settings or (recorded is None and in_use):
    return True
  if in_use:
    changed = sorted(k for k in set(settings) | set(recorded or {})
                     if (recorded or {}).get(k) != settings.get(k))
    raise ValueError(f"the tokenizer in {tok_dir} was trained for other settings "
                     f"({', '.join(changed)} differ) and this workdir's models use it; "
                     "use a new --workdir")
  return False


def discard(tok_dir: str) -> None:
  """Removes a tokenizer folder (a stale one) if there is one."""
  if exists(tok_dir):
    epath.Path(tok_dir).rmtree()


def _plain(settings: dict) -> dict:
  """`settings` as they read back from JSON (tuples become lists)."""
  return json.loads(json.dumps(settings, sort_keys=True))


def record(tok_dir: str, settings: dict) -> None:
  write_json(join(tok_dir, SETTINGS_FILE), _plain(settings), indent=None)
