"""Format, language, length and cost rewards, reward-hack flags and the composite reward."""

import ml_collections
import numpy as np
import pytest

from reasoner.data import Problem, get_task
from reasoner.rewards import (COMPONENTS, RewardConfig, compute_rewards, cost_penalty,
                              format_reward, language_consistency_reward, length_penalty,
                              reward_hack_flags, safety_penalty)

GOOD = "<think>23+45=68. 68-7=61.</think><answer>61</answer>"


# -------------------------------------------------------------------------------------- format


@pytest.mark.parametrize("completion,prefix,score", [
    (GOOD, "", 1.0),
    ("  <think>a</think>\n<answer>61</answer>\n  ", "", 1.0),
    ("<think></think><answer>61</answer>", "", 1.0),  # empty thinking is still well-formed
    ("23+45=68.</think><answer>61</answer>", "<think>", 1.0),  # template opened <think>
    ("<think>a</think><answer>61</answer>", "<think>", 0.0),  # then <think> appears twice
    ("23+45=68.</think><answer>61</answer>", "", 0.0),
    ("<think>a</think><answer>61</answer> trailing", "", 0.0),  # text after </answer>
    ("hello <think>a</think><answer>61</answer>", "", 0.0),  # text before <think>
    ("<think>a</think>so<answer>61</answer>", "", 0.0),  # text between the blocks
    ("<answer>61</answer><think>a</think>", "", 0.0),  # wrong order
    ("<think>a</think><answer>  </answer>", "", 0.0),  # empty answer
    ("<think>a</think><answer>1</answer><answer>2</answer>", "", 0.0),
    ("<think>a<think>b</think><answer>61</answer>", "", 0.0),
    ("<think>a</think>", "", 0.0),
    ("", "", 0.0),
])
def test_format_reward(completion, prefix, score):
  assert format_reward(completion, prefix=prefix) == score


# ------------------------------------------------------------------------------------ language


def _lang(prompt, thinking, answer="10"):
  return language_consistency_reward(prompt, f"<think>{thinking}</think><answer>{answer}</answer>")


def test_language_consistency():
  english = "How many apples are left?"
  assert _lang(english, "She has ten left.") == 1.0
  assert _lang(english, "Осталось десять.") == 0.0
  assert _lang(english, "abc где") == pytest.approx(3 / 6)
  chinese = "小明有几个苹果？"
  assert _lang(chinese, "他有十个苹果。") == 1.0
  assert _lang(chinese, "He has ten.") == 0.0
  # digits-only thinking (our procedural tasks) is consistent with any prompt
  assert _lang("Compute 23+45.", "23+45=68.", "68") == 1.0
  # the answer block does not count, only the thinking
  assert _lang(english, "ten", "десять") == 1.0
  # completion starting inside the thinking (template opened <think>)
  assert language_consistency_reward(english, "Осталось</think><answer>1</answer>") == 0.0


# ----------------------------------------------------------------------------- length and cost


def test_length_penalty_dapo_shape():
  assert length_penalty(100, max_tokens=1000, buffer=200) == 0.0
  assert length_penalty(800, max_tokens=1000, buffer=200) == 0.0
  assert length_penalty(900, max_tokens=1000, buffer=200) == pytest.approx(-0.5)
  assert length_penalty(1000, max_tokens=1000, buffer=200) == pytest.approx(-1.0)
  assert length_penalty(5000, max_tokens=1000, buffer=200) == -1.0
  assert isinstance(length_penalty(900, 1000, 200), float)
  values = length_penalty(np.array([0, 850, 950, 1200]), 1000, 200)
  np.testing.assert_allclose(values, [0.0, -0.25, -0.75, -1.0])
  assert length_penalty(1000, 1000, 0) == 0.0 and length_penalty(1001, 1000, 0) == -1.0


def test_cost_penalty():
  assert cost_penalty(100, 0.001) == pytest.approx(-0.1)
  np.testing.assert_allclose(cost_penalty(np.array([0, 10]), 0.5), [0.0, -5.0])


# ------------------------------------------------------------------------------------- safety


@pytest.mark.parametrize("completion,code,flags", [
    (GOOD, False, []),
    ("<think>a</think><answer>1</answer><answer>2</answer>", False, ["multiple_answer_blocks"]),
    ("<think><answer>1</answer></think><answer>1</answer>", False,
     ["multiple_answer_blocks", "answer_in_thinking"]),
    ("<think>a</think><answer>1 or 2</answer>", False, ["hedged_answer"]),
    ("<think>a</think><answer>\\boxed{1}, \\boxed{2}</answer>", False, ["hedged_answer"]),
    ("<think>a</think><answer>def f(): return 1</answer>", True, []),
    ("<think>a</think><answer>import sys\nsys.exit(0)</answer>", True, ["early_exit"]),
    ("<think>a</think><answer>class A:\n def __eq__(s, o): return True</answer>", True,
     ["equality_override"]),
    ("<think>a</think><answer>class A:\n __eq__ = lambda s, o: True</answer>", True,
     ["equality_override"]),
    ("<think>a</think><answer>import builtins</answer>", True, ["builtins_tampering"]),
])
def test_reward_hack_flags(completion, code, flags):
  assert reward_hack_flags(completion, code=code) == flags
  assert safety_penalty(completion, code=code) == (1.0 if flags else 0.0)


# ---------------------------------------------------------------------------------- composite


def _arithmetic_problem():
  return Problem("Compute 23+45-7.", "61", GOOD, "arithmetic", {"key": "k"})


def test_composite_formula_and_components():
  problem = _arithmetic_problem()
  completions = [
      GOOD,  # correct, well formatted
      "<think>23+45=68.</think><answer>60</answer>",  # wrong
      "<think>x</think><answer>61</answer> and more",  # correct, bad format
      "<think>x</think><answer>61</answer><answer>60</answer>",  # hack: two answers
  ]
  config = RewardConfig(w_out=1.0, w_proc=0.5, l_cost=2.0, l_safe=3.0, w_format=1.0, w_lang=0.0,
                        cost_per_token=0.001, overlong_max_tokens=100, overlong_buffer=20)
  num_tokens = np.array([10, 90, 200, 10])
  rewards, parts = compute_rewards([problem] * 4, completions, num_tokens, config)
  assert set(parts) == set(COMPONENTS)
  assert rewards.shape == (4,) and rewards.dtype == np.float32
  np.testing.assert_allclose(parts["r_out"], [1, 0, 1, 0])
  np.testing.assert_allclose(parts["format"], [1, 1, 0, 0])
  np.testing.assert_allclose(parts["overlong"], [0, 0.5, 1, 0])
  np.testing.assert_allclose(parts["token_cost"], [0.01, 0.09, 0.2, 0.01], rtol=1e-6)
  np.testing.assert_allclose(parts["safety"], [0, 0, 0, 1])
  expected = (1.0 * parts["r_out"] + 0.5 * parts["r_proc"]
              - 2.0 * (parts["token_cost"] + parts["overlong"]) - 3.0 * parts["safety"])
  np.testing.assert_allclose(rewards, expected, rtol=1e-6)
  np.testing.assert_allclose(parts["reward"], rewards)
  assert rewards[0] == max(rewards) and rewards[3] == min(rewards)


def test_composite_accepts_config_dicts():
  problem = _arithmetic_problem()
  for config in (None, {"w_proc": 0.0}, ml_collections.ConfigDict({"w_proc": 0.0, "w_lang": 1.0})):
    rewards, _ = compute_rewards([problem], [GOOD], [5], config)
    assert rewards[0] >= 1.0
  with pytest.raises(ValueError, match="w_typo"):
    compute_rewards([problem], [GOOD], [5], {"w_typo": 1.0})
  with pytest.raises(ValueError):
    compute_rewards([problem], [GOOD, GOOD], [5], None)


def test_composite_language_weight():
  problem = Problem("How many apples?", "10", "", "math")
  config = RewardConfig(w_proc=1.0, w_format=0.0, w_lang=1.0)
  completions = ["<think>ten</think><answer>10</answer>",
                 "<think>десять</think><answer>10</answer>"]
  rewards, parts = compute_rewards([problem] * 2, completions, [3, 3], config)
  np.testing.assert_allclose(parts["language"], [1, 0])
  np.testing.assert_allclose(rewards, [2, 1])


def test_composite_checker_selection():
  countdown = get_task("countdown").generate("train", 1, seed=0)[0]
  math = Problem("What is half of 1?", "\\frac{1}{2}", "", "math")
  completions = [countdown.solution, "<think>half</think><answer>0.5</answer>"]
  _, parts = compute_rewards([countdown, math], completions, [5, 5], RewardConfig())
  np.testing.assert_allclose(parts["r_out"], [1, 1])  # task check and math verifier
  _, parts = compute_rewards([countdown, math], completions, [5, 5], RewardConfig(),
                             task_checker=lambda problem, completion: False)
  np.testing.assert_allclose(parts["r_out"], [0, 0])


def test_composite_code_problems():
  problem = Problem("Write double(x).", "", "", "code", {"tests": "assert double(3) == 6"})
  completions = [
      "<think>easy</think><answer>```python\ndef double(x):\n    return 2 * x\n```</answer>",
      "<think>easy</think><answer>```python\ndef double(x):\n    return x\n```</answer>",
      "<think>hmm</think><answer>import socket\nsocket.create_connection(('1.1.1.1', 80))</answer>",
      "<think>hmm</think><answer></answer>",
  ]
  _, parts = compute_rewards([problem] * 4, completions, [9] * 4, RewardConfig(code_timeout_s=5.0))
  np.testing.assert_allclose(parts["r_out"], [1, 0, 0, 0])
  np.testing.assert_allclose(parts["safety"], [0, 0, 1, 0])
