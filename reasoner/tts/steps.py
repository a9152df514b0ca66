"""Reasoning steps: splitting a thinking text into steps, checking each step's arithmetic exactly,
and corrupting steps to make step-labelled data for a process reward model.

A step is the text up to and including a '.' that ends a sentence (followed by whitespace or the
end of the thinking): "23+45=68. 68-7=61." -> ["23+45=68.", " 68-7=61."]. The procedural tasks
(arithmetic, countdown, linear_equation, modular_arithmetic) write steps as chains of equalities
between linear expressions in x ("23+45=68.", "8x-3x=5x.", "5x=68+27=95.", "x=-23/(-4)=23/4.").
`check_step` evaluates every part exactly (fractions) and checks each adjacent pair that it can
compare: two constants, or two expressions in x (compared as polynomials). A pair of a constant and
an x-expression ("5x=95") is the statement being solved, not arithmetic, and is skipped.
"""

from __future__ import annotations

import ast
import random
import re
from fractions import Fraction
from typing import Optional, Sequence

from reasoner.verify.answers import THINK_CLOSE, THINK_OPEN

_STEP_END = re.compile(r"\.(?=\s|$)")
_NUMBER = re.compile(r"\d+")
_MAX_DIGITS = 60  # numbers longer than this are not evaluated (a runaway sample)


def thinking_text(completion: str) -> str:
  """The text between `<think>` (optional) and `</think>` (or the end)."""
  start = completion.find(THINK_OPEN)
  text = completion[start + len(THINK_OPEN):] if start >= 0 else completion
  end = text.find(THINK_CLOSE)
  return text if end < 0 else text[:end]


def split_steps(thinking: str) -> list[str]:
  """Steps of a thinking text, each ending with its '.', whitespace kept with the next step.

  A trailing fragment without a final '.' is returned as a last (unfinished) step.
  """
  steps, start = [], 0
  for m in _STEP_END.finditer(thinking):
    steps.append(thinking[start:m.end()])
    start = m.end()
  if thinking[start:].strip():
    steps.append(thinking[start:])
  return steps


# A linear polynomial c1 * x + c0 as (c1, c0).
_Poly = tuple[Fraction, Fraction]


def _evaluate(node) -> Optional[_Poly]:
  """Exact value of a whitelisted expression AST as a linear polynomial in x; None otherwise."""
  if isinstance(node, ast.Expression):
    return _evaluate(node.body)
  if isinstance(node, ast.Constant) and type(node.value) is int:
    return Fraction(0), Fraction(node.value)
  if isinstance(node, ast.Name) and node.id == "x":
    return Fraction(1), Fraction(0)
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
    v = _evaluate(node.operand)
    if v is None:
      return None
    return (-v[0], -v[1]) if isinstance(node.op, ast.USub) else v
  if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
    a, b = _evaluate(node.left), _evaluate(node.right)
    if a is None or b is None:
      return None
    if isinstance(node.op, ast.Add):
      return a[0] + b[0], a[1] + b[1]
    if isinstance(node.op, ast.Sub):
      return a[0] - b[0], a[1] - b[1]
    if isinstance(node.op, ast.Mult):
      if a[0] and b[0]:
        return None  # quadratic
      return a[0] * b[1] + b[0] * a[1], a[1] * b[1]
    if b[0] or b[1] == 0:
      return None  # division by an x-expression or by zero
    return a[0] / b[1], a[1] / b[1]
  return None


def evaluate_expression(text: str) -> Optional[_Poly]:
  """"8x-3" -> (8, -3); "-23/(-4)" -> (0, 23/4); None if it is not a linear expression in x."""
  text = text.strip().replace(" ", "")
  if not text or not re.fullmatch(r"[0-9x+\-*/()]+", text):
    return None
  if any(len(m) > _MAX_DIGITS for m in _NUMBER.findall(text)):
    return None
  text = re.sub(r"(\d|\))(?=[x(])", r"\1*", text)  # implicit products: 8x, 2(x+1)
  try:
    tree = ast.parse(text, mode="eval")
  except (SyntaxError, ValueError):
    return None
  return _evaluate(tree)


def check_step(step: str) -> Optional[bool]:
  """Whether the equalities of one step hold exactly: True / False, or None if nothing in the step
  can be checked (no '=', or no comparable pair of parts)."""
  body = step.strip().rstrip(".")
  parts = body.split("=")
  if len(parts) < 2:
    return None
  values = [evaluate_expression(p) for p in parts]
  checked = False
  for a, b in zip(values, values[1:]):
    if a is None or b is None or (a[0] == 0) != (b[0] == 0):
      continue
    checked = True
    if a != b:
      return False
  return True if checked else None


def step_labels(steps: Sequence[str]) -> list[bool]:
  """label[i] = no step among steps[: i + 1] is wrong (a step that cannot be checked counts as
  correct)."""
  labels, ok = [], True
  for s in steps:
    ok = ok and check_step(s) is not False
    labels.append(ok)
  return labels


def corrupt_step(step: str, rng: random.Random) -> Optional[str]:
  """The step with its result (its last number) changed so that `check_step` fails, or None if
  the step cannot be checked or no small change breaks it."""
  if check_step(step) is not True:
    return None
  matches = list(_NUMBER.finditer(step))
  if not matches:
    return None
  m = matches[-1]
  value = int(m.group())
  deltas = [d for d in range(-10, 11) if d and value + d >= 0]
  deltas += [value * 9 + 1] if value else [7]  # an extra digit: a different magnitude
  rng.shuffle(deltas)
  for d in deltas:
    wrong = step[:m.start()] + str(value + d) + step[m.end():]
    if check_step(wrong) is False:
      return wrong
  return None


def labelled_thinkings(thinking: str, rng: random.Random, n_corrupt: int = 2):
  """The reference thinking and up to `n_corrupt` copies with one corrupted step each.

  Returns a list of (steps, labels) where labels[i] = all of steps[: i + 1] are correct. The
  steps after a corrupted one are left as they were (still labelled wrong: the prefix is wrong).
  """
  steps = split_steps(thinking)
  out = [(steps, step_labels(steps))]
  candidates = [i for i, s in enumerate(steps) if check_step(s) is True]
  rng.shuffle(candidates)
  for i in candidates[:n_corrupt]:
    wrong = corrupt_step(steps[i], rng)
    if wrong is None:
      continue
    bad = steps[:i] + [wrong] + steps[i + 1:]
    out.append((bad, step_labels(bad)))
  return out
