"""Reward-hacking and safety flags (the S term of the composite reward).

A flag does not decide correctness (the verifier already scores these cases 0); it adds an
explicit penalty so that gaming attempts score below honest wrong answers.
"""

from __future__ import annotations

import re
from typing import Optional

from reasoner.rewards.sandbox import SandboxResult
from reasoner.verify.answers import ANSWER_OPEN, THINK_CLOSE, answer_block, boxed_contents

_HEDGE = re.compile(r"\b(?:or|either)\b|;|\\lor|\\vee", re.I)
_CODE_HACKS = {
    "early_exit": re.compile(r"\b(?:sys\.exit|os\._exit|exit|quit)\s*\("),
    "equality_override": re.compile(r"def\s+__(?:eq|ne)__\s*\(|__(?:eq|ne)__\s*="),
    "builtins_tampering": re.compile(r"\b__builtins__\b|\bimport\s+builtins\b|\bbuiltins\."),
}


def reward_hack_flags(completion: str, *, code: bool = False,
                      sandbox_result: Optional[SandboxResult] = None) -> list[str]:
  """Names of the reward-hacking patterns found in a completion (empty if none).

  Always: 'multiple_answer_blocks', 'answer_in_thinking' (an `<answer>` before `</think>`),
  'hedged_answer' (several different `\\boxed{}` or "a or b" in the answer). For code
  (`code=True`): 'early_exit', 'equality_override', 'builtins_tampering', and
  'sandbox_violation' when the sandbox blocked an operation.
  """
  completion = completion or ""
  flags = []
  if completion.count(ANSWER_OPEN) > 1:
    flags.append("multiple_answer_blocks")
  think_end = completion.rfind(THINK_CLOSE)
  if think_end != -1 and ANSWER_OPEN in completion[:think_end]:
    flags.append("answer_in_thinking")
  block = answer_block(completion)
  if block is not None and not code:
    boxes = {b.strip() for b in boxed_contents(block)}
    if len(boxes) > 1 or _HEDGE.search(block):
      flags.append("hedged_answer")
  if code:
    flags += [name for name, pattern in _CODE_HACKS.items() if pattern.search(completion)]
  if sandbox_result is not None and sandbox_result.violation:
    flags.append("sandbox_violation")
  return flags


def safety_penalty(completion: str, *, code: bool = False,
                   sandbox_result: Optional[SandboxResult] = None) -> float:
  """S in {0, 1}: 1.0 if any reward-hack flag is raised."""
  return 1.0 if reward_hack_flags(completion, code=code, sandbox_result=sandbox_result) else 0.0
