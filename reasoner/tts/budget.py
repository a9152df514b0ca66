"""Budget forcing (s1): control how long the model thinks, in tokens.

  cap    at most `budget` thinking tokens: `</think>` is forced once the budget is spent;
  force  exactly `budget` thinking tokens: the cap, plus every attempt to close the thinking
         (or to stop) earlier is replaced by the "Wait" tokens, so the model keeps thinking.

The thinking is counted from the first generated token (the model writes `<think>` itself); after
it, `answer_tokens` more tokens are allowed for `<answer>...</answer>`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from reasoner.data.problem import Problem
from reasoner.rewards import is_correct
from reasoner.sampling import SamplingConfig
from reasoner.tts.policy import Policy

BUDGET_MODES = ("cap", "force")
WAIT_TEXT = " Wait,"


def budget_sampling(base: SamplingConfig, budget: int, think_end_id: int, mode: str = "cap",
                    wait_ids: Sequence[int] = (), answer_tokens: int = 16) -> SamplingConfig:
  """`base` with a thinking budget of `budget` tokens enforced as `mode` (see the module doc)."""
  if mode not in BUDGET_MODES:
    raise ValueError(f"unknown budget mode {mode!r}; expected one of {BUDGET_MODES}")
  if budget < 1:
    raise ValueError(f"thinking budget must be >= 1 token, got {budget}")
  if mode == "force" and not wait_ids:
    raise ValueError("budget mode 'force' needs wait_ids (the tokens of e.g. ' Wait,')")
  kw = dict(max_new_tokens=budget + 1 + answer_tokens, max_thinking_tokens=budget,
            think_end_id=think_end_id)
  if mode == "force":
    kw.update(min_thinking_tokens=budget, wait_token_ids=tuple(wait_ids))
  return base.replace(**kw)


def thinking_lengths(completions: Sequence[Sequence[int]], think_end_id: int) -> np.ndarray:
  """[rows] number of tokens before `</think>` (all of them if it never appears)."""
  out = []
  for c in completions:
    c = list(c)
    out.append(c.index(think_end_id) if think_end_id in c else len(c))
  return np.asarray(out, np.int32)


def budget_forcing(policy: Policy, problems: Sequence[Problem], budget: int, sampling: SamplingConfig,
                   rng: jax.Array, *, mode: str = "cap", wait_text: str = WAIT_TEXT,
                   answer_tokens: int = 16) -> dict:
  """Accuracy with a thinking budget (one sample per problem; greedy if `sampling.greedy`).

  Returns {'accuracy', 'budget', 'mode', 'mean_thinking_tokens', 'forced_rate' (rows where a
  token was injected), 'completions'}."""
  wait_ids = policy.tokenizer.encode(wait_text) if mode == "force" else ()
  scfg = budget_sampling(sampling.replace(n=1), budget, policy.think_end_id, mode, wait_ids,
                         answer_tokens)
  rows = policy.generate(policy.prompt_ids(problems), scfg, rng)
  texts = [policy.tokenizer.decode(ids) for ids, _, _ in rows]
  correct = [is_correct(p, t) for p, t in zip(problems, texts)]
  think = thinking_lengths([ids for ids, _, _ in rows], policy.think_end_id)
  return {"accuracy": float(np.mean(correct)), "budget": int(budget), "mode": mode,
          "mean_thinking_tokens": float(think.mean()),
          "forced_rate": float(np.mean([inj.any() for _, inj, _ in rows])),
          "completions": texts}
