"""Multi-step integer arithmetic, as a bare expression or a one-line word problem.

Difficulty 1: "Compute 23+45-7." -> `<think>23+45=68. 68-7=61.</think><answer>61</answer>`.
Higher levels add steps, larger numbers, multiplication and exact division. Operations are
applied left to right (the expression is parenthesised accordingly) and intermediate values
stay non-negative integers.
"""

from __future__ import annotations

import dataclasses
import random

from reasoner.data.problem import Problem
from reasoner.data.tasks.base import Task, make_problem


@dataclasses.dataclass(frozen=True)
class _Level:
  min_ops: int
  max_ops: int
  max_operand: int  # for + and -
  ops: str
  max_factor: int = 0  # for * and /


_LEVELS = {
    1: _Level(1, 2, 99, "+-"),
    2: _Level(2, 3, 99, "+-*", 9),
    3: _Level(3, 4, 999, "+-*/", 12),
    4: _Level(4, 5, 9999, "+-*/", 12),
}
_NAMES = ("Ann", "Ben", "Mia", "Sam", "Leo", "Zoe", "Max", "Eva", "Tom", "Ivy", "Kai", "Ada")
_ITEMS = ("apples", "pens", "coins", "cards", "books", "stamps", "shells", "marbles", "beads",
          "eggs", "cups", "toys")
_CLAUSES = {
    "+": ("gets {n} more", "buys {n} more", "finds {n} more"),
    "-": ("gives away {n}", "loses {n}", "sells {n}"),
    "*": ("ends up with {n} times as many",),
    "/": ("keeps one of {n} equal shares",),
}


def _apply(value: int, op: str, n: int) -> int:
  if op == "+":
    return value + n
  if op == "-":
    return value - n
  if op == "*":
    return value * n
  return value // n


class ArithmeticTask(Task):
  """Chains of + - * / on integers with step-by-step reference solutions."""

  name = "arithmetic"
  max_difficulty = max(_LEVELS)

  def _operation(self, rng: random.Random, level: _Level, value: int) -> tuple[str, int]:
    divisors = [d for d in range(2, level.max_factor + 1) if value > 0 and value % d == 0]
    ops = [op for op in level.ops if (op != "-" or value >= 1) and (op != "/" or divisors)]
    op = rng.choice(ops)
    if op == "+":
      return op, rng.randint(1, level.max_operand)
    if op == "-":
      return op, rng.randint(1, min(value, level.max_operand))
    if op == "*":
      return op, rng.randint(2, level.max_factor)
    return op, rng.choice(divisors)

  def sample(self, rng: random.Random, difficulty: int) -> Problem:
    level = _LEVELS[difficulty]
    start = value = rng.randint(1, level.max_operand)
    operations, steps = [], []
    for _ in range(rng.randint(level.min_ops, level.max_ops)):
      op, n = self._operation(rng, level, value)
      new = _apply(value, op, n)
      steps.append(f"{value}{op}{n}={new}.")
      operations.append((op, n))
      value = new

    first_op, first_n = operations[0]
    lead = sorted((start, first_n)) if first_op in "+*" else (start, first_n)
    key = f"arithmetic:{lead[0]}{first_op}{lead[1]}" + "".join(
        f"{op}{n}" for op, n in operations[1:])

    if rng.random() < 0.5:
      prompt = f"Compute {self._expression(start, operations)}."
    else:
      prompt = self._story(rng, start, operations)
    return make_problem(self.name, prompt, str(value), " ".join(steps), key, difficulty)

  @staticmethod
  def _expression(start: int, operations: list[tuple[str, int]]) -> str:
    text, additive = str(start), False
    for op, n in operations:
      if op in "*/" and additive:
        text = f"({text})"
      text += f"{op}{n}"
      additive = op in "+-"
    return text

  @staticmethod
  def _story(rng: random.Random, start: int, operations: list[tuple[str, int]]) -> str:
    name, items = rng.choice(_NAMES), rng.choice(_ITEMS)
    clauses = [rng.choice(_CLAUSES[op]).format(n=n) for op, n in operations]
    actions = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return (f"{name} has {start} {items}, {actions}. "
            f"How many {items} does {name} have now?")
