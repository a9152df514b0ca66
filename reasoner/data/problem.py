"""Records shared by tasks, datasets, rewards and training stages."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Problem:
  """One question with its reference answer.

  prompt:   the bare question (no chat template, no `<think>` opener).
  answer:   the canonical final answer string (for countdown: one valid expression).
  solution: the full reference completion `<think>...</think><answer>...</answer>`
            (the SFT target); "" when the source has none (e.g. a JSONL file without
            a `solution` field).
  task:     name of the generator or source ('arithmetic', 'countdown', 'gsm8k', 'math',
            'code', ...); rewards use it to pick the task's checker.
  meta:     task-specific data (countdown numbers and target, unit tests for code, the
            canonical content key that decides the split, difficulty, ...).
  """

  prompt: str
  answer: str
  solution: str
  task: str
  # hash=False keeps Problem hashable although a dict is not.
  meta: dict = dataclasses.field(default_factory=dict, hash=False)


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  """A prompt with a preferred and a dispreferred completion (DPO data)."""

  prompt: str
  chosen: str
  rejected: str
