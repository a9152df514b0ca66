"""A local stand-in for GSM8K: procedurally generated grade-school word problems in GSM8K's own
record format, for tests and smoke runs that must not download the dataset.

Each record is what GSM8K holds: {"question": str, "answer": "rationale with <<a*b=c>>
calculator annotations, one step a line\\n#### final"}. `write_gsm8k_jsonl` turns them into
Problems with the same parser the TFDS loader uses (`gsm8k_problem`) and writes a problems JSONL
file for `data.source=jsonl` (whose last 10% is the held-out split).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from reasoner.data.datasets import gsm8k_problem
from reasoner.data.problem import Problem

_NAMES = (("Natalia", "she", "her"), ("James", "he", "his"), ("Amara", "she", "her"),
          ("Tom", "he", "his"), ("Lena", "she", "her"), ("Raj", "he", "his"))
_ITEMS = ("apples", "stickers", "marbles", "books", "cookies", "pencils")


def _step(expr: str, value: int, text: str = "") -> str:
  """One rationale line with GSM8K's calculator annotation: 'text expr = <<expr=value>>value'."""
  return f"{text}{expr} = <<{expr}={value}>>{value}"


def _buy(r) -> tuple[str, list[str], int]:
  (name, he, _), item = _NAMES[r.integers(len(_NAMES))], _ITEMS[r.integers(len(_ITEMS))]
  a, b, c = (int(x) for x in r.integers(2, 20, size=3))
  q = (f"{name} has {a} {item}. {he.capitalize()} buys {b} packs with {c} {item} in each pack. "
       f"How many {item} does {name} have now?")
  return q, [_step(f"{b}*{c}", b * c, "The packs hold "),
             _step(f"{a}+{b * c}", a + b * c, f"{name} has ")], a + b * c


def _wage(r) -> tuple[str, list[str], int]:
  name, he, his = _NAMES[r.integers(len(_NAMES))]
  a, b, c = int(r.integers(8, 30)), int(r.integers(2, 9)), int(r.integers(2, 7))
  q = (f"{name} earns ${a} an hour. {he.capitalize()} works {b} hours a day for {c} days. "
       f"How many dollars does {he} earn in total?")
  return q, [_step(f"{a}*{b}", a * b, f"Each day {he} earns "),
             _step(f"{a * b}*{c}", a * b * c, f"In {c} days {his} pay is ")], a * b * c


def _left(r) -> tuple[str, list[str], int]:
  (name, he, _), item = _NAMES[r.integers(len(_NAMES))], _ITEMS[r.integers(len(_ITEMS))]
  b, c = int(r.integers(2, 30)), int(r.integers(2, 30))
  a = b + c + int(r.integers(1, 40))
  q = (f"{name} had {a} {item}. {he.capitalize()} gave {b} to a friend and sold {c}. "
       f"How many {item} are left?")
  return q, [_step(f"{b}+{c}", b + c, f"{name} gave away and sold "),
             _step(f"{a}-{b + c}", a - b - c)], a - b - c


def _days(r) -> tuple[str, list[str], int]:
  name, he, _ = _NAMES[r.integers(len(_NAMES))]
  per_day, days = int(r.integers(3, 25)), int(r.integers(2, 12))
  q = (f"{name} reads {per_day} pages a day. How many days does {he} need to finish a "
       f"{per_day * days}-page book?")
  return q, [_step(f"{per_day * days}/{per_day}", days)], days


_TEMPLATES: tuple[Callable, ...] = (_buy, _wage, _left, _days)


def gsm8k_like_records(n: int, seed: int = 0) -> list[dict]:
  """`n` GSM8K-format records {question, answer} (deterministic in `seed`)."""
  r = np.random.default_rng(seed)
  records = []
  for i in range(n):
    question, steps, final = _TEMPLATES[i % len(_TEMPLATES)](r)
    records.append({"question": question, "answer": "\n".join(steps) + f"\n#### {final}"})
  return records


def gsm8k_like_problems(n: int, seed: int = 0) -> list[Problem]:
  """The records as Problems, parsed as the TFDS loader parses GSM8K (task 'gsm8k')."""
  return [gsm8k_problem(rec) for rec in gsm8k_like_records(n, seed)]


def write_gsm8k_jsonl(path: str, n: int = 80, seed: int = 0) -> str:
  """Writes `n` problems as a `load_jsonl_problems` file ({prompt, answer, solution, task} a
  line); returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for p in gsm8k_like_problems(n, seed):
      f.write(json.dumps({"prompt": p.prompt, "answer": p.answer, "solution": p.solution,
                          "task": p.task}) + "\n")
  return path
