"""Countdown (as in TinyZero): combine all given numbers with + - * / to reach a target.

Difficulty 1: three numbers in 1..20 and a reachable target in 1..100, e.g. "Use the numbers
3, 7, 20 to make 24. Use each number once with + - * /." ->
`<think>7-3=4. 20+4=24.</think><answer>20+7-3</answer>`.

The answer is an expression; it is correct iff it uses each given number exactly once, only
+ - * / and parentheses (unary minus allowed), and evaluates exactly (fractions) to the
target. It is parsed with `ast` and evaluated by a small interpreter, never `eval`.
"""

from __future__ import annotations

import ast
import collections
import random
from fractions import Fraction
from typing import Optional

from reasoner.data.problem import Problem
from reasoner.data.tasks.base import Task, make_problem
from reasoner.verify.answers import extract_answer

# difficulty -> (how many numbers, largest number, largest target)
_LEVELS = {1: (3, 20, 100), 2: (4, 25, 100), 3: (4, 99, 100), 4: (5, 99, 1000)}
_MAX_EXPRESSION_CHARS = 200
_BINARY_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_SYMBOL_REPLACEMENTS = (("\u00d7", "*"), ("\u22c5", "*"), ("\u00b7", "*"), ("\\times", "*"),
                        ("\\cdot", "*"), ("\u00f7", "/"), ("\\div", "/"), ("\u2212", "-"),
                        ("\u2013", "-"), ("\\left", ""), ("\\right", ""), ("$", ""))
# Operator precedence for printing with minimal parentheses (atoms bind tightest).
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


def _combine(left: tuple[str, int], op: str, right: tuple[str, int]) -> tuple[str, int]:
  """(expression, precedence) of `left op right` with only the parentheses it needs."""
  (left_text, left_prec), (right_text, right_prec) = left, right
  prec = _PRECEDENCE[op]
  if left_prec < prec:
    left_text = f"({left_text})"
  # a+(b-c) == a+b-c and a*(b/c) == a*b/c exactly, but - and / do not associate to the right.
  if right_prec < prec or (right_prec == prec and op in "-/"):
    right_text = f"({right_text})"
  return f"{left_text}{op}{right_text}", prec


def _random_solution(rng: random.Random, numbers: list[int]) -> tuple[int, str, list[str]]:
  """Combines the numbers pairwise at random, keeping positive integer intermediates."""
  pool = [(n, (str(n), _ATOM)) for n in numbers]
  steps = []
  while len(pool) > 1:
    i, j = rng.sample(range(len(pool)), 2)
    (a, a_expr), (b, b_expr) = pool[i], pool[j]
    if a < b:
      (a, a_expr), (b, b_expr) = (b, b_expr), (a, a_expr)
    ops = ["+", "*"] + (["-"] if a > b else []) + (["/"] if b > 1 and a % b == 0 else [])
    op = rng.choice(ops)
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
    steps.append(f"{a}{op}{b}={value}.")
    pool = [p for k, p in enumerate(pool) if k not in (i, j)]
    pool.append((value, _combine(a_expr, op, b_expr)))
  value, (expression, _) = pool[0]
  return value, expression, steps


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
  """Exact value of a whitelisted expression tree; records the integer literals it uses."""
  if isinstance(node, ast.Expression):
    return _evaluate(node.body, used)
  # type() rather than isinstance(): True/False are ints too but are not numbers here.
  if isinstance(node, ast.Constant) and type(node.value) is int:  # pylint: disable=C0123
    used.append(node.value)
    return Fraction(node.value)
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
    return -_evaluate(node.operand, used)
  if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
    left, right = _evaluate(node.left, used), _evaluate(node.right, used)
    if isinstance(node.op, ast.Add):
      return left + right
    if isinstance(node.op, ast.Sub):
      return left - right
    if isinstance(node.op, ast.Mult):
      return left * right
    return left / right  # ZeroDivisionError is handled by the caller
  raise ValueError(f"disallowed syntax: {type(node).__name__}")


def _expression_part(answer: str, target: int) -> Optional[str]:
  """The expression of an answer, accepting a trailing or leading "= target"."""
  for old, new in _SYMBOL_REPLACEMENTS:
    answer = answer.replace(old, new)
  parts = [p.strip() for p in answer.split("=")]
  if len(parts) == 1:
    return parts[0]
  if len(parts) == 2:
    for expression, other in (parts, parts[::-1]):
      if other.lstrip("-").isdigit() and int(other) == target:
        return expression
  return None


def check_expression(answer: Optional[str], numbers: list[int], target: int) -> bool:
  """Whether `answer` uses exactly `numbers` (as a multiset) and + - * / to reach target."""
  if not answer or len(answer) > _MAX_EXPRESSION_CHARS:
    return False
  expression = _expression_part(answer, target)
  if not expression:
    return False
  try:
    tree = ast.parse(expression, mode="eval")
    used = []
    value = _evaluate(tree, used)
  except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
    return False
  return collections.Counter(used) == collections.Counter(numbers) and value == target


class CountdownTask(Task):
  """Reach a target with all the given numbers and + - * /."""

  name = "countdown"
  max_difficulty = max(_LEVELS)
  # Difficulty 1 has only ~16k distinct (numbers, target) problems: hold out 20% (~3.2k).
  test_fraction = 0.2

  def sample(self, rng: random.Random, difficulty: int) -> Problem:
    count, largest, max_target = _LEVELS[difficulty]
    while True:
      numbers = [rng.randint(1, largest) for _ in range(count)]
      target, expression, steps = _random_solution(rng, numbers)
      if 1 <= target <= max_target:
        break
    key = f"countdown:{','.join(map(str, sorted(numbers)))}={target}"
    prompt = (f"Use the numbers {', '.join(map(str, numbers))} to make {target}. "
              "Use each number once with + - * /.")
    return make_problem(self.name, prompt, expression, " ".join(steps), key, difficulty,
                        numbers=list(numbers), target=target)

  def check(self, problem: Problem, completion: str) -> bool:
    return check_expression(extract_answer(completion), problem.meta["numbers"],
                            problem.meta["target"])
