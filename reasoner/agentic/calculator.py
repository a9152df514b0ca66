"""A safe calculator: arithmetic expressions evaluated exactly over fractions, with size limits.

The expression is parsed with `ast` and only these nodes are evaluated: number literals
(integers and decimals, read from their source text so "0.1" is exactly 1/10), parentheses,
unary + and -, and the binary operators + - * / // % **. Anything else (names, calls,
attributes, strings, comparisons, `^`, ...) is refused with a `CalculatorError` whose message
is shown to the model. Limits: at most `MAX_CHARS` characters and `MAX_NODES` syntax nodes,
every intermediate value (numerator and denominator) at most `MAX_DIGITS` decimal digits, and
`**` only with an integer exponent whose result is estimated to fit before it is computed, so
"9**9**9" is refused instantly instead of hanging.
"""

from __future__ import annotations

import ast
import math
import re
from fractions import Fraction

MAX_CHARS = 200
MAX_NODES = 100
MAX_DIGITS = 100
_MAX_BITS = int(MAX_DIGITS * math.log2(10)) + 1
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
           ast.Mod: "%", ast.Pow: "**"}
_HINTS = {ast.BitXor: "^ (use ** for powers)", ast.MatMult: "@", ast.BitAnd: "&",
          ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>"}


class CalculatorError(ValueError):
  """A refused or failed calculation; the message is fit to show to the model."""


def _check_size(value: Fraction) -> Fraction:
  # The bit-length test keeps str() off huge numbers; the digit test is the exact limit.
  if max(abs(value.numerator).bit_length(), value.denominator.bit_length()) > _MAX_BITS or (
      len(str(abs(value.numerator))) > MAX_DIGITS or len(str(value.denominator)) > MAX_DIGITS):
    raise CalculatorError(f"number too large (more than {MAX_DIGITS} digits)")
  return value


def _literal(node: ast.Constant, source: str) -> Fraction:
  if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
    raise CalculatorError(f"unsupported literal {node.value!r}")
  text = ast.get_source_segment(source, node) or ""
  text = text.replace("_", "")
  if not _NUMBER.fullmatch(text):
    raise CalculatorError(f"unsupported number {text!r}")
  mantissa, _, exponent = text.lower().partition("e")
  if exponent and abs(int(exponent)) > MAX_DIGITS:
    raise CalculatorError(f"number too large (more than {MAX_DIGITS} digits)")
  return _check_size(Fraction(mantissa) * Fraction(10) ** int(exponent or 0))


def _power(base: Fraction, exponent: Fraction) -> Fraction:
  if exponent.denominator != 1:
    raise CalculatorError("only integer exponents are supported")
  e = exponent.numerator
  if base == 0 and e < 0:
    raise CalculatorError("division by zero")
  if base in (0, 1) or e == 0:
    return Fraction(1) if e == 0 else base
  bits = max(abs(base.numerator).bit_length(), base.denominator.bit_length())
  if (bits - 1) * abs(e) > _MAX_BITS:  # |result| >= 2 ** ((bits - 1) * |e|)
    raise CalculatorError(f"number too large (more than {MAX_DIGITS} digits)")
  return base ** e


def _apply(op: ast.operator, a: Fraction, b: Fraction) -> Fraction:
  if isinstance(op, ast.Add):
    return a + b
  if isinstance(op, ast.Sub):
    return a - b
  if isinstance(op, ast.Mult):
    return a * b
  if isinstance(op, ast.Pow):
    return _power(a, b)
  if b == 0:
    raise CalculatorError("division by zero")
  if isinstance(op, ast.Div):
    return a / b
  if isinstance(op, ast.FloorDiv):
    return Fraction(math.floor(a / b))
  return a - b * math.floor(a / b)  # ast.Mod, Python's sign convention


def _evaluate(node: ast.AST, source: str) -> Fraction:
  if isinstance(node, ast.Expression):
    return _evaluate(node.body, source)
  if isinstance(node, ast.Constant):
    return _literal(node, source)
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
    value = _evaluate(node.operand, source)
    return -value if isinstance(node.op, ast.USub) else value
  if isinstance(node, ast.BinOp):
    if type(node.op) not in _BINARY:
      raise CalculatorError(f"unsupported operator {_HINTS.get(type(node.op), type(node.op).__name__)}")
    left, right = _evaluate(node.left, source), _evaluate(node.right, source)
    return _check_size(_apply(node.op, left, right))
  if isinstance(node, ast.Name):
    raise CalculatorError(f"unknown name {node.id!r}: only numbers and + - * / // % ** ( )")
  raise CalculatorError(f"unsupported syntax ({type(node).__name__}): only numbers and "
                        "+ - * / // % ** ( )")


def calculate(expression: str) -> Fraction:
  """The exact value of an arithmetic expression, e.g. calculate("347*86") == 29842.

  Raises CalculatorError (a ValueError) for anything that is not a bounded arithmetic
  expression; see the module docstring.
  """
  text = (expression or "").strip()
  if not text:
    raise CalculatorError("empty expression")
  if len(text) > MAX_CHARS:
    raise CalculatorError(f"expression too long ({len(text)} > {MAX_CHARS} characters)")
  try:
    tree = ast.parse(text, mode="eval")
  except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
    raise CalculatorError(f"syntax error: {getattr(e, 'msg', str(e))}") from None
  if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
    raise CalculatorError(f"expression too complex (more than {MAX_NODES} syntax nodes)")
  return _evaluate(tree, text)


def format_number(value: Fraction) -> str:
  """An integer as digits ("29842"), anything else as a reduced fraction ("-7/2")."""
  return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
