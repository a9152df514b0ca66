"""A task where a calculator helps a tiny model: multiplying two numbers of a few digits each
(digit counts configurable; the tiny preset uses 3-digit by 2-digit).

"Compute 347*86." A tiny model cannot multiply in its head, but it can learn to write
`<tool>calc: 347*86</tool>`, read `<result>29842</result>` and copy it into the answer.

Demonstrations (for the SFT that bootstraps the format) are lists of text segments with who
wrote them; environment segments are masked out of the loss exactly as in RL rollouts, and every
segment is tokenized on its own, as the rollout does, so the token boundaries match:

  tool demo:    [model] <think><tool>calc: 347*86</tool>   [env] <result>29842</result>
                [model] </think><answer>29842</answer> EOS
  direct demo:  [model] <think>I multiply in my head.</think><answer>29842</answer> EOS

A mix of the two (`tool_fraction`) gives a policy that calls the calculator only sometimes,
which RL then has room to improve.
"""

from __future__ import annotations

import random
from typing import Sequence

from reasoner.agentic.tools import format_call, format_result
from reasoner.data.problem import Problem
from reasoner.data.tasks.base import Task, make_problem
from reasoner.tokenizer import format_prompt

DIRECT_THINKING = "I multiply in my head."
TextSegment = tuple[str, bool]  # (text, written by the model)


class MultiplicationTask(Task):
  """a*b with a of `digits_a` and b of `digits_b` digits (inclusive ranges)."""

  name = "multiplication"

  def __init__(self, digits_a: tuple[int, int] = (3, 4), digits_b: tuple[int, int] = (2, 3)):
    for lo, hi in (digits_a, digits_b):
      if not 1 <= lo <= hi:
        raise ValueError(f"digit ranges must satisfy 1 <= lo <= hi, got {digits_a}, {digits_b}")
    self.digits_a, self.digits_b = tuple(digits_a), tuple(digits_b)

  @staticmethod
  def _number(rng: random.Random, digits: tuple[int, int]) -> int:
    d = rng.randint(*digits)
    return rng.randint(10 ** (d - 1), 10 ** d - 1)

  def sample(self, rng: random.Random, difficulty: int) -> Problem:
    a, b = self._number(rng, self.digits_a), self._number(rng, self.digits_b)
    answer = str(a * b)
    thinking = format_call("calc", f"{a}*{b}") + format_result(answer)
    return make_problem(self.name, f"Compute {a}*{b}.", answer, thinking,
                        key=f"multiplication:{min(a, b)}*{max(a, b)}", difficulty=difficulty,
                        a=a, b=b)


def tool_demo(problem: Problem, tool: str = "calc") -> list[TextSegment]:
  """The reference tool-using episode after the prompt (calc, or python printing the product)."""
  a, b = problem.meta["a"], problem.meta["b"]
  call = format_call("calc", f"{a}*{b}") if tool == "calc" else format_call("python", f"print({a}*{b})")
  return [("<think>" + call, True), (format_result(problem.answer), False),
          (f"</think><answer>{problem.answer}</answer>", True)]


def direct_demo(problem: Problem) -> list[TextSegment]:
  """A reference episode that answers without a tool (the right answer, which the tiny model
  cannot compute: it learns the format and roughly the size of the number)."""
  return [(f"<think>{DIRECT_THINKING}</think><answer>{problem.answer}</answer>", True)]


def demo_segments(problems: Sequence[Problem], tool_fraction: float, seed: int,
                  python_fraction: float = 0.0) -> list[list[TextSegment]]:
  """One demo per problem: a tool demo with probability tool_fraction (of which a share
  python_fraction uses the python tool), else a direct demo. Deterministic in seed."""
  rng = random.Random(seed)
  out = []
  for p in problems:
    if rng.random() < tool_fraction:
      out.append(tool_demo(p, "python" if rng.random() < python_fraction else "calc"))
    else:
      out.append(direct_demo(p))
  return out


def encode_demo(problem: Problem, segments: Sequence[TextSegment], tokenizer,
                template: str = "plain") -> list[tuple[list[int], bool]]:
  """Token segments [(prompt, False), (ids, by_model), ...] with EOS after the last model
  segment; each text segment is encoded on its own, as in the rollout."""
  out = [(tokenizer.encode(format_prompt(problem.prompt, template)), False)]
  out += [(tokenizer.encode(text), by_model) for text, by_model in segments]
  last = max(i for i, (_, by_model) in enumerate(out) if by_model)
  out[last] = (out[last][0] + [tokenizer.eos_id], True)
  return out


def tokenizer_corpus(problems: Sequence[Problem], template: str = "plain") -> list[str]:
  """Texts to train a tokenizer on: prompts and each demo segment separately (so no piece
  spans a model / environment boundary), plus the environment's error results."""
  texts = []
  for p in problems:
    texts.append(format_prompt(p.prompt, template))
    for tool in ("calc", "python"):
      texts += [t for t, _ in tool_demo(p, tool)]
    texts += [t for t, _ in direct_demo(p)]
  texts += [format_result("error: tools are disabled"),
            format_result("error: unknown tool 'x'; available: calc, python")]
  return texts
