"""Linear equations in one unknown.

Difficulty 1: "Solve for x: 3x+5=20." -> `<think>3x=20-5=15. x=15/3=5.</think><answer>5</answer>`
(positive integer solution). Difficulty 2 puts x on both sides (integer solution, possibly
negative); difficulty 3 allows negative coefficients and fractional solutions ("7/3").
"""

from __future__ import annotations

import random
from fractions import Fraction

from reasoner.data.problem import Problem
from reasoner.data.tasks.base import Task, make_problem


def _term(coefficient: int) -> str:
  """Coefficient of x as written before "x": 1 -> "", -1 -> "-"."""
  return {1: "", -1: "-"}.get(coefficient, str(coefficient))


def _side(coefficient: int, constant: int) -> str:
  """`coefficient*x + constant` written compactly ("3x+5", "x-2", "7")."""
  if coefficient == 0:
    return str(constant)
  text = f"{_term(coefficient)}x"
  return text + (f"{constant:+d}" if constant else "")


def _fraction_text(value: Fraction) -> str:
  if value.denominator == 1:
    return str(value.numerator)
  return f"{value.numerator}/{value.denominator}"


class LinearEquationTask(Task):
  """ax+b = cx+d with a reference solution that isolates x step by step."""

  name = "linear_equation"
  max_difficulty = 3

  def _coefficients(self, rng: random.Random, difficulty: int) -> tuple[int, int, int, int]:
    if difficulty == 1:
      a, x, b = rng.randint(2, 12), rng.randint(1, 20), rng.choice([-1, 1]) * rng.randint(1, 50)
      return a, b, 0, a * x + b
    if difficulty == 2:
      a = rng.randint(2, 15)
      c, x, b = rng.randint(1, a - 1), rng.randint(-20, 20), rng.randint(-50, 50)
      return a, b, c, (a - c) * x + b
    while True:
      a = rng.choice([-1, 1]) * rng.randint(2, 15)
      c = rng.randint(0, 15)
      if a != c:
        return a, rng.randint(-50, 50), c, rng.randint(-50, 50)

  def sample(self, rng: random.Random, difficulty: int) -> Problem:
    a, b, c, d = self._coefficients(rng, difficulty)
    k, rhs = a - c, d - b
    x = Fraction(rhs, k)
    steps = []
    if c:
      steps.append(f"{_term(a)}x-{_term(c)}x={_term(k)}x.")
    if b:
      steps.append(f"{_term(k)}x={d}{-b:+d}={rhs}.")
    elif c:
      steps.append(f"{_term(k)}x={rhs}.")
    if k != 1:
      quotient = f"{rhs}/{k}" if k > 0 else f"{rhs}/({k})"
      steps.append(f"x={_fraction_text(x)}." if quotient == _fraction_text(x)
                   else f"x={quotient}={_fraction_text(x)}.")
    if not steps:
      steps.append(f"x={rhs}.")
    answer = _fraction_text(x)
    prompt = f"Solve for x: {_side(a, b)}={_side(c, d)}."
    key = f"linear_equation:{a},{b},{c},{d}"
    return make_problem(self.name, prompt, answer, " ".join(steps), key, difficulty,
                        coefficients=[a, b, c, d])
