"""Math answer verifier: final-answer extraction, normalisation and equivalence.

Extraction (`extract_answer`) reads the single `<answer>...</answer>` block that follows the
thinking (a `\\boxed{}` inside it wins), or, without answer tags, the last `\\boxed{}` after
the thinking. Missing, empty, repeated or thinking-only answers give None, so they score 0.

Equivalence policy (`answers_equal(pred, ref)`); false positives are worse than false
negatives (a policy hunts for them), so every reading below is one a careful grader would
accept and nothing ambiguous is guessed:
  * both sides are normalised: unicode minus and full-width digits, `$`, `\\text{}` and
    `\\boxed{}` at any depth, LaTeX spacing, `\\left`/`\\right`, `\\dfrac`/`\\tfrac`, degree
    signs, "the answer is", a leading `x =` / `x \\in`, trailing units ("3 apples", "12 dollars",
    "5cm"; never a word that changes the value: "5 million", "3 pi", "5 x", "5 squared"; two
    known units that differ make the answers differ: "5 m" is not "5 cm") and
    thousands separators ("1,000", "1{,}000", "1 000", "1\\,000": a space-separated group must be
    exactly three digits, so "1 00" stays two numbers);
  * if the reference is a plain number (integer, decimal, a repeating decimal
    "0.1\\overline{6}", "1e3", "1.5\\times10^{3}", `a/b`,
    `\\frac{a}{b}`, `\\sqrt{n}` of a perfect square, a mixed number "1 1/2" / "1\\frac{1}{2}" /
    "-2\\frac{3}{4}" (a whole number and a proper fraction), "2.5 million", or unambiguous
    English words: "twelve", "one hundred twenty-three", "three quarters", "a half", "one and
    a half", optionally with `%` / "percent"), the prediction must be a plain number too and
    equal exactly (no float tolerance: "0.333" != "1/3"). A prediction that is an unevaluated
    expression ("23+45-7", "2^{10}") does NOT match a numeric reference: it would let a policy
    copy the question instead of solving it. "2\\frac{1}{2}" inside an expression (a mixed
    number or a product?) is not compared at all;
  * percentages: "50%" equals both "50" (GSM8K style "what percent") and "0.5"; two
    percentages compare as written ("0.5%" is not "50%");
  * structure: `\\{...\\}` sets compare as sets (any order, duplicates ignored); intervals
    `[a, b)` compare end-point-wise with the same bracket kinds; unions (`\\cup`, `U`) compare
    as sets of reals: with rational / infinite ends they are sorted and merged ("[1,2]\\cup[2,3]"
    is "[1,3]"), otherwise their members pair up in any order; tuples "(1, 2)" compare
    element-wise, in order, with the same brackets; an unbracketed list ("1, 2", "x = 1 or
    x = 2", "\\pm 2") is a list of solutions and compares in any order, same length; labelled
    items ("x = 1, y = 2") are matched by label;
  * a prediction listing several answers for a single reference ("5 or 6", "5, 6") is wrong;
  * otherwise both sides are converted from simple LaTeX to sympy syntax, validated against a
    whitelist, and compared symbolically (`simplify(a - b) == 0`) in a worker process with a
    hard time limit (`timeout_s` a comparison, 4 x `timeout_s` for all the comparisons of one
    answer: a set's elements cannot multiply it); timeouts and parse failures count as "not
    equal".
"""

from __future__ import annotations

import decimal
import math
import re
import time
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
  """Contents of every outermost `\\boxed{...}` / `\\fbox{...}` in text, in order.

  Braces are balanced; a box nested inside another (`\\boxed{\\boxed{5}}`) is part of the outer
  box's content, not a second answer.
  """
  out = []
  end = 0
  for m in re.finditer(r"\\(?:boxed|fbox)\s*(?=\{)", text):
    if m.start() < end:
      continue
    group = _read_group(text, m.end())
    if group is not None:
      out.append(group[0])
      end = group[1]
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
  for _ in range(8):  # a box that is all of the answer is unwrapped: \\boxed{\\boxed{5}} -> 5
    m = re.match(r"\\(?:boxed|fbox)\s*(?=\{)", content)
    group = _read_group(content, m.end()) if m else None
    if group is None or group[1] != len(content):
      break
    content = group[0].strip()
  return content or None


# ------------------------------------------------------------------------------ normalisation

_CHAR_REPLACEMENTS = (
    ("\u2212", "-"), ("\u2013", "-"), ("\u2014", "-"), ("\u2010", "-"), ("\u2011", "-"),
    ("\u00d7", "*"), ("\u22c5", "*"), ("\u00b7", "*"), ("\u00f7", "/"), ("\u2044", "/"),
    ("\u00b2", "^2"), ("\u00b3", "^3"), ("\u00b0", ""), ("\u2019", "'"), ("\u221a", "\\sqrt"),
    ("\u03c0", "\\pi"), ("\u221e", "\\infty"), ("\u222a", "\\cup"), ("\u2205", "\\emptyset"),
    ("\u211d", "(-\\infty,\\infty)"), ("\u2264", "\\le"), ("\u2265", "\\ge"), ("\u2208", "\\in"),
    ("\u00b1", "\\pm"), ("\u2009", " "), ("\u202f", " "), ("\u00a0", " "), ("\u27e8", "\\langle"),
    ("\u27e9", "\\rangle"),
)
_VULGAR_AFTER_DIGIT = re.compile(r"(?<=\d)(?=[\u00bc-\u00be\u2150-\u215e])")
_UNWRAP_COMMANDS = ("boxed", "fbox", "text", "textbf", "textit", "textrm", "textnormal", "mathrm",
                    "mathbf", "mathit", "mbox", "operatorname", "hbox")
_REPLACE_PATTERNS = (
    (r"\{,\}", ","),  # "1{,}000"
    (r"\\mathbb\s*\{?\s*R\s*\}?", "(-\\\\infty,\\\\infty)"),
    (r"\\varnothing\b", "\\\\emptyset"),
    (r"\\lbrace\b", "\\\\{"), (r"\\rbrace\b", "\\\\}"), (r"\\lbrack\b", "["), (r"\\rbrack\b", "]"),
    (r"\\(?:leq?|leqslant)\b|<=", "\\\\le "), (r"\\(?:geq?|geqslant)\b|>=", "\\\\ge "),
    (r"\\(?:left|right)\s*\.", ""),
    (r"\\(?:left|right|[bB]igg?[lr]?)\b", ""),
    (r"\\(?:[,;: ]|quad\b|qquad\b)|~", " "),  # LaTeX spaces are spaces (thousands "1\,000")
    (r"\\!", ""), (r"\\displaystyle\b", ""), (r"\\dfrac\b|\\tfrac\b", "\\\\frac"),
    (r"\^\s*\{\s*\\circ\s*\}", ""), (r"\^\s*\\circ\b", ""), (r"\\circ\b", ""), (r"\\degree\b", ""),
    (r"\\\$", ""), (r"\$", ""), (r"[\u20ac\u00a3\u00a5\u20b9]", ""), (r"\\%", "%"),
    (r"\s*\b(?:per\s*cent|percent)$", "%"),
)
_REPLACE_COMPILED = tuple((re.compile(p), r) for p, r in _REPLACE_PATTERNS)
_MATH_DELIMITERS = re.compile(r"\\\((.*)\\\)|\\\[(.*)\\\]", re.S)
_ANSWER_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\b\s*(?:is|:)?\s*:?\s*", re.I)
_LABEL = (r"(?:[A-Za-z](?:_\{?\w+\}?)?(?:\(\s*[A-Za-z]\s*\))?|\\[A-Za-z]+"
          r"|\(\s*[A-Za-z](?:\s*,\s*[A-Za-z])+\s*\))")  # x, x_1, f(x), \theta, (x, y)
_ASSIGNMENT = re.compile(rf"^(?P<label>{_LABEL})\s*(?:=|:|\\in(?![A-Za-z]))\s*(?P<rest>[^=]+)$")
# "x = 3" has a label; "x+1 = 3" does not (an equation, compared as written).
_UNION_U = re.compile(r"(?<=[)\]}])\s*(?:U|\\cup)\s*(?=[(\[{\\])")
_PLAIN_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?%?")
_SPACED_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?%?")

# Trailing words that are units / nouns ("3 apples", "12 dollars", "5 cm") and are dropped, unless
# they change the value or join several answers: those are never stripped.
_KNOWN_UNITS = ("mm", "cm", "m", "km", "mg", "g", "kg", "lb", "lbs", "oz", "ml", "l", "L", "s",
                "sec", "min", "h", "hr", "hrs", "ft", "mph", "km/h", "m/s", "cm^2", "m^2",
                "cm^3", "m^3", "sq", "in", "yd", "mi", "kph", "mL", "cm2", "m2", "ft^2", "in^2")
_ATTACHED_UNITS = re.compile(
    rf"^(?P<num>[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:/\d+)?%?)"
    rf"(?P<unit>{'|'.join(re.escape(u) for u in sorted(_KNOWN_UNITS, key=len, reverse=True))})\.?$")
_MAX_UNIT_WORDS = 6
_UNIT_WORD = re.compile(r"[A-Za-z][A-Za-z.'/]*(?:\^?[23])?")
_NOT_UNITS = frozenset("""
or and to plus minus times nor but vs versus over than then either neither not no past till until
after before divided by point repeating recurring squared cubed root roots sqrt factorial power
powers inverse reciprocal log ln sin cos tan exp mod modulo pi i e th st nd rd x y z n zero one two
three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen
eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred hundreds thousand
thousands million millions billion billions trillion trillions dozen dozens score lakh crore tens
ones half halves third thirds quarter quarters fourth fourths fifth fifths sixth sixths seventh
sevenths eighth eighths ninth ninths tenth tenths hundredth hundredths thousandth thousandths
millionth millionths percent negative positive alpha beta gamma delta theta lambda mu sigma phi
omega rho tau infinity inf billionth billionths trillionth trillionths grand mil mill bn mn bil thou
imaginary
""".split())


def _unwrap(text: str, command: str) -> str:
  """Replaces every `\\command{X}` by X (balanced braces, any nesting).

  Text that starts with a letter gets a space before it: "5\\text{dollars}" is "5 dollars".
  """
  if "\\" + command not in text:
    return text
  pattern = re.compile(r"\\" + command + r"\s*(?=\{)")
  while True:
    m = pattern.search(text)
    if m is None:
      return text
    group = _read_group(text, m.end())
    if group is None:
      return text
    pad = " " if group[0][:1].isalpha() and command not in ("boxed", "fbox") else ""
    text = text[:m.start()] + pad + group[0] + text[group[1]:]


def _is_unit_text(words: str) -> bool:
  for word in words.split():
    if not _UNIT_WORD.fullmatch(word):
      return False
    bare = word.rstrip(".")
    if bare in _KNOWN_UNITS:
      continue
    if len(bare) < 3 or bare.lower() in _NOT_UNITS:
      return False
  return True


def _constant_expression(s: str) -> bool:
  """Whether s is a LaTeX expression without variables ("4\\sqrt{3}", "2\\pi")."""
  if re.search(r"(?:[\d})]|\\[A-Za-z]+)$", s) is None:
    return False
  return (not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", s))
          and to_sympy_syntax(s) is not None)


def _strip_units(s: str) -> tuple[str, str]:
  """(number, unit words) of "3 apples" / "5cm"; (s, "") when s is not a number with units."""
  m = _ATTACHED_UNITS.match(s)
  if m:
    return m.group("num"), m.group("unit")
  if not s[-1:].isalpha() and not s.endswith(("^2", "^3", ".")):
    return s, ""
  spaces = [m.start() for m in re.finditer(r" ", s)]
  # The longest number prefix wins ("one hundred apples").
  for i in reversed(spaces[-_MAX_UNIT_WORDS:]):
    prefix, words = s[:i].rstrip(), s[i + 1:]
    if not _is_unit_text(words):
      break
    if prefix and (parse_number(prefix) is not None or _constant_expression(prefix)):
      return prefix, words
  return s, ""


# Units whose names differ are different units: "5 cm" is not "5 m" even though both are 5.
_UNIT_NAMES = {
    "mm": ("millimeter", "millimetre"), "cm": ("centimeter", "centimetre"),
    "m": ("meter", "metre"), "km": ("kilometer", "kilometre"), "in": ("inch", "inche"),
    "ft": ("foot", "feet"), "yd": ("yard",), "mi": ("mile",), "mg": ("milligram",),
    "g": ("gram",), "kg": ("kilogram", "kilo"), "lb": ("pound", "lbs"), "oz": ("ounce",),
    "ml": ("milliliter", "millilitre"), "l": ("liter", "litre"), "s": ("second", "sec"),
    "min": ("minute",), "h": ("hour", "hr", "hrs"), "day": (), "week": (), "month": (),
    "year": ("yr",), "dollar": (), "cent": (), "degree": ("deg",), "radian": ("rad",),
    "mph": (), "km/h": ("kph",), "m/s": (),
}
_UNIT_CANON = {alias: name for name, aliases in _UNIT_NAMES.items()
               for alias in (name,) + aliases}


def _canonical_unit(words: str) -> Optional[str]:
  """"cm" for "centimeters", "cm^2" for "square cm"; None for words that are not a known unit."""
  words = words.lower().replace(".", "").split()
  if not words:
    return None
  last, power = re.fullmatch(r"(.*?)(\^?[23])?", words[-1]).groups()
  power = (power or "").lstrip("^")
  if any(w in ("square", "sq") for w in words[:-1]):
    power = "2"
  elif "cubic" in words[:-1]:
    power = "3"
  unit = _UNIT_CANON.get(last) or (_UNIT_CANON.get(last[:-1]) if last.endswith("s") else None)
  if unit is None:
    return None
  return unit + ("^" + power if power else "")


def _clean(s: str) -> str:
  """Notation-level clean-up shared by every comparison (no numeric canonicalisation)."""
  return _clean_with_unit(s)[0]


def _clean_with_unit(s: str) -> tuple[str, str]:
  """`_clean`'s text and the unit words it dropped ("" when none)."""
  if _PLAIN_NUMBER.fullmatch(s):  # the common case; nothing below would change it
    return s, ""
  for old, new in _CHAR_REPLACEMENTS:  # before NFKC, which would turn "x²" into "x2"
    s = s.replace(old, new)
  s = _VULGAR_AFTER_DIGIT.sub(" ", s)  # "1½" is 1 1/2, not NFKC's "11/2"
  s = unicodedata.normalize("NFKC", s)
  for old, new in _CHAR_REPLACEMENTS:  # again for what NFKC produced (e.g. "½" -> "1⁄2")
    s = s.replace(old, new)
  for command in _UNWRAP_COMMANDS:
    s = _unwrap(s, command)
  for pattern, replacement in _REPLACE_COMPILED:
    s = pattern.sub(replacement, s)
  s = re.sub(r"\s+", " ", s).strip()
  m = _MATH_DELIMITERS.fullmatch(s)
  inner = m.group(1) if m and m.group(1) is not None else m.group(2) if m else None
  if inner is not None and not re.search(r"\\[()\[\]]", inner):
    s = inner.strip()
  s = _ANSWER_PREFIX.sub("", s)
  s = s.rstrip(" .")
  m = _ASSIGNMENT.match(s)
  if m:
    s = m.group("rest").strip()
  s = _UNION_U.sub("\\\\cup ", s)
  unit = ""
  if s:
    s, unit = _strip_units(s)
  if _THOUSANDS.fullmatch(s):
    s = s.replace(",", "")
  elif _SPACED_THOUSANDS.fullmatch(s):
    s = s.replace(" ", "")
  return s.strip(), unit


def normalize_answer(s: str) -> str:
  """Canonical text of an answer: `_clean` plus canonical numbers ("1,000.0" -> "1000").

  Plain numbers (also mixed numbers and number words) become an integer or a reduced fraction
  "p/q" (keeping a trailing "%"), so normalised strings are also suitable for majority voting.
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
_THOUSANDS_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d{1,3}(?: \d{3})+(?:\.\d+)?")
_MIXED_TEXT = re.compile(r"(?P<whole>\d+) (?:and )?(?P<num>\d+) ?/ ?(?P<den>\d+)")
_MIXED_LATEX = re.compile(r"(?P<whole>\d+) ?(?:and )?\\[dt]?frac(?![A-Za-z])")
_SCALED = re.compile(
    r"(?P<mant>\d+(?:\.\d+)?) (?P<scale>hundred|thousand|million|billion|trillion)")
_FRAC = re.compile(r"\\[dt]?frac(?![A-Za-z])")
_SQRT = re.compile(r"(?:\\sqrt|sqrt)")
_WORDS = re.compile(r"[a-z][a-z -]*")
_SIGN_WORD = re.compile(r"(?:minus|negative) ", re.I)
_REPEATING = re.compile(
    r"(?P<whole>\d*)\.(?P<fixed>\d*) ?\\overline ?\{ ?(?P<period>\d+) ?\}")


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


def _digit_groups(s: str, start: int) -> Optional[tuple[int, int, int]]:
  """(numerator, denominator, end) of `\\frac{p}{q}` / `\\frac pq` with digit-only p, q."""
  first = _read_group(s, start)
  second = _read_group(s, first[1]) if first else None
  if second is None:
    return None
  p, q = first[0].strip(), second[0].strip()
  if not (p.isdigit() and q.isdigit()):
    return None
  return int(p), int(q), second[1]


def _mixed_number(s: str) -> Optional[Fraction]:
  """`1 1/2`, `1\\frac{1}{2}`, `1 \\frac12`: a whole number and a proper fraction, else None."""
  m = _MIXED_TEXT.fullmatch(s)
  if m:
    whole, num, den = int(m.group("whole")), int(m.group("num")), int(m.group("den"))
  else:
    m = _MIXED_LATEX.match(s)
    if m is None:
      return None
    groups = _digit_groups(s, m.end())
    if groups is None or s[groups[2]:].strip():
      return None
    whole, (num, den) = int(m.group("whole")), groups[:2]
  if whole < 1 or not 0 < num < den:
    return None  # "2 3/2" or "0 1/2" are not mixed numbers
  return whole + Fraction(num, den)


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
  m = _SIGN_WORD.match(s)
  if m and s[m.end():][:1].isdigit():  # "minus 5", "negative 2.5"
    value = _parse_real(s[m.end():])
    return None if value is None else -value
  if s[0].isalpha() and _WORDS.fullmatch(s.lower()):
    return _parse_words(s.lower())
  m = _REPEATING.fullmatch(s)
  if m:  # 0.1\overline{6} = 1/6
    whole, fixed, period = m.group("whole") or "0", m.group("fixed"), m.group("period")
    base = Fraction(decimal.Decimal(f"{whole}.{fixed or 0}"))
    return base + Fraction(int(period), (10 ** len(period) - 1) * 10 ** len(fixed))
  m = _DECIMAL.fullmatch(s)
  if m:
    exponent = int(m.group("exp") or 0)
    if abs(exponent) > 100:
      return None
    return Fraction(decimal.Decimal(m.group("mant"))) * Fraction(10) ** exponent
  m = _TIMES_POWER_OF_TEN.fullmatch(s)
  if m:
    mantissa, exponent = _parse_real(m.group("mant")), int(m.group("exp"))
    if mantissa is None or abs(exponent) > 100:
      return None
    return mantissa * Fraction(10) ** exponent
  if _THOUSANDS_NUMBER.fullmatch(s):
    return Fraction(decimal.Decimal(s.replace(",", "").replace(" ", "")))
  mixed = _mixed_number(s)
  if mixed is not None:
    return mixed
  m = _SCALED.fullmatch(s)
  if m:
    return Fraction(decimal.Decimal(m.group("mant"))) * _SCALES[m.group("scale")]
  if s.count("/") == 1 and "\\" not in s:
    parts = [part.strip() for part in s.split("/")]
    if any(" " in part for part in parts):
      return None  # "1 000/2", "1 1/2" (handled above): never a spaced numerator
    num, den = (_parse_real(part) for part in parts)
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
  if pred[1] and ref[1]:
    return pred[0] == ref[0]  # "5000%" is not "50%" (though both read as 50)

  def readings(number):
    value, percent = number
    return {value, value / 100} if percent else {value}

  return bool(readings(pred) & readings(ref))


# ------------------------------------------------------------------------------ number words

_SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9,
           "trillion": 10**12}
_BIG_SCALES = ("trillion", "billion", "million", "thousand")
# Denominator words; "second" is left out (an ordinal and a unit of time, never a fraction here).
_DENOMINATORS = {"half": 2, "halves": 2, "third": 3, "thirds": 3, "quarter": 4, "quarters": 4,
                 "fourth": 4, "fourths": 4, "fifth": 5, "fifths": 5, "sixth": 6, "sixths": 6,
                 "seventh": 7, "sevenths": 7, "eighth": 8, "eighths": 8, "ninth": 9, "ninths": 9,
                 "tenth": 10, "tenths": 10}


def _words_below_100(tokens: list[str]) -> Optional[int]:
  if len(tokens) == 1:
    if tokens[0] in _SMALL:
      return _SMALL[tokens[0]]
    return _TENS.get(tokens[0])
  if len(tokens) == 2 and tokens[0] in _TENS and tokens[1] in _SMALL and _SMALL[tokens[1]] > 0:
    return _TENS[tokens[0]] + _SMALL[tokens[1]]
  return None


def _words_below_1000(tokens: list[str]) -> Optional[int]:
  if "hundred" not in tokens:
    return _words_below_100(tokens)
  i = tokens.index("hundred")
  head = [1] if tokens[:i] == ["a"] else [_words_below_100(tokens[:i])]
  if head[0] is None or head[0] == 0:
    return None
  rest = tokens[i + 1:]
  if rest[:1] == ["and"]:
    rest = rest[1:]
    if not rest:
      return None
  tail = _words_below_100(rest) if rest else 0
  if tail is None or (rest and tail == 0):
    return None
  return head[0] * 100 + tail


def _words_cardinal(tokens: list[str], scales: tuple[str, ...] = _BIG_SCALES) -> Optional[int]:
  """A cardinal in words ("one hundred twenty three", "two thousand and five"), else None."""
  if not tokens:
    return None
  for k, scale in enumerate(scales):
    if scale in tokens:
      i = tokens.index(scale)
      head = 1 if tokens[:i] == ["a"] else _words_below_1000(tokens[:i])
      if head is None or head == 0:
        return None
      rest = tokens[i + 1:]
      if rest[:1] == ["and"]:
        rest = rest[1:]
        if not rest:
          return None
      if not rest:
        return head * _SCALES[scale]
      tail = _words_cardinal(rest, scales[k + 1:])
      if tail is None or tail == 0:
        return None
      return head * _SCALES[scale] + tail
  if any(t in _SCALES and t != "hundred" for t in tokens):
    return None  # a scale out of order ("thousand million")
  return _words_below_1000(tokens)


def _words_fraction(tokens: list[str]) -> Optional[Fraction]:
  """"a half", "three quarters", "two thirds", "one tenth", else None."""
  if len(tokens) < 2 or tokens[-1] not in _DENOMINATORS:
    return None
  num = 1 if tokens[:-1] == ["a"] else _words_cardinal(tokens[:-1], ())
  if not num:
    return None
  return Fraction(num, _DENOMINATORS[tokens[-1]])


def _parse_words(s: str) -> Optional[Fraction]:
  """A number written in English words, where the reading is unambiguous, else None.

  Cardinals ("twelve", "one hundred twenty-three", "two thousand and five", "a million"),
  fractions ("a half", "three quarters", "two thirds"), mixed numbers ("one and a half"), a
  leading "negative" / "minus".
  """
  tokens = s.replace("-", " ").split()
  if not tokens or len(tokens) > 20:
    return None
  sign = 1
  if tokens[0] in ("negative", "minus"):
    sign, tokens = -1, tokens[1:]
  if "and" in tokens:  # "one and a half", "two and three quarters" (a cardinal's own "and" next)
    i = len(tokens) - 1 - tokens[::-1].index("and")
    whole, frac = _words_cardinal(tokens[:i]), _words_fraction(tokens[i + 1:])
    if whole is not None and frac is not None and frac < 1 and whole > 0:
      return sign * (whole + frac)
  value = _words_cardinal(tokens)
  if value is None and tokens[-1] == "dozen":  # "a dozen", "three dozen"
    count = 1 if tokens[:-1] == ["a"] else _words_cardinal(tokens[:-1])
    value = 12 * count if count else None
  if value is None:
    value = Fraction(1, 2) if tokens == ["half"] else _words_fraction(tokens)
  return None if value is None else sign * Fraction(value)


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


_AMBIGUOUS_MIXED = re.compile(
    r"(?<![\w^_.}])\d+\s*\\[dt]?frac\s*(?:\{\s*\d+\s*\}|\d)\s*(?:\{\s*\d+\s*\}|\d)")


def to_sympy_syntax(s: str) -> Optional[str]:
  """A cleaned answer as a whitelisted sympy expression string, or None if unsupported."""
  if not s or len(s) > MAX_ANSWER_CHARS:
    return None
  if _AMBIGUOUS_MIXED.search(s):
    return None  # "2\\frac{1}{2}x": a mixed number or a product? neither reading is safe
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
_OR_AND = re.compile(r"\s*,?\s+(?:or|and)\s+")
_MAX_ITEMS = 32
_SYMBOLIC_BUDGET = 4  # timeouts' worth of symbolic comparisons for one answer
_TEXT = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*")
_EMPTY_SETS = ("\\emptyset", "\\{\\}", "{}", "\\{ \\}", "{ }")
_INFINITY = {"\\infty": 1, "+\\infty": 1, "oo": 1, "inf": 1, "infinity": 1, "+oo": 1,
             "-\\infty": -1, "-oo": -1, "-inf": -1, "-infinity": -1}


def _split_top(s: str, sep: str) -> list[str]:
  """s split at every `sep` outside brackets (all kinds count: intervals mix them)."""
  items, depth, start, i = [], 0, 0, 0
  while i < len(s):
    ch = s[i]
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif depth == 0 and s.startswith(sep, i):
      items.append(s[start:i].strip())
      i += len(sep)
      start = i
      continue
    i += 1
  items.append(s[start:].strip())
  return items


def _enclosed(s: str, opens: str, closes: str) -> bool:
  """Whether s[0] opens and s[-1] closes one bracket pair around all of s (kinds may differ)."""
  if len(s) < 2 or s[0] not in opens or s[-1] not in closes:
    return False
  depth = 0
  for i, ch in enumerate(s):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
      if depth == 0 and i != len(s) - 1:
        return False
  return depth == 0


_LESS = r"<|\\le(?![A-Za-z])|\\lt(?![A-Za-z])"
_GREATER = r">|\\ge(?![A-Za-z])|\\gt(?![A-Za-z])"
# One way only to match (no backtracking blow-up): a character, or a whole command name.
_BOUND = r"(?:[^<>=\\]|\\(?!le|ge|lt|gt)[A-Za-z]+(?![A-Za-z]))*"
_BETWEEN = re.compile(rf"(?P<lo>{_BOUND})\s*(?P<op1>{_LESS})\s*(?P<var>[A-Za-z])\s*"
                      rf"(?P<op2>{_LESS})\s*(?P<hi>{_BOUND})")
_RAY = re.compile(rf"(?P<var>[A-Za-z])\s*(?P<op>{_LESS}|{_GREATER})\s*(?P<bound>{_BOUND})")


def _inequality(s: str, depth: int):
  """"1 \\le x < 2" / "x > 3" as the interval tree it denotes, else None."""
  if not re.search(r"[<>]|\\[lg][et](?![A-Za-z])", s):
    return None
  m = _BETWEEN.fullmatch(s)
  if m and m.group("lo").strip() and m.group("hi").strip():
    open_ = "[" if m.group("op1").startswith("\\le") else "("
    close = "]" if m.group("op2").startswith("\\le") else ")"
    ends = [m.group("lo"), m.group("hi")]
  else:
    m = _RAY.fullmatch(s)
    if m is None or not m.group("bound").strip():
      return None
    closed = m.group("op").startswith(("\\le", "\\ge"))
    if re.fullmatch(_LESS, m.group("op")):
      open_, close, ends = "(", "]" if closed else ")", ["-\\infty", m.group("bound")]
    else:
      open_, close, ends = "[" if closed else "(", ")", [m.group("bound"), "\\infty"]
  return ("seq", open_, close, [_item(e, depth) for e in ends])


def _item(text: str, depth: int):
  """The tree of one element of a set / tuple / list; a single value keeps its unit."""
  text, unit = _clean_with_unit(text)
  tree = _structure(text, depth + 1)
  return tree[:2] + (_canonical_unit(unit),) if tree[0] == "one" else tree


def _union_member(tree) -> bool:
  """A set, or an interval: two items in round / square brackets."""
  return tree[0] == "set" or (tree[0] == "seq" and len(tree[3]) == 2 and tree[1] in "([")


def _label(item: str) -> Optional[str]:
  m = _ASSIGNMENT.match(item.strip())
  return m.group("label") if m else None


def _structure(s: str, depth: int = 0):
  """A cleaned answer as a small tree of tuples.

  ("one", text, unit) a single value (unit: a canonical unit name or None); ("seq", open,
  close, items) a bracketed tuple or interval; ("set", items) a `\\{...\\}` set; ("list",
  items, labels) an unbracketed list ("1, 2", "x = 1 or x = 2"); ("union", members) intervals
  / sets joined by `\\cup`.
  """
  s = s.strip()
  if depth > 8 or parse_number(s) is not None:
    return ("one", s, None)
  if s in _EMPTY_SETS:
    return ("set", [])
  if "\\cup" in s:
    members = _split_top(s, "\\cup")
    if len(members) > 1:
      trees = [_item(m, depth) for m in members]
      if all(_union_member(t) for t in trees):
        return ("union", trees)
      return ("one", s, None)
  for open_, close in (("\\{", "\\}"), ("{", "}")):
    if s.startswith(open_) and s.endswith(close) and _enclosed(s[len(open_) - 1:], "{", "}"):
      inner = s[len(open_):-len(close)].strip()
      if open_ == "{" and "," not in inner:
        break  # a LaTeX group, not a set
      items = _split_top(inner, ",") if inner else []
      return ("set", [_item(i, depth) for i in items])
  if s.startswith("\\langle") and s.endswith("\\rangle"):
    items = _split_top(s[len("\\langle"):-len("\\rangle")], ",")
    if len(items) > 1:
      return ("seq", "<", ">", [_item(i, depth) for i in items])
  if _enclosed(s, "([", ")]"):
    items = _split_top(s[1:-1], ",")
    if len(items) > 1 and (len(items) == 2 or s[0] + s[-1] in ("()", "[]")):
      return ("seq", s[0], s[-1], [_item(i, depth) for i in items])
  items = _split_top(s, ",")
  if len(items) == 1:
    items = [i for i in _OR_AND.split(s) if i]
  elif any(_OR_AND.search(i) for i in items):  # "1, 2, and 3"
    items = [j for i in items for j in _OR_AND.split(i) if j]
  if len(items) == 1 and s.count("\\pm") == 1 and "," not in s:
    plus, minus = s.replace("\\pm", "+"), s.replace("\\pm", "-")
    return ("list", [_item(plus, depth), _item(minus, depth)],
            [None, None])
  if len(items) > 1:
    if " or " in s:  # "x < 1 or x > 2"
      rays = [_inequality(_clean(i), depth) for i in items]
      if all(rays):
        return ("union", rays)
    return ("list", [_item(i, depth) for i in items], [_label(i) for i in items])
  interval = _inequality(s, depth)
  return interval or ("one", s, None)


def _matching(a: list, b: list, equal) -> bool:
  """Whether the items of a and b pair up one-to-one under `equal` (bipartite matching)."""
  if len(a) != len(b):
    return False
  adjacent = [[j for j, y in enumerate(b) if equal(x, y)] for x in a]
  owner = [-1] * len(b)

  def augment(i, seen):
    for j in adjacent[i]:
      if j not in seen:
        seen.add(j)
        if owner[j] == -1 or augment(owner[j], seen):
          owner[j] = i
          return True
    return False

  return all(augment(i, set()) for i in range(len(a)))


def _set_equal(a: list, b: list, equal) -> bool:
  """Set equality: every element of each side equals some element of the other."""
  return (all(any(equal(x, y) for y in b) for x in a)
          and all(any(equal(x, y) for x in a) for y in b))


def _endpoint(tree) -> Optional[Fraction]:
  if tree[0] != "one":
    return None
  text = tree[1].replace(" ", "")
  if text in _INFINITY:
    return _INFINITY[text] * math.inf
  number = parse_number(text)
  return None if number is None or number[1] else number[0]


def _numeric_union(members) -> Optional[list]:
  """Canonical (sorted, merged) intervals of a union with rational / infinite ends, else None."""
  intervals = []
  for m in members:
    if m[0] == "set":
      for item in m[1]:
        v = _endpoint(item)
        if v is None or math.isinf(v):
          return None
        intervals.append((v, True, v, True))
      continue
    lo, hi = _endpoint(m[3][0]), _endpoint(m[3][1])
    if lo is None or hi is None:
      return None
    lo_closed, hi_closed = m[1] == "[", m[2] == "]"
    if (lo_closed and math.isinf(lo)) or (hi_closed and math.isinf(hi)):
      return None
    if lo > hi or (lo == hi and not (lo_closed and hi_closed)):
      return None  # empty or reversed: not a well-formed interval
    intervals.append((lo, lo_closed, hi, hi_closed))
  intervals.sort(key=lambda t: (t[0], not t[1]))
  merged = []
  for lo, lo_closed, hi, hi_closed in intervals:
    if merged:
      plo, plo_closed, phi, phi_closed = merged[-1]
      if lo < phi or (lo == phi and (phi_closed or lo_closed)):
        if hi > phi or (hi == phi and hi_closed):
          merged[-1] = (plo, plo_closed, hi, hi_closed or (hi == phi and phi_closed))
        continue
    merged.append((lo, lo_closed, hi, hi_closed))
  return merged


def _trees_equal(a, b, timeout_s: float, deadline: float) -> bool:
  equal = lambda x, y: _trees_equal(x, y, timeout_s, deadline)  # noqa: E731
  ka, kb = a[0], b[0]
  if ka == "one" and kb == "one":
    if a[2] and b[2] and a[2] != b[2]:
      return False  # "5 m, 3 m" is not "5 cm, 3 cm"
    return _single_equal(a[1], b[1], timeout_s, deadline)
  if "union" in (ka, kb):
    if not all(t[0] == "union" or _union_member(t) for t in (a, b)):
      return False
    ma = a[1] if ka == "union" else [a]
    mb = b[1] if kb == "union" else [b]
    ca, cb = _numeric_union(ma), _numeric_union(mb)
    if ca is not None and cb is not None:
      return ca == cb
    return _matching(ma, mb, equal)
  if ka == "set" and kb == "set":
    return _set_equal(a[1], b[1], equal)
  if {ka, kb} == {"set", "list"}:
    return _set_equal(a[1], b[1], equal)
  if {ka, kb} == {"set", "one"}:  # "\{3\}" for "3"
    items = a[1] if ka == "set" else b[1]
    return len(items) == 1 and equal(items[0], b if ka == "set" else a)
  if ka == "seq" and kb == "seq":
    return (a[1:3] == b[1:3] and len(a[3]) == len(b[3])
            and all(equal(x, y) for x, y in zip(a[3], b[3])))
  if {ka, kb} == {"seq", "list"}:  # "1, 2" for "(1, 2)": ordered, labelled items by label
    seq, lst = (a, b) if ka == "seq" else (b, a)
    if seq[1:3] != ("(", ")") or len(seq[3]) != len(lst[1]):
      return False
    items = _in_label_order(lst[1], lst[2])
    return items is not None and all(equal(x, y) for x, y in zip(items, seq[3]))
  if ka == "list" and kb == "list":
    la, lb = a[2], b[2]
    if (None not in la and None not in lb and len(set(la)) == len(la)
        and len(set(lb)) == len(lb)):  # "x = 1, y = 2" against "y = 2, x = 1"
      if set(la) != set(lb):
        return False
      by_label = dict(zip(lb, b[1]))
      return all(equal(x, by_label[l]) for l, x in zip(la, a[1]))
    return _matching(a[1], b[1], equal)
  return False


def _in_label_order(items: list, labels: list) -> Optional[list]:
  """Items of an unlabelled list as they are; labelled ones sorted by label ("y = 4, x = 3" is
  "(3, 4)"), but only for labels that leave no doubt about a tuple's order: consecutive letters
  (x, y, z; a, b) or indices (x_1, x_2). "b = 3, m = 2" could be (m, b): None."""
  if all(l is None for l in labels):
    return items
  if any(l is None for l in labels):
    return None
  keys = []
  for label in labels:
    m = re.fullmatch(r"([A-Za-z])(?:_\{?(\d+)\}?)?", label)
    if m is None:
      return None
    keys.append((m.group(1), int(m.group(2)) if m.group(2) else None))
  keys_sorted = sorted(keys, key=lambda k: (k[0], k[1] or 0))
  letters = {k[0] for k in keys}
  if len(letters) == 1 and all(k[1] is not None for k in keys):
    steps = [k[1] for k in keys_sorted]  # x_1, x_2, x_3
  elif all(k[1] is None for k in keys):
    steps = [ord(k[0]) for k in keys_sorted]  # x, y, z
  else:
    return None
  if any(b - a != 1 for a, b in zip(steps, steps[1:])):
    return None
  order = sorted(range(len(items)), key=lambda i: (keys[i][0], keys[i][1] or 0))
  return [items[i] for i in order]


def _infinity_sign(s: str) -> Optional[int]:
  return _INFINITY.get(s.replace(" ", ""))


def _single_equal(pred: str, ref: str, timeout_s: float, deadline: float) -> bool:
  pred, ref = _clean(pred), _clean(ref)
  if not pred or not ref:
    return False
  if pred == ref:
    return True
  inf_pred, inf_ref = _infinity_sign(pred), _infinity_sign(ref)
  if inf_pred is not None or inf_ref is not None:
    return inf_pred == inf_ref
  ref_number, pred_number = parse_number(ref), parse_number(pred)
  if ref_number is not None:
    return pred_number is not None and _numbers_match(pred_number, ref_number)
  if _MULTIPLE.search(pred) and not _MULTIPLE.search(ref):
    return False
  if len(ref) > 2 and _TEXT.fullmatch(ref) and pred.lower() == ref.lower():
    return True  # "Blue" for "blue"; not "X" for "x" (variables)
  pred_expr, ref_expr = to_sympy_syntax(pred), to_sympy_syntax(ref)
  if pred_expr is None or ref_expr is None:
    return False
  if pred_expr == ref_expr:
    return True
  left = deadline - time.monotonic()
  if left <= 0:
    return False
  return symbolic.symbolic_equal(pred_expr, ref_expr, min(timeout_s, left)) is True


def answers_equal(pred: Optional[str], ref: Optional[str], timeout_s: float = 1.0) -> bool:
  """Whether a predicted final answer matches the reference (see the module docstring)."""
  if pred is None or ref is None or len(pred) > 4 * MAX_ANSWER_CHARS:
    return False
  (pred, pred_unit), (ref, ref_unit) = _clean_with_unit(pred), _clean_with_unit(ref)
  if not pred or not ref or len(pred) > MAX_ANSWER_CHARS:
    return False
  pred_unit, ref_unit = _canonical_unit(pred_unit), _canonical_unit(ref_unit)
  if pred_unit and ref_unit and pred_unit != ref_unit:
    return False
  if pred == ref:
    return True
  pred_tree, ref_tree = _structure(pred), _structure(ref)
  if pred_tree[0] == "one":
    pred_tree = pred_tree[:2] + (pred_unit,)
  if ref_tree[0] == "one":
    ref_tree = ref_tree[:2] + (ref_unit,)
  if _size(pred_tree) > _MAX_ITEMS:
    return False
  # Sets and lists may compare many pairs symbolically: all of them share one time budget.
  deadline = time.monotonic() + _SYMBOLIC_BUDGET * timeout_s
  return _trees_equal(pred_tree, ref_tree, timeout_s, deadline)


def _size(tree) -> int:
  if tree[0] == "one":
    return 1
  children = tree[3] if tree[0] == "seq" else tree[1]
  return 1 + sum(_size(c) for c in children)


def math_accuracy(completion: str, ref: str, timeout_s: float = 1.0) -> float:
  """1.0 if the completion's extracted final answer equals ref, else 0.0."""
  pred = extract_answer(completion)
  return 1.0 if pred is not None and answers_equal(pred, ref, timeout_s) else 0.0
