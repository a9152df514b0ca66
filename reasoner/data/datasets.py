"""Real datasets: GSM8K through tensorflow-datasets, and JSONL problem / preference files.

`load_gsm8k` first tries `tfds.data_source` (array_record files; works without TensorFlow)
and falls back to `tfds.load` + `tfds.as_numpy`, which needs TensorFlow.

JSONL files hold one object per line (blank lines are skipped):
  problems:    {"prompt": str, "answer": str|number, "solution"?: str, "task"?: str, ...}
               (extra keys, e.g. "tests" for code problems, go to Problem.meta)
  preferences: {"prompt": str, "chosen": str, "rejected": str}
Errors name the file and line: "data.jsonl:3: missing key 'answer'".
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping, Optional

from reasoner.data.problem import PreferencePair, Problem

GSM8K_SPLITS = ("train", "test", "train_socratic", "test_socratic")
_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")


class DatasetFormatError(ValueError):
  """A dataset file or record that cannot be parsed (the message names file and line)."""


# ------------------------------------------------------------------------------------- GSM8K


def _text(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if hasattr(value, "item"):  # numpy scalar
    return _text(value.item())
  return str(value)


def parse_gsm8k_answer(answer: str) -> tuple[str, str]:
  """(rationale without `<<...>>` calculator annotations, final answer) of a GSM8K answer."""
  if "####" not in answer:
    raise DatasetFormatError(f"GSM8K answer has no '####' final answer: {answer[:80]!r}")
  rationale, final = answer.rsplit("####", 1)
  rationale = _CALCULATOR_ANNOTATION.sub("", rationale).strip()
  final = final.strip().replace(",", "")
  return rationale, final


def gsm8k_problem(example: Mapping[str, Any]) -> Problem:
  """A Problem from one GSM8K record (`question`, `answer`, optional tfds extras)."""
  question = _text(example["question"]).strip()
  answer = _text(example["answer"])
  if "####" not in answer and "short_answer" in example:  # tfds also splits the answer field
    answer = f"{_text(example.get('annotation', ''))}#### {_text(example['short_answer'])}"
  rationale, final = parse_gsm8k_answer(answer)
  return Problem(prompt=question, answer=final,
                 solution=f"<think>{rationale}</think><answer>{final}</answer>", task="gsm8k")


def _tfds_examples(name: str, split: str, data_dir: Optional[str], download: bool) -> Iterable:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"loading {name} needs tensorflow-datasets (pip install "
                      "tensorflow-datasets)") from e
  try:  # registers the builder without importing TensorFlow
    __import__(f"tensorflow_datasets.text.{name}")
  except ImportError:
    pass
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=download,
                            builder_kwargs={"file_format": "array_record"})
  except Exception as data_source_error:  # pylint: disable=broad-except
    first = f"tfds.data_source: {type(data_source_error).__name__}: {data_source_error}"
  try:
    return tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir, download=download))
  except ImportError as e:
    raise ImportError(f"could not read {name}[{split}] ({first}); the fallback tfds.load needs "
                      "TensorFlow (pip install tensorflow-cpu)") from e
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(f"could not read {name}[{split}] from {data_dir or 'the default data_dir'}"
                       f" ({first}; tfds.load: {type(e).__name__}: {e})") from e


def load_gsm8k(split: str = "train", data_dir: Optional[str] = None,
               download: bool = True) -> list[Problem]:
  """GSM8K as Problems (task 'gsm8k'); the rationale becomes the reference thinking."""
  if split.split("[")[0] not in GSM8K_SPLITS:
    raise ValueError(f"GSM8K split must be one of {GSM8K_SPLITS} (slicing allowed), got {split!r}")
  return [gsm8k_problem(example)
          for example in _tfds_examples("gsm8k", split, data_dir, download)]


# ------------------------------------------------------------------------------------- JSONL


def _read_jsonl(path: str) -> Iterable[tuple[int, dict]]:
  """(line number, object) for each non-blank line, with file:line errors."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  with open(path, "r", encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}:{line_number}: invalid JSON ({e.msg})") from None
      if not isinstance(record, dict):
        raise DatasetFormatError(f"{path}:{line_number}: expected a JSON object, got "
                                 f"{type(record).__name__}")
      yield line_number, record


def _field(record: dict, key: str, path: str, line_number: int) -> str:
  if key not in record:
    raise DatasetFormatError(f"{path}:{line_number}: missing key {key!r}")
  value = record[key]
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise DatasetFormatError(f"{path}:{line_number}: {key!r} must be a string, got "
                             f"{type(value).__name__}")
  return str(value)


def load_jsonl_problems(path: str, task: str = "math") -> list[Problem]:
  """Problems from `{prompt, answer[, solution, task, ...]}` lines (default task 'math')."""
  problems = []
  for line_number, record in _read_jsonl(path):
    prompt = _field(record, "prompt", path, line_number)
    answer = _field(record, "answer", path, line_number)
    solution = _field(record, "solution", path, line_number) if "solution" in record else ""
    record_task = _field(record, "task", path, line_number) if "task" in record else task
    meta = {k: v for k, v in record.items() if k not in ("prompt", "answer", "solution", "task")}
    problems.append(Problem(prompt=prompt, answer=answer, solution=solution, task=record_task,
                            meta=meta))
  return problems


def load_jsonl_preferences(path: str) -> list[PreferencePair]:
  """PreferencePairs from `{prompt, chosen, rejected}` lines."""
  return [PreferencePair(*(_field(record, key, path, line_number)
                           for key in ("prompt", "chosen", "rejected")))
          for line_number, record in _read_jsonl(path)]
