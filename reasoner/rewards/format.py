"""Process rewards that ignore correctness: output format, language consistency, length, cost."""

from __future__ import annotations

import collections
import re
import unicodedata
from typing import Union

import numpy as np

from reasoner.verify.answers import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

ArrayLike = Union[int, float, np.ndarray]

_FORMAT = re.compile(r"\s*<think>(?P<think>.*)</think>\s*<answer>(?P<answer>.*)</answer>\s*", re.S)


def format_reward(completion: str, prefix: str = "") -> float:
  """1.0 iff `prefix + completion` is `<think>...</think><answer>...</answer>` and nothing else.

  Each of the four tags appears exactly once, in that order, only whitespace surrounds the
  two blocks (in particular nothing after `</answer>`), and the answer is non-empty. Pass the
  prompt template's trailing `<think>` as `prefix` when the completion starts inside the
  thinking.
  """
  text = prefix + (completion or "")
  if any(text.count(tag) != 1 for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)):
    return 0.0
  m = _FORMAT.fullmatch(text)
  if m is None or not m.group("answer").strip():
    return 0.0
  return 1.0


def _script(ch: str) -> str:
  """Unicode script of a letter, from its character name ('LATIN', 'CYRILLIC', 'CJK', ...)."""
  ch = unicodedata.normalize("NFKC", ch)[:1] or ch
  name = unicodedata.name(ch, "")
  if not name:
    return "UNKNOWN"
  first = name.split(" ", 1)[0]
  if first in ("CJK", "HIRAGANA", "KATAKANA", "BOPOMOFO", "IDEOGRAPHIC"):
    return "CJK"
  return first


def dominant_script(text: str) -> str | None:
  """The most frequent script among the letters of text, or None if it has no letters."""
  counts = collections.Counter(_script(ch) for ch in text if ch.isalpha())
  return counts.most_common(1)[0][0] if counts else None


def thinking_text(completion: str) -> str:
  """The reasoning part of a completion: before `</think>`, else before `<answer>`."""
  completion = completion or ""
  if THINK_CLOSE in completion:
    text = completion[:completion.index(THINK_CLOSE)]
  elif ANSWER_OPEN in completion:
    text = completion[:completion.index(ANSWER_OPEN)]
  else:
    text = completion
  return text.replace(THINK_OPEN, "")


def language_consistency_reward(prompt: str, completion: str) -> float:
  """Share of the thinking's letters written in the prompt's dominant script (in [0, 1]).

  1.0 when the prompt or the thinking has no letters (e.g. the thinking is pure arithmetic).
  """
  target = dominant_script(prompt or "")
  letters = [ch for ch in thinking_text(completion) if ch.isalpha()]
  if target is None or not letters:
    return 1.0
  return sum(_script(ch) == target for ch in letters) / len(letters)


def _as_output(value: np.ndarray, like) -> ArrayLike:
  return float(value) if np.ndim(like) == 0 else value


def length_penalty(num_tokens: ArrayLike, max_tokens: int, buffer: int) -> ArrayLike:
  """DAPO soft overlong penalty (<= 0): 0 up to max-buffer, linear to -1 at max, -1 beyond."""
  length = np.asarray(num_tokens, dtype=np.float64)
  start = max_tokens - buffer
  if buffer > 0:
    ramp = (start - length) / buffer
  else:
    ramp = np.zeros_like(length)
  penalty = np.where(length <= start, 0.0, np.where(length <= max_tokens, ramp, -1.0))
  return _as_output(penalty.astype(np.float32), num_tokens)


def cost_penalty(num_tokens: ArrayLike, per_token: float) -> ArrayLike:
  """Linear generation-cost penalty (<= 0 for per_token >= 0): -per_token * num_tokens."""
  cost = -float(per_token) * np.asarray(num_tokens, dtype=np.float64)
  return _as_output(cost.astype(np.float32), num_tokens)
