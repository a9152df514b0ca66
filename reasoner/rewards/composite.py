"""Composite reward for RL: outcome + process - cost - safety, with every component logged.

    reward = w_out * r_out + w_proc * r_proc - l_cost * C - l_safe * S

    r_out  = accuracy in {0, 1}: `task_checker(problem, completion)` if given; else the unit
             tests when problem.meta has "tests" (code problems: the programs run in the OS
             sandbox in parallel, the tests are judged here; see `sandbox`); else the
             registered task's `check` when problem.task names one; else the math verifier
             against problem.answer.
    r_proc = w_format * format_reward(completion, prefix=format_prefix)
             + w_lang * language_consistency_reward(prompt, completion)
    C      = cost_per_token * num_tokens
             + w_overlong * overlong, overlong = -length_penalty(num_tokens,
               overlong_max_tokens, overlong_buffer) in [0, 1] (0 if overlong_max_tokens <= 0)
    S      = 1 if any reward-hack flag is raised (several answer blocks, an answer inside the
             thinking, a hedged answer, for code: early exit / __eq__ override / builtins
             tampering / an operation blocked by the sandbox), else 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from reasoner.data.problem import Problem
from reasoner.data.tasks import TASKS
from reasoner.rewards.format import format_reward, language_consistency_reward, length_penalty
from reasoner.rewards.safety import reward_hack_flags
from reasoner.rewards.sandbox import SandboxResult, extract_code, require_checks, run_many
from reasoner.verify.answers import math_accuracy

TaskChecker = Callable[[Problem, str], Union[bool, float]]
COMPONENTS = ("reward", "r_out", "r_proc", "cost", "safety", "format", "language", "overlong",
              "token_cost")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """Weights of the composite reward (see the module docstring for the formula)."""

  w_out: float = 1.0
  w_proc: float = 0.1
  l_cost: float = 1.0
  l_safe: float = 1.0
  w_format: float = 1.0
  w_lang: float = 0.0
  cost_per_token: float = 0.0
  overlong_max_tokens: int = 0  # <= 0 disables the overlong penalty
  overlong_buffer: int = 0
  w_overlong: float = 1.0
  format_prefix: str = ""  # what the prompt template already opened, e.g. "<think>"
  code_timeout_s: float = 5.0
  code_memory_mb: int = 256
  code_workers: int = 0  # code programs run at once; 0 = the CPUs this process may use
  allow_weak_sandbox: bool = False  # run code without OS isolation when bwrap is unavailable
  math_timeout_s: float = 1.0

  @classmethod
  def from_config(cls, config: Any) -> "RewardConfig":
    """Accepts a RewardConfig, a mapping, an ml_collections.ConfigDict or None (defaults)."""
    if config is None:
      return cls()
    if isinstance(config, cls):
      return config
    if hasattr(config, "to_dict"):
      config = config.to_dict()
    if not isinstance(config, Mapping):
      raise TypeError(f"cannot build a RewardConfig from {type(config).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
      raise ValueError(f"unknown reward config keys {unknown}; valid keys: {sorted(fields)}")
    return cls(**dict(config))


def _outcome_and_flags(problem: Problem, completion: str, config: RewardConfig,
                       task_checker: Optional[TaskChecker],
                       sandbox_result: Optional[SandboxResult] = None) -> tuple[float, list[str]]:
  tests = (problem.meta or {}).get("tests")
  if task_checker is not None:
    return float(task_checker(problem, completion)), reward_hack_flags(completion,
                                                                       code=tests is not None)
  if tests is not None:
    accuracy = 1.0 if sandbox_result is not None and sandbox_result.passed else 0.0
    return accuracy, reward_hack_flags(completion, code=True, sandbox_result=sandbox_result)
  if problem.task in TASKS:
    accuracy = float(TASKS[problem.task].check(problem, completion))
  else:
    accuracy = math_accuracy(completion, problem.answer, timeout_s=config.math_timeout_s)
  return accuracy, reward_hack_flags(completion)


def _run_code(problems, completions, config: RewardConfig) -> dict[int, SandboxResult]:
  """Sandbox results of the code problems (those with meta "tests"), run in parallel."""
  jobs, index = [], []
  for i, (problem, completion) in enumerate(zip(problems, completions)):
    tests = (problem.meta or {}).get("tests")
    if tests is None:
      continue
    require_checks(tests)
    code = extract_code(completion)
    if code.strip():
      jobs.append((code, tests))
      index.append(i)
  results = run_many(jobs, workers=config.code_workers, timeout_s=config.code_timeout_s,
                     memory_mb=config.code_memory_mb,
                     allow_weak_sandbox=config.allow_weak_sandbox)
  return dict(zip(index, results))


def is_correct(problem: Problem, completion: str, config: Any = None) -> bool:
  """Whether `completion` solves `problem`: the one answer check (r_out > 0 above) that the
  rewards, rejection sampling, the DPO pairs, the evaluation and test-time compute all use (a
  code problem's tests run in the sandbox, judged in this process)."""
  config = RewardConfig.from_config(config)
  result = _run_code([problem], [completion], config).get(0)
  return _outcome_and_flags(problem, completion, config, None, result)[0] > 0


def compute_rewards(problems: Sequence[Problem], completions: Sequence[str],
                    num_tokens: Union[Sequence[int], np.ndarray], config: Any = None,
                    task_checker: Optional[TaskChecker] = None
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Rewards [N] (float32) and each component [N] (keys: COMPONENTS) for N completions."""
  config = RewardConfig.from_config(config)
  num_tokens = np.asarray(num_tokens, dtype=np.int64).reshape(-1)
  if not len(problems) == len(completions) == len(num_tokens):
    raise ValueError(f"got {len(problems)} problems, {len(completions)} completions and "
                     f"{len(num_tokens)} token counts")
  n = len(problems)
  r_out, safety, fmt, lang = (np.zeros(n, np.float32) for _ in range(4))
  code_results = {} if task_checker is not None else _run_code(problems, completions, config)
  for i, (problem, completion) in enumerate(zip(problems, completions)):
    r_out[i], flags = _outcome_and_flags(problem, completion, config, task_checker,
                                         code_results.get(i))
    safety[i] = 1.0 if flags else 0.0
    fmt[i] = format_reward(completion, prefix=config.format_prefix)
    lang[i] = language_consistency_reward(problem.prompt, completion)
  if config.overlong_max_tokens > 0:
    overlong = 0.0 - np.asarray(length_penalty(num_tokens, config.overlong_max_tokens,
                                          config.overlong_buffer), np.float32)
  else:
    overlong = np.zeros(n, np.float32)
  token_cost = (config.cost_per_token * num_tokens).astype(np.float32)
  r_proc = config.w_format * fmt + config.w_lang * lang
  cost = token_cost + config.w_overlong * overlong
  reward = (config.w_out * r_out + config.w_proc * r_proc - config.l_cost * cost
            - config.l_safe * safety).astype(np.float32)
  components = {"reward": reward, "r_out": r_out, "r_proc": r_proc.astype(np.float32),
                "cost": cost.astype(np.float32), "safety": safety, "format": fmt,
                "language": lang, "overlong": overlong, "token_cost": token_cost}
  return reward, components
