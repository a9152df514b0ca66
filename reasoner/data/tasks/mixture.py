"""Interleaved multi-task problem lists."""

from __future__ import annotations

import math
from typing import Mapping, Sequence, Union

from reasoner.data.problem import Problem


def mixture(task_names: Sequence[str], split: str, n: int, seed: int,
            difficulty: Union[int, Mapping[str, int]] = 1) -> list[Problem]:
  """n problems taking turns across tasks (t0, t1, ..., t0, t1, ...), deterministic in the args.

  `difficulty` is one level for all tasks or a {task name: level} mapping (default 1).
  """
  from reasoner.data.tasks import get_task  # pylint: disable=import-outside-toplevel

  if not task_names:
    raise ValueError("mixture needs at least one task name")
  per_task = math.ceil(n / len(task_names))
  lists = []
  for name in task_names:
    level = difficulty.get(name, 1) if isinstance(difficulty, Mapping) else difficulty
    lists.append(get_task(name).generate(split, per_task, seed=seed, difficulty=level))
  interleaved = [problems[i] for i in range(per_task) for problems in lists]
  return interleaved[:n]
