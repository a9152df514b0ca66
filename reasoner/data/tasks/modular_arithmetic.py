"""Modular arithmetic: remainders, of sums and products, and of powers.

Difficulty 1: "Compute 47 mod 6." -> `<think>6*7=42. 47-42=5.</think><answer>5</answer>`.
Difficulty 2: "(a+b) mod m" / "(a*b) mod m"; difficulty 3+: "a^k mod m" by repeated
multiplication, reducing after every step.
"""

from __future__ import annotations

import random

from reasoner.data.problem import Problem
from reasoner.data.tasks.base import Task, make_problem


def _reduction_steps(value: int, modulus: int) -> list[str]:
  """Steps computing value mod modulus: "6*7=42. 47-42=5." (none if already reduced)."""
  if 0 <= value < modulus:
    return []
  quotient = value // modulus
  return [f"{modulus}*{quotient}={modulus * quotient}.",
          f"{value}-{modulus * quotient}={value % modulus}."]


class ModularArithmeticTask(Task):
  """Remainder computations with step-by-step reference solutions."""

  name = "modular_arithmetic"
  max_difficulty = 4

  def sample(self, rng: random.Random, difficulty: int) -> Problem:
    if difficulty == 1:
      modulus = rng.randint(2, 20)
      a = rng.randint(10, 2000)
      prompt, key = f"Compute {a} mod {modulus}.", f"mod:{a}%{modulus}"
      steps = _reduction_steps(a, modulus) or [f"{a}<{modulus}."]
      answer = a % modulus
    elif difficulty == 2:
      modulus = rng.randint(2, 30)
      a, b, op = rng.randint(2, 99), rng.randint(2, 99), rng.choice("+*")
      value = a + b if op == "+" else a * b
      prompt = f"Compute ({a}{op}{b}) mod {modulus}."
      key = f"mod:({min(a, b)}{op}{max(a, b)})%{modulus}"
      steps = [f"{a}{op}{b}={value}."] + _reduction_steps(value, modulus)
      answer = value % modulus
    else:
      modulus = rng.randint(3, 50)
      base, exponent = rng.randint(2, 30), rng.randint(2, min(difficulty + 3, 9))
      prompt, key = f"Compute {base}^{exponent} mod {modulus}.", f"mod:{base}^{exponent}%{modulus}"
      steps = _reduction_steps(base, modulus)
      value = base % modulus
      for _ in range(exponent - 1):
        product = value * base
        steps.append(f"{value}*{base}={product}.")
        steps += _reduction_steps(product, modulus)
        value = product % modulus
      answer = value
    return make_problem(self.name, prompt, str(answer), " ".join(steps), key, difficulty)
