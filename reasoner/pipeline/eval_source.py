"""A second evaluation set (config.eval.source): problems that are not the training source's.

  ""                      none: only the training source's test split is evaluated (default)
  "tasks:NAME[,NAME]"     procedural task families (`reasoner.data.tasks`) that are not in
                          config.data.tasks (their test split, config.data.difficulty)
  "tasks:held_out"        every registered family that is not in config.data.tasks
  "jsonl:PATH"            every line of a JSONL problem file ({prompt, answer[, task, ...]})
  "gsm8k" | "gsm8k:DIR"   GSM8K's test split (TFDS data_dir DIR), when training is not on GSM8K

A source that is the training source (a family of config.data.tasks, GSM8K when config.data.source
is gsm8k) is refused: the normal metrics already cover it. Its metrics go into every model's
eval.json under PREFIX ("ood/pass@1", "ood/greedy_acc", ...), with the source in "eval_source".
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from reasoner.data.datasets import load_gsm8k, load_jsonl_problems
from reasoner.data.problem import Problem
from reasoner.data.tasks import TASKS, mixture
from reasoner.io import exists
from reasoner.stages.context import stable_seed

PREFIX = "ood/"
KINDS = ("tasks", "jsonl", "gsm8k")
HELD_OUT = "held_out"


def _training_tasks(config) -> list[str]:
  if config.data.source != "procedural":
    return []
  return [t.strip() for t in config.data.tasks.split(",") if t.strip()]


def parse_eval_source(config) -> Optional[tuple[str, object]]:
  """None for "", else (kind, argument): ('tasks', [names]), ('jsonl', path) or ('gsm8k', data
  dir or ''). Raises ValueError naming config.eval.source on anything invalid (module doc)."""
  raw = str(config.eval.get("source", "") or "").strip()
  if not raw:
    return None
  kind, _, arg = raw.partition(":")
  kind, arg = kind.strip(), arg.strip()
  where = f"config.eval.source={raw!r}"
  if kind not in KINDS:
    raise ValueError(f"{where}: expected '', 'tasks:NAME[,NAME]', 'tasks:{HELD_OUT}', "
                     f"'jsonl:PATH' or 'gsm8k[:DATA_DIR]'")
  if kind == "tasks":
    training = _training_tasks(config)
    if arg == HELD_OUT:
      names = [t for t in sorted(TASKS) if t not in training]
      if not names:
        raise ValueError(f"{where}: config.data.tasks uses every task family; none is held out")
      return kind, names
    names = [t.strip() for t in arg.split(",") if t.strip()]
    bad = [t for t in names if t not in TASKS]
    if not names or bad:
      raise ValueError(f"{where}: unknown task(s) {bad or names}; available: "
                       f"{', '.join(sorted(TASKS))} or {HELD_OUT}")
    shared = [t for t in names if t in training]
    if shared:
      raise ValueError(f"{where}: {shared} also in config.data.tasks (the training source); "
                       f"name other families or use tasks:{HELD_OUT}")
    return kind, names
  if kind == "jsonl":
    if not arg:
      raise ValueError(f"{where}: needs a path (jsonl:PATH)")
    if not exists(arg):
      raise ValueError(f"{where}: no such file {arg}")
    if config.data.source == "jsonl" and arg == config.data.path:
      raise ValueError(f"{where}: that is config.data.path, the training source")
    return kind, arg
  if config.data.source == "gsm8k":
    raise ValueError(f"{where}: config.data.source is gsm8k already (the training source)")
  return kind, arg


def eval_source_problems(config, n: int) -> list[Problem]:
  """Up to `n` problems of config.eval.source (none when it is ""), deterministic in
  config.seed: the procedural families' test split, or a seeded choice of the file's / GSM8K's."""
  parsed = parse_eval_source(config)
  if parsed is None:
    return []
  kind, arg = parsed
  seed = stable_seed(config.seed, "test", "eval", "source")
  if kind == "tasks":
    return mixture(arg, "test", n, seed, config.data.difficulty)
  pool = load_jsonl_problems(arg) if kind == "jsonl" else load_gsm8k("test", data_dir=arg or None)
  if not pool:
    raise ValueError(f"config.eval.source={config.eval.source!r}: no problems")
  if n >= len(pool):
    return list(pool)
  idx = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
  return [pool[i] for i in sorted(idx)]
