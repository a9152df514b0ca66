"""Math verifier: answer extraction, normalisation, the equivalence table, reward hacking."""

import json
import time
from pathlib import Path

import pytest

from reasoner.verify.answers import (answers_equal, extract_answer, math_accuracy,
                                     normalize_answer, to_sympy_syntax)

# (prediction, reference, equal?) -- decisions documented in reasoner/verify/answers.py.
EQUIVALENCE_TABLE = [
    # thousands separators, decimals, signs
    ("1,000", "1000", True),
    ("1,000,000", "1000000", True),
    ("1,000", "1", False),
    ("1 000", "1000", True),  # a space-separated group of exactly three digits
    ("1 00", "100", False),  # not a thousands group: two numbers
    ("12.50", "12.5", True),
    ("5.0", "5", True),
    (".5", "0.5", True),
    ("+5", "5", True),
    ("-3", "\u22123", True),  # unicode minus
    ("\u22123", "3", False),
    ("-0.5", "-\\frac{1}{2}", True),
    ("\\frac{-1}{2}", "-0.5", True),
    ("1e3", "1000", True),
    ("2", "2.0001", False),
    ("5", "50", False),
    # fractions and simple LaTeX
    ("0.5", "\\frac{1}{2}", True),
    ("\\dfrac{3}{4}", "0.75", True),
    ("\\tfrac{3}{4}", "3/4", True),
    ("\\frac12", "0.5", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("1/3", "0.333", False),  # exact comparison, no float tolerance
    ("\u00bd", "0.5", True),
    ("\\sqrt{4}", "2", True),
    ("\\sqrt{2}", "1.414", False),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\frac{\\pi}{2}", "\\pi/2", True),
    ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2", True),
    # percentages: "x%" reads as x or x/100
    ("50%", "0.5", True),
    ("50\\%", "50", True),
    ("50%", "5", False),
    # units, currency, wrappers
    ("$12.00", "12", True),
    ("\\$12", "12", True),
    ("3 apples", "3", True),
    ("12 dollars", "12", True),
    ("5cm", "5", True),
    ("90^\\circ", "90", True),
    ("\\text{5 apples}", "5", True),
    ("\\boxed{7}", "7", True),
    ("The answer is 42.", "42", True),
    ("x=5", "5", True),
    ("x = 5", "x=5", True),
    # symbolic
    ("(x+1)^2", "x^2+2x+1", True),
    ("(x-1)(x+1)", "x^2-1", True),
    ("x+1", "x-1", False),
    ("5x", "5", False),
    ("x\u00b2", "x^2", True),
    # tuples: element-wise and ordered
    ("(1, 2)", "(1,2)", True),
    ("(2,1)", "(1,2)", False),
    ("[1,2]", "(1,2)", False),
    ("1,2", "(1,2)", True),
    # hedging and copying the question are not answers
    ("5 or 6", "5", False),
    ("5, 6", "5", False),
    ("5 or six", "5", False),
    ("5; 6", "5", False),
    ("23+45-7", "61", False),
    ("2^{10}", "1024", False),
    ("", "5", False),
]


@pytest.mark.parametrize("pred,ref,expected", EQUIVALENCE_TABLE)
def test_equivalence_table(pred, ref, expected):
  assert answers_equal(pred, ref) is expected


def test_table_is_large_and_balanced():
  assert len(EQUIVALENCE_TABLE) >= 40
  assert sum(e for _, _, e in EQUIVALENCE_TABLE) >= 15
  assert sum(not e for _, _, e in EQUIVALENCE_TABLE) >= 15


def test_none_never_equal():
  assert not answers_equal(None, "5")
  assert not answers_equal("5", None)


@pytest.mark.parametrize("completion,expected", [
    ("<think>23+45=68.</think><answer>68</answer>", "68"),
    ("reasoning</think><answer>68</answer>", "68"),  # template opened <think>
    ("<answer>68</answer>", "68"),  # no thinking at all
    ("<think>a</think><answer>so \\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),
    ("<think>a</think><answer>\\boxed{3} or \\boxed{3}</answer>", "3"),
    ("<think>a</think> the result is \\boxed{7}.", "7"),
    ("first \\boxed{7} then \\boxed{8}", "8"),  # no tags: the last box
    ("<think>a</think><answer> 5 </answer>\n", "5"),
    ("<think>a</think><answer>\\boxed{\\{1,2\\}}</answer>", "\\{1,2\\}"),
    ("<think>a</think><answer>\\boxed{\\boxed{5}}</answer>", "5"),  # a nested box is one answer
    ("<think>a</think> so \\boxed{\\boxed{\\frac{1}{2}}}", "\\frac{1}{2}"),
    ("<think>a</think><answer>\\boxed{\\boxed{1}+2}</answer>", "\\boxed{1}+2"),
])
def test_extract_answer(completion, expected):
  assert extract_answer(completion) == expected


@pytest.mark.parametrize("completion", [
    "",
    "no answer here",
    "<think>a</think><answer></answer>",  # empty
    "<think>a</think><answer>   </answer>",
    "<think>a</think><answer>5</answer><answer>6</answer>",  # several answer blocks
    "<think>a</think><answer>5</answer></answer>",
    "<think>a</think></answer>5<answer>",
    "<think>the answer is 5 <answer>5</answer></think>",  # answer hidden in the thinking
    "<think>maybe \\boxed{5}</think>",  # boxed only in the thinking
    "<think>thinking \\boxed{5}",  # unclosed thinking
    "<think>a</think><answer>\\boxed{3} \\boxed{4}</answer>",  # two different boxes
])
def test_extract_answer_rejects(completion):
  assert extract_answer(completion) is None


@pytest.mark.parametrize("completion,score", [
    ("<think>23+45=68. 68-7=61.</think><answer>61</answer>", 1.0),
    ("<think>a</think><answer>61 apples</answer>", 1.0),
    ("<think>a</think><answer>60</answer>", 0.0),
    ("<think>a</think><answer>61</answer><answer>60</answer>", 0.0),  # two answers
    ("<think>a</think><answer>61 or 60</answer>", 0.0),  # two answers in one block
    ("<think>a</think><answer>60, 61</answer>", 0.0),
    ("<think>It is 61.</think><answer></answer>", 0.0),  # answer only in the thinking
    ("<think>It is <answer>61</answer></think>", 0.0),
    ("<think>a</think><answer></answer>", 0.0),  # empty
    ("<think>a</think><answer>23+45-7</answer>", 0.0),  # the question, not the answer
])
def test_math_accuracy_reward_hacking(completion, score):
  assert math_accuracy(completion, "61") == score


def test_normalize_answer_canonical_forms():
  assert normalize_answer("$1,000.00") == "1000"
  assert normalize_answer("\\frac{2}{4}") == "1/2"
  assert normalize_answer("0.5") == "1/2"
  assert normalize_answer("\u22123 apples") == "-3"
  assert normalize_answer("50\\%") == "50%"
  assert normalize_answer("x = \\text{blue}") == "blue"
  assert normalize_answer("1\\,000") == normalize_answer("1{,}000") == "1000"
  assert normalize_answer("-2\\frac{3}{4}") == normalize_answer("-2 3/4") == "-11/4"
  assert normalize_answer("one hundred twenty-three apples") == "123"
  assert normalize_answer("three quarters") == "3/4"
  assert normalize_answer(None) == ""


def test_sympy_syntax_rejects_code():
  for text in ("__import__('os')", "x.__class__", "lambda: 1", "open(1)", "5 or 6", "a[0]",
               "2^{99999}"):
    assert to_sympy_syntax(text) is None, text
  assert to_sympy_syntax("\\frac{1}{2}x") == "((1)/(2))x"


def test_sympy_timeout_respected():
  assert answers_equal("2x", "x+x")  # starts the worker outside the timed region
  # simplify() needs about a minute for this identity; the limit cuts it short.
  start = time.monotonic()
  assert not answers_equal("\\sin(x)^{40}\\cos(x)^{40}", "(\\sin(2x)/2)^{40}", timeout_s=0.5)
  assert time.monotonic() - start < 30  # far below the unbounded time, generous for CI
  assert answers_equal("(x+1)^2", "x^2+2x+1")  # the worker is restarted afterwards


# ------------------------------------------------------------------ hand-labelled answer pairs

LABELLED_PAIRS = Path(__file__).parent / "data" / "math_answer_pairs.jsonl"


def _labelled_pairs() -> list[dict]:
  """(gold, pred, equal) triples labelled by hand: would a careful grader count pred as gold?"""
  with open(LABELLED_PAIRS, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _score(rows, equal) -> tuple[float, list[dict]]:
  """(accuracy, false positives) of `equal(gold, pred)` against the labels."""
  correct, false_positives = 0, []
  for row in rows:
    got = bool(equal(row["gold"], row["pred"]))
    correct += got == row["equal"]
    if got and not row["equal"]:
      false_positives.append(row)
  return correct / len(rows), false_positives


def _project_equal(gold: str, pred: str) -> bool:
  return answers_equal(pred, gold, timeout_s=5.0)


def test_labelled_pairs_cover_the_categories():
  rows = _labelled_pairs()
  assert len(rows) >= 300
  by_category = {}
  for row in rows:
    by_category.setdefault(row["category"], []).append(row["equal"])
  for category in ("integer", "negative", "decimal", "fraction", "expression", "boxed",
                   "thousands", "mixed", "words", "percent", "units", "assignment", "interval",
                   "union", "set", "tuple", "list"):
    labels = by_category[category]
    assert any(labels) and not all(labels), category  # positives and hard negatives


def test_labelled_pairs_accuracy_and_no_false_positives():
  accuracy, false_positives = _score(_labelled_pairs(), _project_equal)
  assert not false_positives, false_positives
  assert accuracy >= 0.97


def test_at_least_as_accurate_as_math_verify():
  """Hugging Face math-verify on the same pairs (optional dependency: skipped when absent).

  Both answers are given to it as inline math (`$...$`), the wrapping it scores best with.
  """
  math_verify = pytest.importorskip("math_verify")

  def math_verify_equal(gold: str, pred: str) -> bool:
    try:
      return bool(math_verify.verify(math_verify.parse(f"${gold}$"),
                                     math_verify.parse(f"${pred}$")))
    except Exception:  # pylint: disable=broad-except
      return False

  rows = _labelled_pairs()
  ours, _ = _score(rows, _project_equal)
  theirs, _ = _score(rows, math_verify_equal)
  print(f"labelled pairs: {len(rows)}, project verifier {ours:.3f}, math-verify {theirs:.3f}")
  assert ours >= theirs


@pytest.mark.parametrize("pred", [
    "\\(\\)",  # empty math delimiters
    "m\\langle\\pi\\frac\\rightand\\fracquarters\\inapples1\\langle\\boxed\\rangle",  # backtracking
    "x < " + "\\pi a " * 40,
    "\\text{" * 150 + "5" + "}" * 150,
    "(" * 120 + "1" + ")" * 120,
    "1 " * 150,
])
def test_adversarial_answers_are_safe_and_fast(pred):
  start = time.monotonic()
  for ref in ("5", "(1,2)", "x > 2"):
    answers_equal(pred, ref, timeout_s=0.2)
    answers_equal(ref, pred, timeout_s=0.2)
  normalize_answer(pred)
  assert time.monotonic() - start < 5  # milliseconds when idle; generous for a loaded CI machine
