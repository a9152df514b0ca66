"""Procedural tasks (determinism, held-out splits, reference solutions, checkers) and datasets."""

import collections
import dataclasses
import itertools
import json

import pytest

from reasoner.data import (DatasetFormatError, PreferencePair, Problem, TASKS, get_task,
                           load_gsm8k, load_jsonl_preferences, load_jsonl_problems, mixture,
                           parse_gsm8k_answer, split_of_key)
from reasoner.data.tasks import SPLITS, check_expression
from reasoner.rewards.format import format_reward

TASK_NAMES = sorted(TASKS)


def _wrap(answer):
  return f"<think>working</think><answer>{answer}</answer>"


# ------------------------------------------------------------------------------------ registry


def test_registry_names():
  assert {"arithmetic", "countdown", "linear_equation", "modular_arithmetic"} <= set(TASKS)
  for name in TASK_NAMES:
    assert get_task(name).name == name


def test_unknown_task_lists_valid_names():
  with pytest.raises(ValueError, match="arithmetic.*countdown.*linear_equation"):
    get_task("calculus")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_bad_arguments(name):
  with pytest.raises(ValueError):
    get_task(name).generate("dev", 2, seed=0)
  with pytest.raises(ValueError):
    get_task(name).generate("train", 2, seed=0, difficulty=0)


# ------------------------------------------------------------------------- generation / splits


@pytest.mark.parametrize("name", TASK_NAMES)
def test_deterministic_and_seed_dependent(name):
  task = get_task(name)
  first = task.generate("train", 20, seed=3, difficulty=1)
  assert first == task.generate("train", 20, seed=3, difficulty=1)
  assert first != task.generate("train", 20, seed=4, difficulty=1)
  assert [p.prompt for p in first[:10]] == [p.prompt for p in task.generate("train", 10, seed=3)]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_splits_never_overlap(name):
  task = get_task(name)
  keys = {split: set() for split in SPLITS}
  prompts = {split: set() for split in SPLITS}
  for difficulty in range(1, task.max_difficulty + 2):  # one past the max: clamped
    for seed in range(3):
      for split in SPLITS:
        problems = task.generate(split, 60, seed=seed, difficulty=difficulty)
        call_keys = [p.meta["key"] for p in problems]
        assert len(set(call_keys)) == len(call_keys)  # deduplicated within a call
        for p in problems:
          assert split_of_key(p.meta["key"], task.test_fraction,
                              task.validation_fraction) == split == p.meta["split"]
        keys[split].update(call_keys)
        prompts[split].update(p.prompt for p in problems)
  for a, b in itertools.combinations(SPLITS, 2):
    assert not keys[a] & keys[b], (a, b)
    assert not prompts[a] & prompts[b], (a, b)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_test_split_has_thousands_of_problems(name):
  problems = get_task(name).generate("test", 1500, seed=0, difficulty=1)
  assert len({p.meta["key"] for p in problems}) == 1500


def test_split_fractions_are_about_ten_percent_each():
  keys = [f"k{i}" for i in range(20000)]
  splits = collections.Counter(split_of_key(k) for k in keys)
  assert 0.09 < splits["test"] / len(keys) < 0.11
  assert 0.09 < splits["validation"] / len(keys) < 0.11
  assert splits["train"] + splits["test"] + splits["validation"] == len(keys)


def test_validation_takes_its_share_from_train_only():
  """The test keys are the same as under a two-way split with the same test fraction: adding
  the validation split moved no test problem."""
  keys = [f"k{i}" for i in range(5000)]
  three_way = [split_of_key(k) for k in keys]
  two_way = [split_of_key(k, validation_fraction=0.0) for k in keys]
  assert [s == "test" for s in three_way] == [s == "test" for s in two_way]
  assert set(two_way) == {"train", "test"}
  assert all(t == "train" for s, t in zip(three_way, two_way) if s == "validation")


def test_split_fraction_errors():
  with pytest.raises(ValueError, match="sum to <= 1"):
    split_of_key("k", test_fraction=0.6, validation_fraction=0.5)
  with pytest.raises(ValueError, match="split must be one of"):
    get_task("arithmetic").generate("valid", 3, seed=0)


# --------------------------------------------------------------------- solutions and checkers


@pytest.mark.parametrize("name", TASK_NAMES)
def test_reference_solutions_pass_their_checker(name):
  task = get_task(name)
  for difficulty in range(1, task.max_difficulty + 1):
    for split in SPLITS:
      for p in task.generate(split, 40, seed=7, difficulty=difficulty):
        assert p.task == name
        assert p.solution.startswith("<think>") and p.solution.endswith("</answer>")
        assert format_reward(p.solution) == 1.0, p.solution
        assert task.check(p, p.solution), (p.prompt, p.solution)
        assert task.check(p, p.solution.replace("<think>", "", 1)), "template opened <think>"


@pytest.mark.parametrize("name", TASK_NAMES)
def test_wrong_answers_fail(name):
  task = get_task(name)
  for p in task.generate("train", 30, seed=1, difficulty=1):
    wrong = "1+2+3" if name == "countdown" else str(int(float(p.answer.split("/")[0])) + 1)
    assert not task.check(p, _wrap(wrong))
    assert not task.check(p, _wrap(""))
    assert not task.check(p, f"<think>{p.answer}</think><answer></answer>")
    assert not task.check(p, f"<think><answer>{p.answer}</answer></think>")
    assert not task.check(p, _wrap(p.answer) + _wrap(p.answer))


@pytest.mark.parametrize("name", TASK_NAMES)
def test_difficulty_one_is_small_model_friendly(name):
  for p in get_task(name).generate("train", 200, seed=0, difficulty=1):
    assert len(p.prompt) < 120, p.prompt
    assert len(p.solution) < 150, p.solution


def test_examples_of_each_task():
  arithmetic = get_task("arithmetic").generate("train", 50, seed=0)
  assert any(p.prompt.startswith("Compute ") for p in arithmetic)
  assert any("How many" in p.prompt for p in arithmetic)
  countdown = get_task("countdown").generate("train", 20, seed=0)
  for p in countdown:
    assert len(p.meta["numbers"]) == 3 and all(1 <= n <= 20 for n in p.meta["numbers"])
    assert 1 <= p.meta["target"] <= 100
  harder = get_task("arithmetic").generate("train", 50, seed=0, difficulty=3)
  assert max(p.solution.count("=") for p in harder) > max(p.solution.count("=") for p in arithmetic)


def test_problem_is_frozen_and_hashable():
  p = get_task("arithmetic").generate("train", 1, seed=0)[0]
  with pytest.raises(dataclasses.FrozenInstanceError):
    p.answer = "0"
  assert hash(p) == hash(dataclasses.replace(p))


# ----------------------------------------------------------------------------------- countdown


@pytest.mark.parametrize("answer,ok", [
    ("20+7-3", True),
    ("(7-3)+20", True),
    ("20 - 3 + 7 = 24", True),  # a trailing "= target" is accepted
    ("24 = 20+7-3", True),
    ("20+7-3 = 25", False),
    ("20\u00d71+7-3", False),  # 1 is not given
    ("20+7", False),  # 3 unused
    ("20+7-3+3-3", False),  # 3 reused
    ("27-3", False),  # 27 is not given (digits glued together)
    ("20+7-3.0", False),  # floats are not the given integers
    ("(20+7)**1-3", False),  # power is not allowed
    ("20+7//1-3", False),
    ("abs(20)+7-3", False),
    ("__import__('os').system('touch /tmp/pwned')", False),
    ("", False),
])
def test_countdown_checker(answer, ok):
  assert check_expression(answer, [3, 7, 20], 24) is ok


def test_countdown_exact_fractions_and_zero_division():
  assert check_expression("6/(1-3/4)", [1, 3, 4, 6], 24)  # needs an exact 1/4 intermediate
  assert not check_expression("6/(4-4)", [4, 4, 6], 24)


def test_countdown_task_check_uses_meta():
  p = get_task("countdown").generate("train", 1, seed=0)[0]
  numbers = p.meta["numbers"]
  assert get_task("countdown").check(p, _wrap(p.answer))
  assert not get_task("countdown").check(p, _wrap("+".join(map(str, numbers + numbers[:1]))))


# ------------------------------------------------------------------------------------- mixture


def test_mixture_interleaves_tasks():
  names = ["arithmetic", "countdown", "linear_equation"]
  problems = mixture(names, "train", 10, seed=0)
  assert len(problems) == 10
  assert [p.task for p in problems[:6]] == names * 2
  assert problems == mixture(names, "train", 10, seed=0)
  hard = mixture(names, "test", 6, seed=0, difficulty={"countdown": 2})
  assert all(p.meta["split"] == "test" for p in hard)
  assert len(hard[1].meta["numbers"]) == 4
  with pytest.raises(ValueError):
    mixture(["nope"], "train", 2, seed=0)


# -------------------------------------------------------------------------------------- GSM8K

_GSM8K_RECORD = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                "clips in May. How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}


def test_parse_gsm8k_answer():
  rationale, final = parse_gsm8k_answer(_GSM8K_RECORD["answer"])
  assert final == "72"
  assert "<<" not in rationale and "48/2 = 24 clips" in rationale
  assert parse_gsm8k_answer("So 1,200 in total.\n#### 1,200")[1] == "1200"
  with pytest.raises(DatasetFormatError):
    parse_gsm8k_answer("no final answer")


def test_load_gsm8k_with_tfds_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  records = [_GSM8K_RECORD, {"question": b"What is 2+2?", "answer": b"2+2=<<2+2=4>>4\n#### 4"}]
  with tfds.testing.mock_data(as_data_source_fn=lambda *args, **kwargs: records):
    problems = load_gsm8k("test")
  assert [p.answer for p in problems] == ["72", "4"]
  assert problems[0].task == "gsm8k"
  assert problems[0].prompt.startswith("Natalia sold clips")
  assert problems[1].solution == "<think>2+2=4</think><answer>4</answer>"
  assert format_reward(problems[0].solution) == 1.0
  with tfds.testing.mock_data(num_examples=3):  # tfds' own random records
    assert len(load_gsm8k("train")) == 3
  with pytest.raises(ValueError):
    load_gsm8k("validation")


# -------------------------------------------------------------------------------------- JSONL


def _write(tmp_path, lines, name="data.jsonl"):
  path = tmp_path / name
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def test_load_jsonl_problems(tmp_path):
  path = _write(tmp_path, [
      json.dumps({"prompt": "1+1?", "answer": "2"}),
      "",
      json.dumps({"prompt": "2+2?", "answer": 4, "source": "mine",
                  "solution": "<think>2+2=4</think><answer>4</answer>"}),
      json.dumps({"prompt": "Write f", "answer": "", "task": "code", "tests": "assert f()"}),
  ])
  problems = load_jsonl_problems(path)
  assert problems[0] == Problem("1+1?", "2", "", "math", {})
  assert problems[1].answer == "4" and problems[1].meta == {"source": "mine"}
  assert problems[2].task == "code" and problems[2].meta["tests"] == "assert f()"


def test_load_jsonl_preferences(tmp_path):
  path = _write(tmp_path, [json.dumps({"prompt": "p", "chosen": "good", "rejected": "bad"})])
  assert load_jsonl_preferences(path) == [PreferencePair("p", "good", "bad")]


@pytest.mark.parametrize("lines,message", [
    (['{"prompt": "a", "answer": "1"}', '{"prompt": "b", "answer": '],
     r"data\.jsonl:2: invalid JSON"),
    (['{"prompt": "a"}'], r"data\.jsonl:1: missing key 'answer'"),
    (['["prompt", "answer"]'], r"data\.jsonl:1: expected a JSON object"),
    (['{"prompt": "a", "answer": null}'], r"data\.jsonl:1: 'answer' must be a string"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, lines, message):
  path = _write(tmp_path, lines)
  with pytest.raises(DatasetFormatError, match=message):
    load_jsonl_problems(path)


def test_jsonl_preference_errors_and_missing_file(tmp_path):
  path = _write(tmp_path, ['{"prompt": "p", "chosen": "c"}'], name="prefs.jsonl")
  with pytest.raises(DatasetFormatError, match=r"prefs\.jsonl:1: missing key 'rejected'"):
    load_jsonl_preferences(path)
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    load_jsonl_problems(str(tmp_path / "missing.jsonl"))


def test_gsm8k_like_records_are_gsm8k_format_and_load_from_jsonl(tmp_path):
  from reasoner.data.fixtures import gsm8k_like_records, write_gsm8k_jsonl
  from reasoner.rewards import is_correct
  records = gsm8k_like_records(12, seed=3)
  assert records == gsm8k_like_records(12, seed=3) and len({r["question"] for r in records}) == 12
  assert all("<<" in r["answer"] and r["answer"].splitlines()[-1].startswith("#### ") for r in records)
  problems = load_jsonl_problems(write_gsm8k_jsonl(str(tmp_path / "g.jsonl"), n=12, seed=3))
  assert [p.answer for p in problems] == [parse_gsm8k_answer(r["answer"])[1] for r in records]
  assert all(p.task == "gsm8k" and is_correct(p, p.solution) for p in problems)
  assert not is_correct(problems[0], "<think>x</think><answer>-1</answer>")


def test_jsonl_source_has_three_disjoint_splits(tmp_path):
  """A JSONL problem source: the last 10% of lines is test, the 10% before it validation."""
  from reasoner.stages.context import _real_problems  # pylint: disable=import-outside-toplevel
  path = _write(tmp_path, [json.dumps({"prompt": f"q{i}", "answer": str(i)}) for i in range(40)],
                name="three.jsonl")
  got = {split: [p.prompt for p in _real_problems("jsonl", str(path), split)] for split in SPLITS}
  assert got["test"] == ["q36", "q37", "q38", "q39"]
  assert got["validation"] == ["q32", "q33", "q34", "q35"]
  assert got["train"] == [f"q{i}" for i in range(32)]
  small = _write(tmp_path, [json.dumps({"prompt": "q", "answer": "1"})] * 2, name="two.jsonl")
  with pytest.raises(ValueError, match="two.jsonl: 2 problem"):
    _real_problems("jsonl", str(small), "train")
