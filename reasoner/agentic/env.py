"""The environment interface of agentic RL, and a tool-use environment over `Problem`s.

An `Environment` is text in, text out:

  observation = env.reset(problem)                          # the prompt
  observation, reward, done, info = env.step(action_text)   # one model turn

`ToolEnv` answers a model turn that ends in a tool call (`<tool>NAME: INPUT</tool>`) with
`<result>OUTPUT</result>` and the episode goes on; a turn without a tool tag is the final
answer and ends the episode. Rewards:

  tool turn:   -tool_cost, and also -error_cost when the call was malformed or failed
  final turn:  the composite reward (`reasoner.rewards.composite.compute_rewards`: outcome +
               process - cost - safety) of the whole transcript after the prompt, tool results
               included; the token cost counts the model's text only (`count_tokens`)

so an episode's return is the composite reward minus the tool costs. After `max_turns` model
turns the episode ends even if the last turn called a tool (that call is not run; info
'truncated' is True). With `tools_enabled=False` every call is answered
`<result>error: tools are disabled</result>`, which is how "the same model without tools" is
evaluated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Protocol, runtime_checkable

from reasoner.agentic.tools import (MAX_OUTPUT_CHARS, Tool, ToolCall, default_tools, format_result,
                                    parse_tool_call, run_tool_call)
from reasoner.data.problem import Problem
from reasoner.losses.common import config_from
from reasoner.rewards.composite import TaskChecker, compute_rewards
from reasoner.tokenizer import format_prompt

TOOLS_DISABLED = "tools are disabled"


@runtime_checkable
class Environment(Protocol):
  """reset(problem) -> observation; step(action_text) -> (observation, reward, done, info)."""

  def reset(self, problem: Problem) -> str: ...

  def step(self, action_text: str) -> tuple[str, float, bool, dict]: ...


@dataclasses.dataclass(frozen=True)
class ToolEnvConfig:
  max_turns: int = 4  # model turns per episode
  template: str = "plain"  # prompt template (reasoner.tokenizer.format_prompt)
  tools_enabled: bool = True
  tool_cost: float = 0.0  # subtracted for every tool call
  error_cost: float = 0.0  # subtracted in addition for a malformed / unknown / failed call
  max_output_chars: int = MAX_OUTPUT_CHARS
  python_timeout_s: float = 2.0
  python_memory_mb: int = 256
  python_allow_weak_sandbox: bool = False  # run the python tool without bwrap (warns)

  def __post_init__(self):
    if self.max_turns < 1:
      raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")

  @classmethod
  def from_dict(cls, d) -> "ToolEnvConfig":
    return config_from(cls, d)


class ToolEnv:
  """One episode at a time over a `Problem`; see the module docstring."""

  def __init__(self, config: Any = None, *, tools: Optional[Mapping[str, Tool]] = None,
               reward_config: Any = None, task_checker: Optional[TaskChecker] = None,
               count_tokens: Optional[Callable[[str], int]] = None):
    self.config = ToolEnvConfig.from_dict(config)
    self.tools = dict(tools) if tools is not None else default_tools(
        self.config.python_timeout_s, self.config.python_memory_mb,
        self.config.python_allow_weak_sandbox)
    self.reward_config = reward_config
    self.task_checker = task_checker
    self.count_tokens = count_tokens
    self.problem: Optional[Problem] = None
    self.done = True

  def reset(self, problem: Problem) -> str:
    self.problem = problem
    self.transcript = ""  # everything after the prompt: model turns and observations
    self.model_text = ""
    self.turn = self.n_calls = self.n_errors = 0
    self.done = False
    return format_prompt(problem.prompt, self.config.template)

  def _run(self, call: ToolCall) -> tuple[str, Optional[str]]:
    if not self.config.tools_enabled:
      return f"error: {TOOLS_DISABLED}", TOOLS_DISABLED
    return run_tool_call(call, self.tools)

  def final_reward(self) -> tuple[float, dict]:
    """The composite reward of the transcript so far and its components."""
    n_tokens = self.count_tokens(self.model_text) if self.count_tokens else 0
    reward, parts = compute_rewards([self.problem], [self.transcript], [n_tokens],
                                    self.reward_config, task_checker=self.task_checker)
    return float(reward[0]), {k: float(v[0]) for k, v in parts.items()}

  def step(self, action_text: str) -> tuple[str, float, bool, dict]:
    if self.done:
      raise RuntimeError("the episode is over (or never started): call reset(problem) first")
    action_text = action_text or ""
    self.turn += 1
    self.transcript += action_text
    self.model_text += action_text
    call = parse_tool_call(action_text)
    info = {"turn": self.turn, "tool": None, "error": None, "truncated": False}
    if call is not None and self.turn < self.config.max_turns:
      output, error = self._run(call)
      self.n_calls += 1
      self.n_errors += error is not None
      observation = format_result(output, self.config.max_output_chars)
      self.transcript += observation
      info.update(tool=call.name or None, error=error, n_calls=self.n_calls,
                  n_errors=self.n_errors)
      reward = -self.config.tool_cost - (self.config.error_cost if error is not None else 0.0)
      return observation, reward, False, info
    self.done = True
    reward, parts = self.final_reward()
    info.update(truncated=call is not None, n_calls=self.n_calls, n_errors=self.n_errors,
                components=parts, correct=parts["r_out"] > 0, transcript=self.transcript)
    return "", reward, True, info
