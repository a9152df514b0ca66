"""Which settings a tokenizer trained into a workdir was trained for (so a rerun never reuses a
tokenizer that another config produced).

    settings = {"vocab_size": 512, "tasks": "...", ...}
    if reusable(tok_dir, settings, in_use=models_exist):
      tok = load_tokenizer(tok_dir)
    else:
      tok = train(...); record(tok_dir, settings)

The settings are written beside the tokenizer only after it is saved, so a run that stopped
while training leaves a tokenizer without them, which the next run retrains.
"""

from __future__ import annotations

import json
import os
import shutil

SETTINGS_FILE = "trained_for.json"


def reusable(tok_dir: str, settings: dict, in_use: bool) -> bool:
  """True: `tok_dir` holds a tokenizer trained for `settings` (or one from before settings were
  recorded that models of the workdir already use). False: there is nothing to reuse (a stale
  tokenizer is removed). Raises ValueError when a tokenizer of other settings is in use."""
  if not os.path.exists(os.path.join(tok_dir, "tokenizer.model")):
    return False
  settings = _plain(settings)
  path = os.path.join(tok_dir, SETTINGS_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      recorded = json.load(f)
  except FileNotFoundError:
    recorded = None
  except (OSError, ValueError):
    recorded = {}
  if recorded == settings or (recorded is None and in_use):
    return True
  if in_use:
    changed = sorted(k for k in set(settings) | set(recorded or {})
                     if (recorded or {}).get(k) != settings.get(k))
    raise ValueError(f"the tokenizer in {tok_dir} was trained for other settings "
                     f"({', '.join(changed)} differ) and this workdir's models use it; "
                     "use a new --workdir")
  shutil.rmtree(tok_dir)
  return False


def _plain(settings: dict) -> dict:
  """`settings` as they read back from JSON (tuples become lists)."""
  return json.loads(json.dumps(settings, sort_keys=True))


def record(tok_dir: str, settings: dict) -> None:
  tmp = os.path.join(tok_dir, SETTINGS_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(settings, f, sort_keys=True)
  os.replace(tmp, os.path.join(tok_dir, SETTINGS_FILE))
