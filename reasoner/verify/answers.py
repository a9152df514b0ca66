"""Math answer verifier: final-answer extraction, normalisation and equivalence.

Extraction (`extract_answer`) reads the single `<answer>...</answer>` block that follows the
thinking (a `\\boxed{}` inside it wins), or, without answer tags, the last `\\boxed{}` after
the thinking. Missing, empty, repeated or thinking-only answers give None, so they score 0.

Equivalence policy (`answers_equal(pred, ref)`):
  * both sides are normalised: unicode minus and full-width digits, `$`, `\\text{}`, LaTeX
    spacing, `\\left`/`\\right`, degree signs, "the answer is", a leading `x =`, trailing
    units ("3 apples", "12 dollars", "5cm") and thousands separators ("1,000") are removed;
  * if the reference is a plain number (integer, decimal, "1e3", "1.5\\times10^{3}", `a/b`,
    `\\frac{a}{b}`, `\\sqrt{n}` of a perfect square, optionally with `%`), the prediction
    must be a plain number too and equal exactly (no float tolerance: "0.333" != "1/3").
    A prediction that is an unevaluated expression ("23+45-7", "2^{10}") does NOT match a
    numeric reference: it would let a policy copy the question instead of solving it;
  * percentages: "50%" equals both "50" (GSM8K style "what percent") and "0.5";
  * comma-separated answers ("(1, 2)") compare element-wise, in order, same length;
    a prediction listing several answers for a single reference ("5 or 6", "5, 6") is wrong;
  * otherwise both sides are converted from simple LaTeX to sympy syntax, validated against a
    whitelist, and compared symbolically (`simplify(a - b) == 0`) in a worker process with a
    hard time limit; timeouts and parse failures count as "not equal".
"""

from __future__ import annotations

import decimal
import math
import re
import unicodedata
from fractions import Fraction
from typing import Optional

from reasoner.verify import symbolic

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

MAX_ANSWER_CHARS = 300
_MAX_EXPONENT = 1000

# --------------------------------------------------------------------------------- extraction


def _read_group(text: str, i: int) -> Optional[tuple[str, int]]:
  """Reads a `{...}` group (balanced) or a single non-space character starting at/after i."""
  while i < len(text) and text[i] == " ":
    i += 1
  if i >= len(text):
    return None
  if text[i] != "{":
    if text[i] in "}\\":
      return None
    return text[i], i + 1
  depth = 0
  for j in range(i, len(text)):
    if text[j] == "{":
      depth += 1
    elif text[j] == "}":
      depth -= 1
      if depth == 0:
        return text[i + 1:j], j + 1
  return None


def boxed_contents(text: str) -> list[str]:
  """Contents of every `\\boxed{...}` / `\\fbox{...}` in text, in order (balanced braces)."""
  out = []
  for m in re.finditer(r"\\(?:boxed|fbox)\s*(?=\{)", text):
    group = _read_group(text, m.end())
    if group is not None:
      out.append(group[0])
  return out


def answer_block(completion: str) -> Optional[str]:
  """Raw content of the single `<answer>` block that follows the thinking, else None.

  None when there is no block, several blocks, a block before `</think>` (an answer hidden
  in the thinking), or a block inside an unclosed `<think>`.
  """
  if completion is None:
    return None
  n_open, n_close = completion.count(ANSWER_OPEN), completion.count(ANSWER_CLOSE)
  if n_open != 1 or n_close != 1:
    return None
  start, end = completion.index(ANSWER_OPEN), completion.index(ANSWER_CLOSE)
  if end < start:
    return None
  think_end = completion.rfind(THINK_CLOSE)
  if think_end == -1:
    if THINK_OPEN in completion:
      return None
  elif think_end > start:
    return None
  return completion[start + len(ANSWER_OPEN):end]


def extract_answer(completion: str) -> Optional[str]:
  """The final answer of a completion, or None if missing, empty or ambiguous.

  With answer tags: the content of the single `<answer>` block after `</think>`; a
  `\\boxed{}` inside it is unwrapped (several different boxes -> None). Without answer tags:
  the last `\\boxed{}` after the thinking.
  """
  if not completion:
    return None
  if ANSWER_OPEN in completion or ANSWER_CLOSE in completion:
    content = answer_block(completion)
    if content is None:
      return None
    boxes = [b.strip() for b in boxed_contents(content)]
    if len(set(boxes)) > 1:
      return None
    if boxes:
      content = boxes[0]
  else:
    if THINK_CLOSE in completion:
      completion = completion[completion.rfind(THINK_CLOSE) + len(THINK_CLOSE):]
    elif THINK_OPEN in completion:
      return None
    boxes = boxed_contents(completion)
    if not boxes:
      return None
    content = boxes[-1]
  content = content.strip()
  return content or None


# ------------------------------------------------------------------------------ normalisation

_CHAR_REPLACEMENTS = (
    ("\u2212", "-"), ("\u2013", "-"), ("\u2014", "-"), ("\u2010", "-"), ("\u2011", "-"),
    ("\u00d7", "*"), ("\u22c5", "*"), ("\u00b7", "*"), ("\u00f7", "/"), ("\u2044", "/"),
    ("\u00b2", "^2"), ("\u00b3", "^3"), ("\u00b0", ""), ("\u2019", "'"), ("\u221a", "\\sqrt"),
    ("\u03c0", "\\pi"), ("\u221e", "\\infty"),
)
_UNWRAP_COMMANDS = ("boxed", "fbox", "text", "textbf", "textit", "textrm", "textnormal", "mathrm",
                    "mathbf", "mathit", "mbox", "operatorname")
_DELETE_PATTERNS = (
    r"\\left\b", r"\\right\b", r"\\displaystyle\b", r"\\!", r"\\,", r"\\;", r"\\:", r"\\quad\b",
    r"\\qquad\b", r"\\ ", r"\^\s*\{\s*\\circ\s*\}", r"\^\s*\\circ\b", r"\\circ\b", r"\\degree\b",
    r"\\\$", r"\$", r"[\u20ac\u00a3\u00a5\u20b9]",
)
_ANSWER_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\b\s*(?:is|:)?\s*:?\s*", re.I)
_ASSIGNMENT = re.compile(r"^(?:[A-Za-z](?:_\{?\w+\}?)?|\\[A-Za-z]+)\s*(?:=|:)\s*(?P<rest>[^=]+)$")
_NUMBER_TEXT = r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:/\d+(?:\.\d+)?)?%?"
_UNIT_WORD = r"[A-Za-z][A-Za-z.'/]*(?:\^?[23])?"
_SPACED_UNITS = re.compile(
    rf"^(?P<num>{_NUMBER_TEXT})\s+(?P<unit>{_UNIT_WORD}(?:\s+{_UNIT_WORD})*)$")
_KNOWN_UNITS = ("mm", "cm", "m", "km", "mg", "g", "kg", "lb", "lbs", "oz", "ml", "l", "L", "s",
                "sec", "min", "h", "hr", "hrs", "ft", "mph", "km/h", "m/s", "cm^2", "m^2",
                "cm^3", "m^3", "sq")
_ATTACHED_UNITS = re.compile(
    rf"^(?P<num>{_NUMBER_TEXT})(?P<unit>{'|'.join(re.escape(u) for u in _KNOWN_UNITS)})\.?$")
# Words that join several answers: never strip them as if they were units.
_CONNECTIVES = {"or", "and", "to", "plus", "minus", "times", "nor", "but", "vs", "versus", "over",
                "than", "then", "either", "neither"}
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?")


def _unwrap(text: str, command: str) -> str:
  """Replaces every `\\command{X}` by X (balanced braces)."""
  pattern = re.compile(r"\\" + command + r"\s*(?=\{)")
  while True:
    m = pattern.search(text)
    if m is None:
      return text
    group = _read_group(text, m.end())
    if group is None:
      return text
    text = text[:m.start()] + group[0] + text[group[1]:]


def _strip_units(s: str) -> str:
  m = _SPACED_UNITS.match(s)
  if m and not (set(m.group("unit").lower().split()) & _CONNECTIVES):
    return m.group("num")
  m = _ATTACHED_UNITS.match(s)
  if m:
    return m.group("num")
  return s


def _clean(s: str) -> str:
  """Notation-level clean-up shared by every comparison (no numeric canonicalisation)."""
  for old, new in _CHAR_REPLACEMENTS:  # before NFKC, which would turn "x²" into "x2"
    s = s.replace(old, new)
  s = unicodedata.normalize("NFKC", s)
  for old, new in _CHAR_REPLACEMENTS:  # again for what NFKC produced (e.g. "½" -> "1⁄2")
    s = s.replace(old, new)
  for command in _UNWRAP_COMMANDS:
    s = _unwrap(s, command)
  for pattern in _DELETE_PATTERNS:
    s = re.sub(pattern, "", s)
  s = s.replace("\\%", "%")
  s = re.sub(r"\s+", " ", s).strip()
  s = _ANSWER_PREFIX.sub("", s)
  s = s.rstrip(" .")
  m = _ASSIGNMENT.match(s)
  if m:
    s = m.group("rest").strip()
  s = _strip_units(s)
  if _THOUSANDS.fullmatch(s):
    s = s.replace(",", "")
  return s.strip()


def normalize_answer(s: str) -> str:
  """Canonical text of an answer: `_clean` plus canonical numbers ("1,000.0" -> "1000").

  Plain numbers become an integer or a reduced fraction "p/q" (keeping a trailing "%"), so
  normalised strings are also suitable for majority voting.
  """
  if s is None:
    return ""
  s = _clean(s)
  number = parse_number(s)
  if number is not None:
    value, percent = number
    return _format_fraction(value) + ("%" if percent else "")
  return s


def _format_fraction(value: Fraction) -> str:
  if value.denominator == 1:
    return str(value.numerator)
  return f"{value.numerator}/{value.denominator}"


# ----------------------------------------------------------------------------------- numbers

_DECIMAL = re.compile(r"(?P<mant>\d+(?:\.\d*)?|\.\d+)(?:[eE](?P<exp>[-+]?\d+))?")
_TIMES_POWER_OF_TEN = re.compile(
    r"(?P<mant>[\d.,]+)\s*(?:\\times|\\cdot|\*)\s*10\s*(?:\^|\*\*)\s*\{?\s*(?P<exp>[-+]?\d+)\s*\}?")
_THOUSANDS_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_FRAC = re.compile(r"\\[dt]?frac")
_SQRT = re.compile(r"(?:\\sqrt|sqrt)")


def _wrapped(s: str, open_: str, close: str) -> bool:
  """Whether s is entirely enclosed by one matching bracket pair."""
  if not (s.startswith(open_) and s.endswith(close)):
    return False
  depth = 0
  for i, ch in enumerate(s):
    if ch == open_:
      depth += 1
    elif ch == close:
      depth -= 1
      if depth == 0 and i != len(s) - 1:
        return False
  return True


def _parse_real(s: str) -> Optional[Fraction]:
  """Exact value of a plain number written in one of the accepted notations, else None."""
  s = s.strip()
  if not s or len(s) > 100:
    return None
  for open_, close in (("(", ")"), ("{", "}")):
    if _wrapped(s, open_, close):
      return _parse_real(s[1:-1])
  if s[0] in "+-":
    value = _parse_real(s[1:])
    if value is None:
      return None
    return -value if s[0] == "-" else value
  m = _TIMES_POWER_OF_TEN.fullmatch(s)
  if m:
    mantissa, exponent = _parse_real(m.group("mant")), int(m.group("exp"))
    if mantissa is None or abs(exponent) > 100:
      return None
    return mantissa * Fraction(10) ** exponent
  m = _DECIMAL.fullmatch(s)
  if m:
    exponent = int(m.group("exp") or 0)
    if abs(exponent) > 100:
      return None
    return Fraction(decimal.Decimal(m.group("mant"))) * Fraction(10) ** exponent
  if _THOUSANDS_NUMBER.fullmatch(s):
    return Fraction(decimal.Decimal(s.replace(",", "")))
  if s.count("/") == 1 and "\\" not in s:
    num, den = (_parse_real(part) for part in s.split("/"))
    if num is None or den is None or den == 0:
      return None
    return num / den
  m = _FRAC.match(s)
  if m:
    first = _read_group(s, m.end())
    second = _read_group(s, first[1]) if first else None
    if second is None or s[second[1]:].strip():
      return None
    num, den = _parse_real(first[0]), _parse_real(second[0])
    if num is None or den is None or den == 0:
      return None
    return num / den
  m = _SQRT.match(s)
  if m:
    rest = s[m.end():].strip()
    if rest.startswith("(") and _wrapped(rest, "(", ")"):
      inner = rest[1:-1]
    else:
      group = _read_group(s, m.end())
      if group is None or s[group[1]:].strip():
        return None
      inner = group[0]
    radicand = _parse_real(inner)
    if radicand is None or radicand < 0:
      return None
    num, den = math.isqrt(radicand.numerator), math.isqrt(radicand.denominator)
    if num * num != radicand.numerator or den * den != radicand.denominator:
      return None  # irrational: not a plain number
    return Fraction(num, den)
  return None


def parse_number(s: str) -> Optional[tuple[Fraction, bool]]:
  """(exact value, has_percent_sign) of a cleaned plain-number answer, else None."""
  s = s.strip()
  percent = s.endswith("%")
  if percent:
    s = s[:-1]
  value = _parse_real(s)
  return None if value is None else (value, percent)


def _numbers_match(pred: tuple[Fraction, bool], ref: tuple[Fraction, bool]) -> bool:
  def readings(number):
    value, percent = number
    return {value, value / 100} if percent else {value}

  return bool(readings(pred) & readings(ref))


# ------------------------------------------------------------------------ LaTeX -> sympy text

_LATEX_NAMES = {
    "cdot": "*", "times": "*", "div": "/", "pi": "pi", "infty": "oo", "ln": "log", "log": "log",
    "exp": "exp", "sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec",
    "csc": "csc", "arcsin": "asin", "arccos": "acos", "arctan": "atan", "sinh": "sinh",
    "cosh": "cosh", "tanh": "tanh",
}
_GREEK = ("alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "sigma", "phi",
          "omega", "rho", "tau")
# Greek letters become plain symbols named "<letter>_" (avoids sympy's gamma and Python's lambda).
_ALLOWED_NAMES = (set(symbolic.FUNCTION_NAMES) | set(symbolic.CONSTANT_NAMES)
                  | {g + "_" for g in _GREEK})


_COMMAND = re.compile(r"\\([A-Za-z]+)")


def _latex_commands_to_sympy(s: str) -> Optional[str]:
  """Rewrites \\frac, \\sqrt and named commands into sympy syntax (recursively)."""
  out = []
  i = 0
  while i < len(s):
    if s[i] != "\\":
      out.append(s[i])
      i += 1
      continue
    m = _COMMAND.match(s, i)
    if m is None:
      return None
    name = m.group(1)
    i = m.end()
    if name in ("frac", "dfrac", "tfrac"):
      first = _read_group(s, i)
      second = _read_group(s, first[1]) if first else None
      if second is None:
        return None
      num, den = _latex_commands_to_sympy(first[0]), _latex_commands_to_sympy(second[0])
      if num is None or den is None:
        return None
      out.append(f" (({num})/({den}))")
      i = second[1]
    elif name == "sqrt":
      index = None
      if i < len(s) and s[i] == "[":
        close = s.find("]", i)
        if close == -1:
          return None
        index = _latex_commands_to_sympy(s[i + 1:close])
        i = close + 1
      group = _read_group(s, i)
      if group is None:
        return None
      inner = _latex_commands_to_sympy(group[0])
      if inner is None:
        return None
      out.append(f" sqrt({inner})" if index is None else f" (({inner})**(1/({index})))")
      i = group[1]
    elif name in _LATEX_NAMES:
      out.append(f" {_LATEX_NAMES[name]} ")
    elif name in _GREEK:
      out.append(f" {name}_ ")
    else:
      return None
  return "".join(out)


def _decimal_to_rational(m: re.Match) -> str:
  return f"({Fraction(decimal.Decimal(m.group(0)))})"


def to_sympy_syntax(s: str) -> Optional[str]:
  """A cleaned answer as a whitelisted sympy expression string, or None if unsupported."""
  if not s or len(s) > MAX_ANSWER_CHARS:
    return None
  s = s.replace("%", "/100")
  s = _latex_commands_to_sympy(s)
  if s is None:
    return None
  s = s.replace("{", "(").replace("}", ")").replace("^", "**")
  s = re.sub(r"(?<![A-Za-z_])e(?![A-Za-z_])", "E", s)
  if re.search(r"[^0-9A-Za-z_+\-*/(). ]", s):
    return None
  if re.search(r"[A-Za-z_)]\s*\.|\.\s*[A-Za-z_(]|\.\s*\.", s):
    return None  # attribute access or malformed decimals
  for name in re.findall(r"[A-Za-z_]+", s):
    if len(name) > 1 and name not in _ALLOWED_NAMES:
      return None
  if s.count("**") > 4:
    return None
  for exponent in re.findall(r"\*\*\s*\(*\s*(\d+)", s):
    if int(exponent) > _MAX_EXPONENT:
      return None
  s = re.sub(r"\d+\.\d*|\.\d+", _decimal_to_rational, s)
  return re.sub(r"\s+", " ", s).strip()


# -------------------------------------------------------------------------------- equivalence

_MULTIPLE = re.compile(r"\b(?:or|and)\b|;|\\lor|\\vee|\n|\d\s+\d|\\pm|\+-|-\+")
_BRACKETS = {"(": ")", "[": "]", "{": "}"}


def _split_items(s: str) -> tuple[str, list[str]]:
  """(outer bracket pair or "", top-level comma-separated items)."""
  brackets = ""
  for open_, close in _BRACKETS.items():
    if _wrapped(s, open_, close) and _top_level_commas(s[1:-1]):
      brackets, s = open_ + close, s[1:-1]
      break
  if not _top_level_commas(s):
    return brackets, [s]
  items, depth, start = [], 0, 0
  for i, ch in enumerate(s):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      items.append(s[start:i].strip())
      start = i + 1
  items.append(s[start:].strip())
  return brackets, items


def _top_level_commas(s: str) -> bool:
  depth = 0
  for ch in s:
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      return True
  return False


def _single_equal(pred: str, ref: str, timeout_s: float) -> bool:
  pred, ref = _clean(pred), _clean(ref)
  if not pred or not ref:
    return False
  if pred == ref:
    return True
  if _MULTIPLE.search(pred) and not _MULTIPLE.search(ref):
    return False
  ref_number, pred_number = parse_number(ref), parse_number(pred)
  if ref_number is not None:
    return pred_number is not None and _numbers_match(pred_number, ref_number)
  pred_expr, ref_expr = to_sympy_syntax(pred), to_sympy_syntax(ref)
  if pred_expr is None or ref_expr is None:
    return False
  if pred_expr == ref_expr:
    return True
  return symbolic.symbolic_equal(pred_expr, ref_expr, timeout_s) is True


def answers_equal(pred: Optional[str], ref: Optional[str], timeout_s: float = 1.0) -> bool:
  """Whether a predicted final answer matches the reference (see the module docstring)."""
  if pred is None or ref is None:
    return False
  pred, ref = _clean(pred), _clean(ref)
  if not pred or not ref or len(pred) > MAX_ANSWER_CHARS:
    return False
  if pred == ref:
    return True
  pred_brackets, pred_items = _split_items(pred)
  ref_brackets, ref_items = _split_items(ref)
  if len(pred_items) != len(ref_items):
    return False
  if len(ref_items) > 1 and pred_brackets and ref_brackets and pred_brackets != ref_brackets:
    return False
  return all(_single_equal(p, r, timeout_s) for p, r in zip(pred_items, ref_items))


def math_accuracy(completion: str, ref: str, timeout_s: float = 1.0) -> float:
  """1.0 if the completion's extracted final answer equals ref, else 0.0."""
  pred = extract_answer(completion)
  return 1.0 if pred is not None and answers_equal(pred, ref, timeout_s) else 0.0
