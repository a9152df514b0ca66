"""Base class of procedural tasks: seeded generation, hash-based splits, checking.

A subclass implements `sample(rng, difficulty) -> Problem` whose `meta["key"]` is the
canonical content of the problem (its numbers and operations, not its wording). The split of
a problem (train, validation or test) is a pure function of that key (`split_of_key`), so a
validation or test problem can never be generated for training, whatever the seed or
difficulty. Settings are chosen on validation; test is what the report shows.
"""

from __future__ import annotations

import abc
import hashlib
import random

from reasoner.data.problem import Problem
from reasoner.verify.answers import answers_equal, extract_answer

SPLITS = ("train", "validation", "test")
TEST_FRACTION = 0.1
VALIDATION_FRACTION = 0.1
_HASH_BUCKETS = 1 << 32


def split_of_key(key: str, test_fraction: float = TEST_FRACTION,
                 validation_fraction: float = VALIDATION_FRACTION) -> str:
  """'test' for a stable pseudo-random `test_fraction` of keys, 'validation' for the next
  `validation_fraction`, 'train' for the rest. (The test keys are those of the two-way split
  this replaced: adding validation took its share from train only.)"""
  if test_fraction < 0 or validation_fraction < 0 or test_fraction + validation_fraction > 1:
    raise ValueError(f"split fractions must be >= 0 and sum to <= 1, got test={test_fraction}, "
                     f"validation={validation_fraction}")
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  bucket = int.from_bytes(digest[:4], "big")
  if bucket < test_fraction * _HASH_BUCKETS:
    return "test"
  if bucket < (test_fraction + validation_fraction) * _HASH_BUCKETS:
    return "validation"
  return "train"


class Task(abc.ABC):
  """A family of verifiable problems with a difficulty knob (1 = easiest)."""

  name: str = ""
  max_difficulty: int = 1  # difficulties above this are clamped to it
  test_fraction: float = TEST_FRACTION
  validation_fraction: float = VALIDATION_FRACTION

  @abc.abstractmethod
  def sample(self, rng: random.Random, difficulty: int) -> Problem:
    """One random problem at this difficulty; meta["key"] is its canonical content."""

  def split_of(self, problem: Problem) -> str:
    return split_of_key(problem.meta["key"], self.test_fraction, self.validation_fraction)

  def generate(self, split: str, n: int, seed: int, difficulty: int = 1) -> list[Problem]:
    """n distinct problems of one split, deterministic in (split, n, seed, difficulty)."""
    if split not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
      raise ValueError(f"n must be >= 0, got {n}")
    if int(difficulty) < 1:
      raise ValueError(f"difficulty must be >= 1, got {difficulty}")
    level = min(int(difficulty), self.max_difficulty)
    rng = random.Random(f"{self.name}|{split}|{seed}|{level}")
    problems, seen = [], set()
    max_attempts = 200 * n + 10_000
    for _ in range(max_attempts):
      if len(problems) == n:
        break
      problem = self.sample(rng, level)
      key = problem.meta["key"]
      if key in seen or self.split_of(problem) != split:
        continue
      seen.add(key)
      problem.meta["split"] = split
      problems.append(problem)
    if len(problems) < n:
      raise ValueError(f"{self.name}: only {len(problems)} distinct {split} problems found at "
                       f"difficulty {level} (asked for {n})")
    return problems

  def check(self, problem: Problem, completion: str) -> bool:
    """True iff the completion's extracted final answer is correct."""
    pred = extract_answer(completion)
    return pred is not None and answers_equal(pred, problem.answer)

  def __repr__(self) -> str:
    return f"{type(self).__name__}(name={self.name!r})"


def make_problem(task: str, prompt: str, answer: str, thinking: str, key: str, difficulty: int,
                 **meta) -> Problem:
  """A Problem whose solution is `<think>{thinking}</think><answer>{answer}</answer>`."""
  return Problem(prompt=prompt, answer=answer,
                 solution=f"<think>{thinking}</think><answer>{answer}</answer>", task=task,
                 meta={"key": key, "difficulty": difficulty, **meta})
